"""The one resume guard: a run folder's checkpoint is resumed only by the run that made it.

Run names are derived, so running a command again resumes its run; a changed config or genotype under a reused
name must be refused, not resumed into. Two runs checkpoint here: a search (its supernet's shape: L, B, F, ops,
stem, head and the number of classes) and a retrain (its genotype). Each is checked twice: before any worker
starts, from the newest checkpoint's manifest (`check_search_folder`, `check_retrain_folder`: a second instead of
a worker group's start and retries), and by the workers on the full, verified state (`check_search_state`,
`check_retrain_state`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from orchestrator.config import SEARCH_SPACE_KEY_DEFAULTS, SEARCH_SPACE_KEYS
from orchestrator.io import storage
from orchestrator.io.checkpointing import MANIFEST_FILE, CheckpointError, latest_checkpoint_dir, read_manifest

ADVICE = "Use another name (--name or name=...), another storage path, or what the run was started with."


def search_space_diffs(saved: dict[str, Any], space: dict[str, Any], num_classes: int | None = None) -> list[str]:
    """``"key: checkpoint x, config y"`` for every supernet-shape key that differs (a key the checkpoint predates
    takes its old default, `SEARCH_SPACE_KEY_DEFAULTS`)."""
    saved = {**SEARCH_SPACE_KEY_DEFAULTS, **saved}
    given = {**SEARCH_SPACE_KEY_DEFAULTS, **space}
    want = {k: given[k] for k in SEARCH_SPACE_KEYS}
    if num_classes is not None:
        want["num_classes"] = num_classes
    return [f"{k}: checkpoint {saved.get(k)!r}, config {v!r}" for k, v in want.items() if saved.get(k) != v]


def check_search_state(state: dict[str, Any], space: dict[str, Any], num_classes: int,
                       source: str = "checkpoint") -> None:
    """Refuse a search checkpoint whose supernet shape differs from the config's (the workers' check)."""
    diffs = search_space_diffs(state.get("search_space", {}), space, num_classes)
    if diffs:
        raise CheckpointError(f"{source} was made with a different search space ({'; '.join(diffs)}): its weights, "
                              f"alpha and beta do not fit this supernet. {ADVICE}")


def check_search_folder(directory: str | os.PathLike, space: dict[str, Any]) -> Any:
    """Before a search starts: refuse a run folder whose newest checkpoint has another search space; returns
    that checkpoint's folder (None without one)."""
    latest, manifest = _newest(directory)
    if manifest is not None:
        diffs = search_space_diffs(manifest.get("search_space", {}), space)
        if diffs:
            raise CheckpointError(f"run folder {directory} holds a checkpoint ({storage.basename(latest)}) made with a "
                                  f"different search space ({'; '.join(diffs)}); this config would resume it. {ADVICE}")
    return latest


def check_retrain_state(state: dict[str, Any], genotype: dict[str, Any], source: str = "checkpoint") -> None:
    """Refuse a retrain checkpoint of another genotype (the workers' check)."""
    if state.get("genotype") != genotype:
        raise CheckpointError(f"{source} retrains another genotype ({json.dumps(state.get('genotype'))}). {ADVICE}")


def check_retrain_folder(directory: str | os.PathLike, genotype: dict[str, Any]) -> None:
    """Before a retrain starts: refuse a run folder whose newest checkpoint retrains another genotype."""
    latest, manifest = _newest(directory)
    if manifest is not None and manifest.get("genotype") != genotype:
        raise CheckpointError(
            f"run folder {directory} holds a checkpoint ({storage.basename(latest)}) that is not a retrain of this "
            f"genotype (its {MANIFEST_FILE} has genotype {json.dumps(manifest.get('genotype'))}); this run would "
            f"resume it. {ADVICE}")


def _newest(directory: str | os.PathLike) -> tuple[Any, dict[str, Any] | None]:
    """The newest checkpoint folder and its manifest (None when there is none, or it is unreadable: the workers'
    verification then says why)."""
    latest = latest_checkpoint_dir(directory)
    return latest, (read_manifest(latest) if latest is not None else None)
