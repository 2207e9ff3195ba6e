"""What the project writes and reads: whole-file atomic writes, checkpoints and their manifests, per-epoch
records, and where a path points (a local folder or a storage URI)."""
