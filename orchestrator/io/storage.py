"""One storage layer for every file the project writes or reads: local paths and URIs alike, on `pyarrow.fs`.

Ray Train and Tune reach ``storage_path`` through `pyarrow.fs` too, so a URI that works for Ray works here:
``s3://bucket/prefix``, ``gs://bucket/prefix`` and ``file:///abs/path``, with the filesystem's options in the
query (``s3://exp/runs?endpoint_override=127.0.0.1:5055&scheme=http``; `pyarrow.fs.FileSystem.from_uri` reads
them). S3 also honours ``AWS_ENDPOINT_URL`` and the usual ``AWS_*`` variables. `orchestrator.io.paths.is_remote`
is the one place that tells a URI from a local path.

- `join` puts names on a URI's path, so the query stays at its end; on a local path it is `os.path.join`.
- `resolve` turns either into ``(FileSystem, path inside it)``. Filesystems of object stores are kept per
  scheme, bucket and query, so a client is built once per bucket, not once per write.
- Writes are whole-file and atomic. Local (and ``file://``): a temporary file in the destination's folder,
  flushed, fsynced and renamed over the destination (`os.replace`), so a crash leaves the old file or the new
  one, never half of one. Remote: one whole-object write (an S3 PUT is atomic: readers see the old object or
  the new one).
- A local path whose first component ends with ``:`` (``s3:/bucket/...``, a URI that lost its ``//`` to
  `pathlib`) is refused: a URI must never become a local folder.

Functions that write return where they wrote: a `Path` for a local path (as callers of `orchestrator.io.atomic`
expect), the URI string for a URI. `check_writable` (and `check_reachable`) let a command refuse a storage path it
cannot use in seconds, before anything starts, instead of after pyarrow's retries.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

from orchestrator.io.paths import is_remote

PathLike = str | os.PathLike
OBJECT_STORES = ("s3", "gs", "gcs")
"""Schemes whose "folders" are key prefixes: nothing to create, and one client serves a whole bucket."""

_LOCAL_FS = pafs.LocalFileSystem()
_FILESYSTEMS: dict[tuple[str, str, str], pafs.FileSystem] = {}
_LOCK = threading.Lock()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# ------------------------------------------------------------------------------------------------ paths


def _checked_local(path: PathLike) -> str:
    """A local path as a string, refusing one that is a mangled URI (first component ``s3:``, ``gs:``...)."""
    text = os.fspath(path)
    parts = Path(text).parts
    if parts and parts[0].endswith(":"):
        raise ValueError(f"{text!r} is not a local path: it looks like a URI that lost its '//' "
                         f"(write it as '{parts[0]}//...', and join names with orchestrator.io.storage.join)")
    return text


def local_path(path: PathLike) -> str | None:
    """The local path that ``path`` names (a plain path, or a ``file://`` URI); None for a remote URI."""
    if not is_remote(os.fspath(path)):
        return _checked_local(path)
    parts = urlsplit(os.fspath(path))
    if parts.scheme != "file":
        return None
    if parts.netloc not in ("", "localhost") or parts.query:
        raise ValueError(f"{os.fspath(path)!r}: a file:// URI names a path on this machine, with no host or query")
    return _checked_local(unquote(parts.path))


def join(base: PathLike, *names: str) -> str:
    """``base`` with ``names`` appended as path components. On a URI the names go onto its path (quoted as a
    URI needs), never after its ``?query``; on a local path this is `os.path.join`. Leading and trailing
    slashes of a name are dropped, so every name lands under ``base``."""
    parts = [str(n).strip("/") for n in names]
    parts = [p for p in parts if p]
    text = os.fspath(base)
    if not is_remote(text):
        return os.path.join(_checked_local(text), *parts)
    url = urlsplit(text)
    if url.fragment:
        raise ValueError(f"{text!r}: a storage URI has no '#fragment'")
    path = "/".join([url.path.rstrip("/"), *(quote(p, safe="/=:@+,;~!$&'()*") for p in parts)])
    return urlunsplit((url.scheme, url.netloc, path, url.query, ""))


def basename(path: PathLike) -> str:
    """The last component of a local path or of a URI's path (never its query)."""
    text = os.fspath(path)
    if not is_remote(text):
        return os.path.basename(os.path.normpath(text))
    return unquote(urlsplit(text).path.rstrip("/").rpartition("/")[2])


def parent(path: PathLike) -> str:
    """The folder that holds ``path``: a local path's dirname, or the URI with its last path component dropped
    (its query kept)."""
    text = os.fspath(path)
    if not is_remote(text):
        return os.path.dirname(os.path.abspath(_checked_local(text)))
    url = urlsplit(text)
    return urlunsplit((url.scheme, url.netloc, url.path.rstrip("/").rpartition("/")[0], url.query, ""))


def _object_store(url) -> pafs.FileSystem:
    """The cached filesystem of a bucket (scheme, bucket and query: the query carries the client's options)."""
    key = (url.scheme, url.netloc, url.query)
    with _LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            fs, _ = pafs.FileSystem.from_uri(urlunsplit((url.scheme, url.netloc, "", url.query, "")))
            _FILESYSTEMS[key] = fs
    return fs


def resolve(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or a URI; an object store's filesystem is cached."""
    local = local_path(path)
    if local is not None:
        return _LOCAL_FS, os.path.abspath(local)
    text = os.fspath(path)
    url = urlsplit(text)
    if url.fragment:
        raise ValueError(f"{text!r}: a storage URI has no '#fragment'")
    if url.scheme not in OBJECT_STORES:
        return pafs.FileSystem.from_uri(text)  # hdfs and the like: pyarrow's own parsing, not cached
    if not url.netloc:
        raise ValueError(f"{text!r}: a {url.scheme}:// URI needs a bucket name")
    return _object_store(url), (url.netloc + unquote(url.path)).rstrip("/")


def _is_object_store(path: PathLike) -> bool:
    return is_remote(os.fspath(path)) and urlsplit(os.fspath(path)).scheme in OBJECT_STORES


def forget_filesystems() -> None:
    """Drop the cached filesystems (after changing credentials or ``AWS_*`` variables in this process)."""
    with _LOCK:
        _FILESYSTEMS.clear()


# ----------------------------------------------------------------------------------------------- writes


def _write_local(path: str, data: bytes) -> Path:
    """Temporary file in the destination's folder, fsync, rename over the destination."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def write_bytes(path: PathLike, data: bytes) -> Path | str:
    """Write ``data`` as the whole file at ``path``, atomically (see the module docstring)."""
    local = local_path(path)
    if local is not None:
        return _write_local(local, bytes(data))
    fs, inner = resolve(path)
    if not _is_object_store(path):
        fs.create_dir(inner.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(bytes(data))  # one write of the whole object, committed when the stream closes
    return os.fspath(path)


def write_text(path: PathLike, text: str) -> Path | str:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, data: Any) -> Path | str:
    """JSON with two-space indents and a final newline; values JSON does not know are written as strings."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(fig, path: PathLike, dpi: int = 120) -> Path | str:
    """Render a matplotlib figure to PNG, write it atomically and close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def makedirs(path: PathLike) -> None:
    """Create a folder and its parents; nothing to do on an object store, where folders are key prefixes."""
    local = local_path(path)
    if local is not None:
        Path(local).mkdir(parents=True, exist_ok=True)
        return
    if not _is_object_store(path):
        fs, inner = resolve(path)
        fs.create_dir(inner, recursive=True)


# ------------------------------------------------------------------------------------------------ reads


def read_bytes(path: PathLike) -> bytes:
    """The whole file; `FileNotFoundError` when there is none."""
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as stream:
        return stream.readall()


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: PathLike) -> Any:
    return json.loads(read_text(path))


def exists(path: PathLike) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: PathLike) -> bool:
    """A folder (on an object store: a prefix that some object lives under)."""
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def is_file(path: PathLike) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def list_dir(path: PathLike) -> list[str]:
    """The sorted names directly in the folder ``path``; empty when it does not exist."""
    fs, inner = resolve(path)
    found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(info.base_name for info in found)


def glob(base: PathLike, pattern: str) -> list[str]:
    """Sorted paths under ``base`` whose relative path matches ``pattern`` (`fnmatch` per component, so ``*``
    stays within one folder: ``"*/epoch-*.parquet"``), each built with `join` so a URI keeps its query.
    A pattern of several components reads the tree under ``base`` in one listing (one paginated LIST on S3)."""
    wanted = [p for p in pattern.split("/") if p]
    fs, inner = resolve(base)
    selector = pafs.FileSelector(inner, allow_not_found=True, recursive=len(wanted) > 1)
    found = []
    for info in fs.get_file_info(selector):
        rel = info.path[len(inner):].strip("/").split("/")
        if len(rel) == len(wanted) and all(fnmatch.fnmatchcase(r, w) for r, w in zip(rel, wanted, strict=True)):
            found.append("/".join(rel))
    return [join(base, rel) for rel in sorted(found)]


def files_under(path: PathLike) -> list[str]:
    """Every file below ``path`` (recursively), as paths relative to it with ``/``; [] when there is none."""
    fs, inner = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=True))
    return sorted(info.path[len(inner):].strip("/") for info in infos if info.is_file)


def sizes_under(path: PathLike) -> dict[str, int]:
    """Every file below ``path`` (recursively) -> its size in bytes, keyed by the path relative to it with ``/``."""
    fs, inner = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=True))
    return {info.path[len(inner):].strip("/"): int(info.size) for info in infos if info.is_file}


def copy_to_file(path: PathLike, dest: PathLike, chunk: int = 8 << 20) -> int:
    """Stream the file ``path`` (local or at a URI) into the local file ``dest`` (its folder made); returns the
    bytes copied."""
    fs, inner = resolve(path)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    with fs.open_input_stream(inner) as src, open(dest, "wb") as out:
        while block := src.read(chunk):
            out.write(block)
            copied += len(block)
    return copied


def delete(path: PathLike) -> None:
    """Remove one file (an object); a missing one is no error."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).is_file:
        fs.delete_file(inner)


# ------------------------------------------------------------------------------------------------ checks


class StorageError(ValueError):
    """A storage path a command cannot use: its server not reachable, not writable, or a file where a folder
    belongs (or the reverse). The message names the path."""


PROBE_TIMEOUT_S = 5.0
"""How long a check waits for an object store's server to accept a connection: a server that is up answers in
milliseconds; pyarrow's own retries take ~16 s to give up on one that is down."""


def _endpoint(url) -> tuple[str, int] | None:
    """(host, port) of an object store's server named in the URI (``endpoint_override``, ``scheme``) or, for S3,
    by ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; None for the provider's own endpoint."""
    query = dict(parse_qsl(url.query))
    env = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")) if url.scheme == "s3" else None
    given = query.get("endpoint_override") or env
    if not given:
        return None
    server = urlsplit(given if "://" in given else f"{query.get('scheme', 'https')}://{given}")
    return server.hostname or "", server.port or (443 if server.scheme == "https" else 80)


def check_reachable(path: PathLike, what: str = "storage path") -> None:
    """Refuse (`StorageError`) a URI whose object store server does not accept a connection within
    `PROBE_TIMEOUT_S`; local paths and the providers' own endpoints pass."""
    text = os.fspath(path)
    if not _is_object_store(text):
        return
    endpoint = _endpoint(urlsplit(text))
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise StorageError(f"{what} {text} is not reachable: nothing answers at {endpoint[0]}:{endpoint[1]} "
                           f"({reason}). Is the storage server running, and is the endpoint right?") from None


def _check_local(local: str, text: str, what: str, file: bool) -> None:
    target = Path(local).expanduser()
    if file and target.is_dir():
        raise StorageError(f"{what} {text} is a folder: expected the name of a file to write (e.g. {target}/out)")
    if not file and target.exists() and not target.is_dir():
        raise StorageError(f"{what} {text} is a file: expected a folder (or a name for a new one)")
    folder = target.parent if file else target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"{what} {text}: cannot create the folder {folder} ({err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"{what} {text}: the folder {folder} is not writable")


def check_writable(path: PathLike, what: str = "storage path", *, file: bool = False) -> None:
    """Refuse (`StorageError`, naming ``what`` and the path) a folder, or with ``file`` a file, that cannot be
    written: a local one whose folder cannot be created (it is created) or written, a file path that is a folder
    or a folder path that is a file; a URI whose server is not reachable (`check_reachable`) or that refuses a
    probe object (written beside the destination and deleted)."""
    text = os.fspath(path)
    try:
        local = local_path(text)
    except ValueError as err:  # a URI that lost its '//', a file:// URI with a host
        raise StorageError(f"{what} {text}: {err}") from None
    if local is not None:
        _check_local(local, text, what, file)
        return
    check_reachable(path, what)
    probe = join(parent(path) if file else path, f".write-check-{uuid.uuid4().hex[:12]}")
    try:
        write_bytes(probe, b"")
        delete(probe)
    except (OSError, ValueError) as err:
        raise StorageError(f"{what} {text} is not writable: {err}") from None
