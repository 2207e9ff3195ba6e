"""Read an experiment folder's plain files into an `Experiment`, without Ray.

Sources: ``sweep.json`` (status, metric, mode, epochs), the per-epoch records of `orchestrator.io.records`,
rank 0's ``train-<trial>/epochs/epoch-<k>.json`` for epochs the driver never recorded (an interrupted sweep),
Tune's ``trial-<id>/result.json`` (its own log of each report), Tune's ``experiment_state-*.json`` (trial status,
trials without records) and ``final/summary.json``. `load_experiment` also decides the experiment's state
(`orchestrator.analysis.state`).

The folder may be local or a URI (``s3://bucket/prefix/<name>?endpoint_override=...``): every file is listed and
read through `orchestrator.io.storage` (pyarrow.fs), and nothing local is made from a URI.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
import pyarrow as pa

from orchestrator.analysis.experiment import TERMINAL, Experiment, NotAnExperimentError, TuneTrial, folder
from orchestrator.analysis.state import detect_state
from orchestrator.io import records, storage
from orchestrator.io.records import RECORDS_DIR, RECORDS_FILE, read_records, record_row

Folder = Path | str
"""A local folder or a URI, as `orchestrator.analysis.experiment.folder` keeps it."""


def is_experiment_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` holds sweep.json, a Tune experiment state or the records table."""
    return storage.is_dir(path) and (storage.is_file(storage.join(path, "sweep.json"))
                                     or storage.is_file(storage.join(path, RECORDS_FILE))
                                     or bool(storage.glob(path, "experiment_state-*.json")))


def _read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = storage.read_json(path)
    except (OSError, ValueError):  # missing or unreadable; ValueError: not UTF-8 or not JSON
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: str) -> float | None:
    """When a file was last written (unix seconds), from its `pyarrow.fs.FileInfo` (an S3 object has one too)."""
    fs, inner = storage.resolve(path)
    info = fs.get_file_info(inner)
    return info.mtime_ns / 1e9 if info.mtime_ns is not None else None


def read_tune_state(path: Folder) -> tuple[dict[str, TuneTrial], float | None]:
    """Trials (status, config, last result time) from the newest ``experiment_state-*.json``, and Tune's start
    time; empty when there is none (Tune names them by session start, so the newest sorts last)."""
    files = storage.glob(path, "experiment_state-*.json")
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


def _component(file: str, back: int) -> str:
    """The ``back``-th last name in the path of a local file or of a URI (its ``?query`` left out)."""
    local = storage.local_path(file)
    return (local if local is not None else unquote(urlsplit(file).path)).replace(os.sep, "/").split("/")[-back]


def _epoch_json_rows(path: Folder, recorded: set[tuple[str, int]], tune_trials: dict[str, TuneTrial]) -> list[dict]:
    """Rows for epochs rank 0 wrote to ``train-<trial>/epochs/`` that the driver never recorded (it was killed
    between the two), so an interrupted sweep loses no finished epoch. Of a trial Tune has ended, only epochs
    up to its last reported one count: later files are from workers still running when the scheduler stopped it.
    """
    rows, configs = [], {}
    for file in storage.glob(path, "train-*/epochs/epoch-*.json"):  # as orchestrator.train.trainers.read_epochs
        trial_id = _component(file, 3)[len("train-"):]
        tune = tune_trials.get(trial_id)
        last = tune.last_epoch if tune and tune.status in TERMINAL and tune.last_epoch is not None else math.inf
        metrics = _read_json(file)
        if not metrics or "epoch" not in metrics or (trial_id, int(metrics["epoch"])) in recorded \
                or int(metrics["epoch"]) > last:
            continue
        if trial_id not in configs:
            configs[trial_id] = tune.config if tune else \
                _read_json(storage.join(path, f"trial-{trial_id}", "params.json")) or {}
        row = record_row(trial_id, configs[trial_id], metrics)
        row["time_recorded"] = _mtime(file)  # when rank 0 wrote it, not now
        rows.append(row)
    return rows


def _tune_result_rows(path: Folder, recorded: set[tuple[str, int]], tune_trials: dict[str, TuneTrial]) -> list[dict]:
    """Rows from Tune's own log of what each trial reported (``trial-<id>/result.json``, JSON lines, the last
    report of an epoch wins after a resume) for epochs without a record: Tune syncs this file to remote storage,
    where the driver's records and rank 0's epoch files are not written."""
    rows: dict[tuple[str, int], dict] = {}
    for file in storage.glob(path, "trial-*/result.json"):
        try:
            lines = storage.read_text(file).splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(result, dict) or "epoch" not in result:
                continue
            trial_id = str(result.get("trial_id") or _component(file, 2)[len("trial-"):])
            if (trial_id, result["epoch"]) in recorded:
                continue
            tune = tune_trials.get(trial_id)
            row = record_row(trial_id, result.get("config") or (tune.config if tune else {}), result)
            row["time_recorded"] = result.get("timestamp")  # when Tune received it
            rows[(trial_id, row["epoch"])] = row
    return list(rows.values())


def read_table(path: Folder, tune_trials: dict[str, TuneTrial]) -> pa.Table:
    """One row per trial-epoch: the records (per-epoch files, else the consolidated table), then epochs only
    Tune's ``result.json`` or rank 0's epoch files hold; a ``source`` column says which. Sorted by (trial_id,
    epoch), no duplicates."""
    table = read_records(path)
    consolidated = storage.join(path, RECORDS_FILE)
    if table.num_rows == 0 and storage.is_file(consolidated) and not storage.is_dir(storage.join(path, RECORDS_DIR)):
        table = records.read_table(consolidated)
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
        path: ``<storage>/<name>`` of a sweep: a local folder or a URI.
        now: the time to judge staleness against (default: the clock); tests pass a later one.
    """
    try:
        path = folder(path)
    except ValueError as err:  # a URI that lost its '//' to pathlib, say
        raise NotAnExperimentError(str(err)) from None
    try:
        found = is_experiment_dir(path)
    except OSError as err:  # an unreachable store, a missing bucket, no credentials
        raise NotAnExperimentError(f"{path} cannot be read: {err}") from None
    if not found:
        raise NotAnExperimentError(f"{path} is not an experiment folder (no sweep.json, experiment_state-*.json "
                                   f"or {RECORDS_FILE})")
    tune_trials, tune_start = read_tune_state(path)
    table = read_table(path, tune_trials)
    exp = Experiment(path=path, sweep=_read_json(storage.join(path, "sweep.json")) or {}, tune_trials=tune_trials,
                     tune_start=tune_start, table=table,
                     summary=_read_json(storage.join(path, "final", "summary.json")))
    exp.frame = to_frame(table)
    exp.state, exp.state_reason = detect_state(exp, time.time() if now is None else now)
    return exp

