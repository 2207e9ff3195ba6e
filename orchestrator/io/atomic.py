"""Atomic whole-file writes: every file the project writes itself goes through here (or `orchestrator.io.storage`,
which these names delegate to).

On a local path a write goes to a temporary file in the destination's folder, is flushed and fsynced, then
renamed over the destination (`os.replace`, atomic on POSIX), so a crash leaves either the old file or the new
one, never a half-written one. On a URI (``s3://bucket/prefix?...``) it is one whole-object write, which object
stores commit atomically. Each function returns where it wrote: a `Path` for a local path, the URI for a URI.
"""

from __future__ import annotations

from orchestrator.io.storage import save_figure, write_bytes, write_json, write_text

__all__ = ["save_figure", "write_bytes", "write_json", "write_text"]
