"""Where a path points: a local folder or a storage URI (``s3://``, ``gs://``, ...), decided in one place."""

from __future__ import annotations

import os
from pathlib import Path


def is_remote(path: str) -> bool:
    """True for a URI such as ``s3://bucket/key``; False for a local path."""
    return "://" in str(path)


def is_local_dir(path: str) -> bool:
    """A folder on this machine (never true for a URI)."""
    return not is_remote(path) and os.path.isdir(path)


def absolute(path: str) -> str:
    """A local path made absolute (Ray Tune wants absolute storage paths); a URI unchanged."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def local_or_none(path: str) -> str | None:
    """The path where it is local, None for a URI (for code that can only write local files)."""
    return None if is_remote(path) else str(path)
