"""Read an experiment folder's plain files into an `Experiment`, without Ray.

Sources: ``sweep.json`` (status, metric, mode, epochs), the per-epoch records of `orchestrator.io.records`,
rank 0's ``train-<trial>/epochs/epoch-<k>.json`` for epochs the driver never recorded (an interrupted sweep),
Tune's ``trial-<id>/result.json`` (its own log of each report), Tune's ``experiment_state-*.json`` (trial status,
trials without records) and ``final/summary.json``. `load_experiment` also decides the experiment's state
(`orchestrator.analysis.state`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from orchestrator.analysis.experiment import TERMINAL, Experiment, NotAnExperimentError, TuneTrial
from orchestrator.analysis.state import detect_state
from orchestrator.io.records import RECORDS_DIR, RECORDS_FILE, read_records, record_row


def is_experiment_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds sweep.json, a Tune experiment state or the records table."""
    path = Path(path)
    return path.is_dir() and ((path / "sweep.json").is_file() or (path / RECORDS_FILE).is_file()
                              or any(path.glob("experiment_state-*.json")))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_tune_state(path: Path) -> tuple[dict[str, TuneTrial], float | None]:
    """Trials (status, config, last result time) from the newest ``experiment_state-*.json``, and Tune's start
    time; empty when there is none (Tune names them by session start, so the newest sorts last)."""
    files = sorted(path.glob("experiment_state-*.json"))
    state = _read_json(files[-1]) if files else None
    if not state:
        return {}, None
    trials = {}
    for entry in state.get("trial_data", []):
        try:
            info, run = (json.loads(part) for part in entry[:2])
        except (TypeError, ValueError, json.JSONDecodeError):
            continue
        trial = TuneTrial(trial_id=info["trial_id"], status=str(info.get("status", "UNKNOWN")),
                          config=dict(info.get("evaluated_params") or info.get("config") or {}),
                          last_result_time=run.get("last_result_time"), error_file=run.get("error_filename"),
                          last_epoch=(run.get("last_result") or {}).get("epoch"))
        trials[trial.trial_id] = trial
    return trials, (state.get("stats") or {}).get("start_time")


def _epoch_json_rows(path: Path, recorded: set[tuple[str, int]], tune_trials: dict[str, TuneTrial]) -> list[dict]:
    """Rows for epochs rank 0 wrote to ``train-<trial>/epochs/`` that the driver never recorded (it was killed
    between the two), so an interrupted sweep loses no finished epoch. Of a trial Tune has ended, only epochs
    up to its last reported one count: later files are from workers still running when the scheduler stopped it.
    """
    rows = []
    for run in sorted(path.glob("train-*")):
        trial_id = run.name[len("train-"):]
        tune = tune_trials.get(trial_id)
        config = tune.config if tune else _read_json(path / f"trial-{trial_id}" / "params.json") or {}
        last = tune.last_epoch if tune and tune.status in TERMINAL and tune.last_epoch is not None else math.inf
        for file in sorted((run / "epochs").glob("epoch-*.json")):  # as orchestrator.train.trainers.read_epochs
            metrics = _read_json(file)
            if not metrics or "epoch" not in metrics or (trial_id, int(metrics["epoch"])) in recorded \
                    or int(metrics["epoch"]) > last:
                continue
            row = record_row(trial_id, config, metrics)
            row["time_recorded"] = file.stat().st_mtime  # when rank 0 wrote it, not now
            rows.append(row)
    return rows


def _tune_result_rows(path: Path, recorded: set[tuple[str, int]], tune_trials: dict[str, TuneTrial]) -> list[dict]:
    """Rows from Tune's own log of what each trial reported (``trial-<id>/result.json``, JSON lines, the last
    report of an epoch wins after a resume) for epochs without a record: Tune syncs this file to remote storage,
    where the driver's records and rank 0's epoch files are not written."""
    rows: dict[tuple[str, int], dict] = {}
    for file in sorted(path.glob("trial-*/result.json")):
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(result, dict) or "epoch" not in result:
                continue
            trial_id = str(result.get("trial_id") or file.parent.name[len("trial-"):])
            if (trial_id, result["epoch"]) in recorded:
                continue
            tune = tune_trials.get(trial_id)
            row = record_row(trial_id, result.get("config") or (tune.config if tune else {}), result)
            row["time_recorded"] = result.get("timestamp")  # when Tune received it
            rows[(trial_id, row["epoch"])] = row
    return list(rows.values())


def read_table(path: Path, tune_trials: dict[str, TuneTrial]) -> pa.Table:
    """One row per trial-epoch: the records (per-epoch files, else the consolidated table), then epochs only
    Tune's ``result.json`` or rank 0's epoch files hold; a ``source`` column says which. Sorted by (trial_id,
    epoch), no duplicates."""
    table = read_records(path)
    if table.num_rows == 0 and (path / RECORDS_FILE).is_file() and not (path / RECORDS_DIR).is_dir():
        import pyarrow.parquet as pq

        table = pq.read_table(path / RECORDS_FILE)
    table = table.append_column("source", pa.array(["records"] * table.num_rows, pa.string()))
    recorded = set(zip(table.column("trial_id").to_pylist(), table.column("epoch").to_pylist(), strict=True))
    for source, read in (("tune-result-json", _tune_result_rows), ("epochs-json", _epoch_json_rows)):
        rows = read(path, recorded, tune_trials)
        if rows:
            extra = pa.Table.from_pylist([{**row, "source": source} for row in rows])
            table = pa.concat_tables([table, extra], promote_options="permissive")
            recorded |= {(row["trial_id"], row["epoch"]) for row in rows}
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])


LIST_COLUMNS = ("alpha", "beta", "path", "per_class_iou")


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The table as pandas, with the nested columns as plain Python lists (nulls as NaN)."""
    frame = table.to_pandas()
    for column in LIST_COLUMNS:
        if column in table.column_names:
            frame[column] = table.column(column).to_pylist()
    return frame


def load_experiment(path: str | os.PathLike, now: float | None = None) -> Experiment:
    """Read an experiment folder and decide its state; raises NotAnExperimentError for any other folder.

    Args:
        path: ``<storage>/<name>`` of a sweep.
        now: the time to judge staleness against (default: the clock); tests pass a later one.
    """
    path = Path(path)
    if not is_experiment_dir(path):
        raise NotAnExperimentError(f"{path} is not an experiment folder (no sweep.json, experiment_state-*.json "
                                   f"or {RECORDS_FILE})")
    tune_trials, tune_start = read_tune_state(path)
    table = read_table(path, tune_trials)
    exp = Experiment(path=path, sweep=_read_json(path / "sweep.json") or {}, tune_trials=tune_trials,
                     tune_start=tune_start, table=table, summary=_read_json(path / "final" / "summary.json"))
    exp.frame = to_frame(table)
    exp.state, exp.state_reason = detect_state(exp, time.time() if now is None else now)
    return exp

