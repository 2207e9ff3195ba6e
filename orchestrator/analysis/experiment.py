"""What one experiment folder holds, as read by `orchestrator.analysis.read`: the `Experiment` and Tune's view of
each trial (`TuneTrial`), and how a folder is named (`folder`, `base_name`): a `Path` where it is local, the URI
string (``s3://bucket/prefix/<name>?...``) where it is not."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
import pyarrow as pa

from orchestrator.io import storage

TERMINAL = ("TERMINATED", "ERROR")
"""Tune's statuses of a trial that has ended."""


class NotAnExperimentError(ValueError):
    """The path holds none of the files a sweep writes."""


def folder(path: str | os.PathLike) -> Path | str:
    """``path`` as the analysis keeps it: a `Path` for a local path or a ``file://`` URI, the URI itself for any
    other (a URI must never pass through `pathlib`, which would fold its ``//``). Read and write it only through
    `orchestrator.io.storage`."""
    local = storage.local_path(path)
    return Path(local) if local is not None else os.fspath(path)


def base_name(path: str | os.PathLike) -> str:
    """The last component of a local path or of a URI's path (its ``?query`` left out)."""
    local = storage.local_path(path)
    if local is not None:
        return Path(local).name
    url = urlsplit(os.fspath(path))
    return posixpath.basename(unquote(url.path).rstrip("/")) or url.netloc


@dataclass
class TuneTrial:
    """What Tune's experiment state says about one trial."""

    trial_id: str
    status: str
    config: dict[str, Any]
    last_result_time: float | None = None
    last_epoch: int | None = None
    error_file: str | None = None


@dataclass
class Experiment:
    """Everything read from one experiment folder; `orchestrator.analysis.read.load_experiment` builds it."""

    path: Path | str  # see `folder`
    sweep: dict[str, Any]
    tune_trials: dict[str, TuneTrial]
    tune_start: float | None
    table: pa.Table
    summary: dict[str, Any] | None
    state: str = "unknown"
    state_reason: str = ""
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def name(self) -> str:
        return base_name(self.path)

    @property
    def metric(self) -> str:
        return self.sweep.get("metric") or (self.summary or {}).get("search", {}).get("metric") or "val_miou"

    @property
    def mode(self) -> str:
        return self.sweep.get("mode") or (self.summary or {}).get("search", {}).get("mode") or "max"

    @property
    def max_epochs(self) -> int | None:
        epochs = self.sweep.get("epochs") or (self.summary or {}).get("config", {}).get("search", {}).get("epochs")
        return int(epochs) if epochs else None
