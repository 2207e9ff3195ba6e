"""A local folder mirrored to storage, for writers that can only write local files (TensorBoard's).

`LocalMirror(target)`: where ``target`` is local, the writer writes there and there is nothing to copy. Where
it is a URI (``s3://...``), the writer writes into a private temporary folder and `sync` puts every file of it
that changed since the last sync onto ``target`` as one whole object (`orchestrator.io.storage.write_bytes`), so
readers of the bucket see each events file as of the last sync, never half of one. `close` syncs a last time
and removes the temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from orchestrator.io import storage


class LocalMirror:
    """A local folder (``path``) whose files `sync` copies to ``target`` when that is a URI."""

    def __init__(self, target: str):
        self.target = str(target)
        local = storage.local_path(self.target)
        self.remote = local is None
        self.path = tempfile.mkdtemp(prefix="adl-mirror-") if self.remote else local
        os.makedirs(self.path, exist_ok=True)
        self._sent: dict[str, tuple[int, int]] = {}

    def sync(self) -> list[str]:
        """Copy the files that changed (size or mtime) since the last sync; returns their relative paths."""
        if not self.remote:
            return []
        sent = []
        for rel in storage.files_under(self.path):
            local = os.path.join(self.path, rel)
            stat = os.stat(local)
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(rel) == stamp:
                continue
            with open(local, "rb") as f:
                storage.write_bytes(storage.join(self.target, rel), f.read())
            self._sent[rel] = stamp
            sent.append(rel)
        return sent

    def close(self) -> None:
        """A last sync; the temporary folder of a remote target goes away."""
        if self.remote and os.path.isdir(self.path):
            try:
                self.sync()
            finally:
                shutil.rmtree(self.path, ignore_errors=True)
