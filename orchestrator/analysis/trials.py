"""The leaderboard rows of an experiment folder: the facts of each trial (records, Tune's state, ``error.txt``)
turned into `orchestrator.analysis.leaderboard` rows, ranked there."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.experiment import TERMINAL, Experiment, TuneTrial
from orchestrator.analysis.leaderboard import is_missing, leaderboard_row, rank_rows, stop_reason, trial_status
from orchestrator.io import storage
from orchestrator.io.numbers import is_finite


def failed(exp: Experiment, trial_id: str) -> bool:
    """Whether a trial failed: Tune's state says ERROR or, unless the sweep is running (and may be retrying it)
    or Tune's state says the trial ended normally (after retries), Tune left its ``error.txt``: Tune's state
    file can be older than the failure."""
    tune = exp.tune_trials.get(trial_id)
    if tune is not None and tune.status in TERMINAL:
        return tune.status == "ERROR"
    return exp.state != "running" and storage.is_file(storage.join(exp.path, f"trial-{trial_id}", "error.txt"))


def _best(values: pd.Series, mode: str) -> tuple[float | None, int | None]:
    """The best finite value of a trial's metric and its position."""
    finite = values[values.map(is_finite)]
    if finite.empty:
        return None, None
    index = finite.idxmax() if mode == "max" else finite.idxmin()
    return float(finite[index]), index


def _config_of(group: pd.DataFrame, tune: TuneTrial | None) -> dict[str, Any]:
    """The swept hyperparameters from a trial's records, else from Tune's state (a trial with no epoch yet)."""
    last = group.iloc[-1] if len(group) else {}
    config = {c[len("config/"):]: last[c] for c in group.columns if c.startswith("config/") and len(group)}
    config = {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items() if not is_missing(v)}
    return config or (dict(tune.config) if tune else {})


def _error_line(exp: Experiment, trial_id: str) -> str:
    """The last line of Tune's ``error.txt`` of a failed trial, naming the file."""
    try:
        lines = storage.read_text(storage.join(exp.path, f"trial-{trial_id}", "error.txt")).strip().splitlines()
    except OSError:
        return "Tune marked the trial ERROR"
    return f"{lines[-1].strip()[:200]} (trial-{trial_id}/error.txt)" if lines else ""


def trial_row(exp: Experiment, trial_id: str, max_epochs: int | None) -> dict[str, Any]:
    """One leaderboard row: hyperparameters, best and final score, epochs, status, the last decoded genotype."""
    frame = exp.frame
    group = frame[frame["trial_id"] == trial_id].sort_values("epoch") if not frame.empty else frame
    values = group[exp.metric] if exp.metric in group else pd.Series(dtype=float)
    best, index = _best(values, exp.mode)
    last = group.iloc[-1] if len(group) else None
    epochs = int(group["epoch"].max()) if len(group) else 0
    diverged = last is not None and isinstance(last.get("diverged"), (bool, np.bool_)) and bool(last["diverged"])
    tune = exp.tune_trials.get(trial_id)
    status = trial_status(failed=failed(exp, trial_id), diverged=diverged, epochs=epochs, max_epochs=max_epochs,
                          ended=tune is not None and tune.status in TERMINAL, sweep_state=exp.state)
    reason = last.get("stop_reason") if last is not None and isinstance(last.get("stop_reason"), str) else None
    return leaderboard_row(
        trial_id, _config_of(group, tune), final=values.iloc[-1] if len(values) else None, epochs=epochs,
        status=status, stop_reason=stop_reason(status, _error_line(exp, trial_id) if status == "error" else None,
                                               reason),
        path=list(last["path"]) if last is not None and isinstance(last.get("path"), list) else None,
        best=best, best_epoch=int(group.loc[index, "epoch"]) if index is not None else None,
        genotype=last.get("genotype") if last is not None and isinstance(last.get("genotype"), str) else None)


def rank_trials(exp: Experiment, rank_by: str = "final") -> list[dict[str, Any]]:
    """Every trial (recorded or only known to Tune), ranked by `orchestrator.analysis.leaderboard.rank_rows` on
    its ``final`` (last reported, what the sweep picks its best trial by) or ``best`` score."""
    recorded = set(exp.frame["trial_id"]) if "trial_id" in exp.frame else set()
    seen = float(exp.frame["epoch"].max()) if "epoch" in exp.frame and len(exp.frame) else None
    max_epochs = exp.max_epochs or (int(seen) if is_finite(seen) else None)
    rows = [trial_row(exp, trial_id, max_epochs) for trial_id in sorted(recorded | set(exp.tune_trials))]
    return rank_rows(rows, exp.mode, rank_by)
