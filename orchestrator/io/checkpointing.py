"""Search checkpoints: one ``state.pt`` (a dict of tensors and plain types) and a ``manifest.json`` sidecar.

The state holds everything needed to continue a search bit-for-bit: supernet weights with alpha and beta, both
optimizers, the LR schedule, epoch and step, every worker's RNG and data-iterator states, the split seed, the
previous genotype and the config the checkpoint was made with. Only tensors, numbers, strings, lists and
dicts go in, so ``torch.load(weights_only=True)`` reads it back (no pickled classes, no code execution).

The manifest records the state file's SHA-256 and size; `read_checkpoint_dir` verifies them before loading.
`read_newest_valid` resumes from a run's newest checkpoint that passes that check: a truncated or corrupt
latest checkpoint (a crash while Ray copied it to storage, a bad disk) costs the epochs since the one before,
with a warning naming the folder and why, instead of the run. It lists the run folder through the checkpoint's
own filesystem, so the same fallback works on local disk, NFS and object stores (S3, GCS) alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.io import storage
from orchestrator.io.atomic import write_json
from orchestrator.io.paths import is_remote

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
CHECKPOINT_PREFIX = "checkpoint_epoch"
"""Search and retrain checkpoints are ``checkpoint_epoch<kkkk>`` folders in the run folder; names sort by epoch."""


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, from another format, or from an incompatible search space."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint_dir(directory: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Save ``state`` to ``directory/state.pt`` and its manifest (hash, size, ``meta``) beside it.

    Args:
        directory: an existing (temporary) folder that Ray then persists.
        state: tensors and plain types only.
        meta: small JSON-safe facts for humans and tools (epoch, genotype, ...).
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    torch.save(state, path)
    write_json(directory / MANIFEST_FILE, {
        "format_version": FORMAT_VERSION,
        "state_file": STATE_FILE,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        **meta,
    })
    return path


def verify_checkpoint_dir(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest, after checking that the state file matches its recorded size and SHA-256."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {directory}: cannot read {MANIFEST_FILE} ({err})") from None
    path = directory / manifest.get("state_file", STATE_FILE)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory}: format version {manifest.get('format_version')!r}, "
                              f"this code reads version {FORMAT_VERSION}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: {path.name} is missing")
    if path.stat().st_size != manifest.get("bytes") or sha256_file(path) != manifest.get("sha256"):
        raise CheckpointError(f"checkpoint {directory}: {path.name} does not match the SHA-256 and size in "
                              f"{MANIFEST_FILE}: the file is truncated or corrupt")
    return manifest


def read_checkpoint_dir(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify and load a checkpoint's state with ``weights_only=True``."""
    verify_checkpoint_dir(directory)
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)


def latest_checkpoint_dir(directory: str | os.PathLike) -> Path | str | None:
    """The newest ``checkpoint_epoch<k>`` folder with a manifest in a run folder, or None: a `Path` in a local
    folder, a URI in a storage URI (one listing of the run folder)."""
    found = storage.glob(directory, f"{CHECKPOINT_PREFIX}*/{MANIFEST_FILE}")
    if not found:
        return None
    latest = max((storage.parent(p) for p in found), key=lambda d: checkpoint_order(storage.basename(d)))
    return latest if is_remote(latest) else Path(latest)


def checkpoint_order(name: str) -> tuple[int, int]:
    """``checkpoint_epoch0003`` -> (3, 0), its re-run ``checkpoint_epoch0003-1`` -> (3, 1): the order in which
    they were written (a plain sort of paths puts ``0003/`` after ``0003-1/``, '/' sorting after '-')."""
    epoch, _, rerun = name.removeprefix(CHECKPOINT_PREFIX).partition("-")
    try:
        return int(epoch), int(rerun or 0)
    except ValueError:
        return -1, -1


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint folder's manifest (epoch, search space, ...), local or at a URI, or None when it is missing
    or unreadable (the full verification, `read_checkpoint_dir`, then says why)."""
    try:
        manifest = storage.read_json(storage.join(directory, MANIFEST_FILE))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def checkpoint_dir_name(epoch: int, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """``checkpoint_epoch<epoch>``, or with ``-1``, ``-2``... appended when that name is in ``taken``.

    After a fallback from a corrupt checkpoint the loop re-runs its epoch; reporting under the corrupt folder's
    name would make two entries of Ray's checkpoint manager share one folder, and deleting the older entry
    would then delete the new checkpoint. The suffix sorts after the plain name and before the next epoch.
    """
    name = f"{CHECKPOINT_PREFIX}{epoch:04d}"
    n = 0
    while (candidate := name if n == 0 else f"{name}-{n}") in taken:
        n += 1
    return candidate


def sibling_checkpoints(checkpoint: Any) -> list[Any]:
    """The other ``checkpoint_epoch*`` folders in ``checkpoint``'s run folder, as Ray Checkpoints, newest first.

    Args:
        checkpoint: a `ray.train.Checkpoint`; its filesystem (local, NFS, S3, GCS) is what is listed.
    """
    import pyarrow.fs
    import ray.train

    parent, own = posixpath.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    names = sorted(i.base_name for i in infos
                   if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
    return [ray.train.Checkpoint(path=posixpath.join(parent, n), filesystem=checkpoint.filesystem)
            for n in reversed(names) if n != own]


def read_newest_valid(checkpoint: Any, warn: Callable[[str], None],
                      older: Callable[[Any], list[Any]] = sibling_checkpoints) -> tuple[dict[str, Any], Any]:
    """The state of ``checkpoint`` (Ray's latest), else of the newest older checkpoint that verifies.

    Each checkpoint that fails verification is reported through ``warn`` (folder and reason) and skipped; only
    checkpoints older than ``checkpoint`` are tried, so a resumed run never jumps ahead of Ray's bookkeeping.

    Returns:
        (state, the Ray Checkpoint it came from).

    Raises:
        CheckpointError: no checkpoint of the run verifies.
    """
    failures = []

    def candidates() -> Iterator[Any]:
        yield checkpoint
        own = posixpath.basename(checkpoint.path.rstrip("/"))
        yield from (c for c in older(checkpoint) if posixpath.basename(c.path) < own)

    for candidate in candidates():
        try:
            with candidate.as_directory() as directory:
                state = read_checkpoint_dir(directory)
        except CheckpointError as err:
            failures.append(str(err))
            warn(f"{err}; trying the checkpoint before it")
            continue
        return state, candidate
    raise CheckpointError(
        f"no checkpoint of run {posixpath.dirname(checkpoint.path.rstrip('/'))} passes verification "
        f"({'; '.join(failures)}). Nothing can be resumed: move the run folder away to start it afresh, or run "
        "under another name."
    )


# ---------------------------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states as tensors and plain numbers."""
    py_version, py_keys, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "keys": torch.tensor(py_keys, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA only when both sides have it)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(k) for k in p["keys"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
