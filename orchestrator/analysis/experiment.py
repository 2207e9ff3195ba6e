"""What one experiment folder holds, as read by `orchestrator.analysis.read`: the `Experiment` and Tune's view of
each trial (`TuneTrial`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

TERMINAL = ("TERMINATED", "ERROR")
"""Tune's statuses of a trial that has ended."""


class NotAnExperimentError(ValueError):
    """The path holds none of the files a sweep writes."""


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

    path: Path
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
        return self.path.name

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
