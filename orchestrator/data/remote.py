"""A dataset root that is a storage URI (``data.root: s3://bucket/cityscapes``): one local copy per node.

Autoscaled nodes start without the dataset. The first process on a node that opens a file dataset at a URI
copies it into a node-local cache, ``$ADL_DATA_CACHE`` (default ``~/.cache/autodeeplab/datasets``), in a folder
named after the URI; every other process on the node waits for it (a file lock) and later runs reuse it. The copy
is atomic: files land in a temporary folder beside the cache, each is checked against the size the source's
listing gave, the listing is saved as the copy's manifest, and only then is the folder renamed into place. A
cache whose manifest no longer matches the source's listing (files added, removed or changed in size) is copied
again; an interrupted copy leaves only its temporary folder, removed by the next attempt.

The driver's up-front checks must not download a whole dataset: `skeleton` lays out the URI's listing as empty
files (and the small text files, such as class lists and split files, with their contents), so the format's own
listers check the layout and the image/label pairing against the bucket without reading an image.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator.data.common import DataError
from orchestrator.io import storage
from orchestrator.io.paths import is_remote

CACHE_ENV = "ADL_DATA_CACHE"
DEFAULT_CACHE = "~/.cache/autodeeplab/datasets"
MANIFEST = ".adl-dataset-manifest.json"
TEXT_FILES = (".txt", ".csv", ".json")
"""Files a skeleton copies with their contents (class names, split lists): small, and read by the listers."""


def cache_dir(uri: str) -> Path:
    """The node-local folder of ``uri``'s copy: the cache root, then the URI's last name and a hash of it."""
    base = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return base / f"{storage.basename(uri) or 'dataset'}-{digest}"


def _listing(uri: str) -> dict[str, int]:
    try:
        sizes = storage.sizes_under(uri)
    except (OSError, ValueError) as err:
        raise DataError(f"dataset root {uri}: cannot list it ({err}): expected a readable folder of the "
                        "dataset in the bucket") from None
    sizes = {rel: size for rel, size in sizes.items() if not rel.endswith(MANIFEST)}
    if not sizes:
        raise DataError(f"dataset root {uri} holds no files: expected the dataset's folders there "
                        "(docs/cluster.md shows how to upload it)")
    return sizes


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _current(target: Path, sizes: dict[str, int]) -> bool:
    manifest = target / MANIFEST
    try:
        return json.loads(manifest.read_text()) == sizes
    except (OSError, ValueError):
        return False


def _copy(uri: str, sizes: dict[str, int], target: Path) -> None:
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        for rel, size in sorted(sizes.items()):
            got = storage.copy_to_file(storage.join(uri, rel), partial / rel)
            if got != size:
                raise DataError(f"dataset root {uri}: {rel} arrived with {got} bytes, the listing says {size}: "
                                "the bucket changed during the copy; run again")
        (partial / MANIFEST).write_text(json.dumps(sizes, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def local_root(root: str) -> str:
    """``root`` itself when local; for a storage URI, this node's verified copy of it (made once per node)."""
    if not is_remote(str(root)):
        return root
    uri, target = str(root), cache_dir(str(root))
    sizes = _listing(uri)
    with _locked(target.parent / f".{target.name}.lock"):
        for stale in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not _current(target, sizes):
            print(f"[data] copying {len(sizes)} files ({sum(sizes.values()) / 1e9:.2f} GB) of {uri} to {target}",
                  flush=True)
            _copy(uri, sizes, target)
    return str(target)


def skeleton(root: str, into: str) -> str:
    """The layout of the dataset at URI ``root`` in the local folder ``into``: every file as an empty file, the
    small text files (`TEXT_FILES`) with their contents; returns ``into``."""
    for rel, size in _listing(root).items():
        dest = Path(into) / rel
        if rel.lower().endswith(TEXT_FILES) and size < 8 << 20:
            storage.copy_to_file(storage.join(root, rel), dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.touch()
    return into
