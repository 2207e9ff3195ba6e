"""Read an experiment folder without Ray: a leaderboard, the per-epoch table, plots and a TensorBoard hparams view.

    python -m orchestrator.analysis.cli RESULTS_DIR [--compare OTHER_DIR] [--out DIR] [--top K] [--rank-by final|best]

``RESULTS_DIR`` is ``<storage>/<name>`` of a sweep (finished, running or interrupted). The command prints the
experiment's state and why, a leaderboard (trial, hyperparameters, best and final supernet score, epochs run,
status, decoded path) and the final retrain result when ``final/summary.json`` exists, and writes into ``--out``
(default ``RESULTS_DIR/analysis/``): ``leaderboard.csv``, ``results.parquet`` (one row per trial-epoch) and the
PNG plots of `orchestrator.analysis.plots`. It also (re)writes ``RESULTS_DIR/tensorboard/hparams/``: one
TensorBoard hparams session per trial (`write_hparams_view`). Nothing else in the experiment folder is touched.

Sources, all plain files: ``sweep.json`` (status, metric, mode, epochs), the per-epoch records of
`orchestrator.io.records`, rank 0's ``train-<trial>/epochs/epoch-<k>.json`` for epochs the driver never recorded
(an interrupted sweep), Tune's ``experiment_state-*.json`` (trial status, trials without records) and
``final/summary.json``.

State: ``finished`` when sweep.json says so (or, without sweep.json, when Tune has every trial TERMINATED or
ERROR); otherwise ``running`` if the newest activity timestamp recorded *inside* the files (sweep.json
``updated``, the newest record's ``time_recorded``, Tune's start and last-result times) is younger than
``max(10 min, 3 x the longest epoch_seconds)``, else ``interrupted``. File modification times are not used:
copies and syncs change them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.io.atomic import write_bytes
from orchestrator.io.records import RECORDS_DIR, RECORDS_FILE, read_records, record_row, write_table
from search_space.genotypes import RATES, Genotype
from search_space.operations import PRIMITIVES

ANALYSIS_DIR = "analysis"
HPARAMS_DIR = os.path.join("tensorboard", "hparams")
STALE_FLOOR_S = 600.0
"""An experiment whose newest activity is older than this (or 3 epochs, if longer) is called interrupted: Tune
reports once per epoch, and start-up plus the first epoch of a small search fit in 10 minutes."""
STALE_EPOCHS = 3.0
TERMINAL = ("TERMINATED", "ERROR")


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
    """Everything read from one experiment folder; `load_experiment` builds it."""

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


# ---------------------------------------------------------------------------------------------------- reading


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


# ---------------------------------------------------------------------------------------------------- state


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} days"


def last_activity(exp: Experiment) -> tuple[float | None, str]:
    """The newest activity timestamp written inside the experiment's files, and which file it came from."""
    found = []
    if _finite(exp.sweep.get("updated")):
        found.append((float(exp.sweep["updated"]), "sweep.json 'updated'"))
    recorded = exp.frame[exp.frame["source"] != "epochs-json"] if "source" in exp.frame else exp.frame
    if "time_recorded" in recorded and recorded["time_recorded"].notna().any():
        found.append((float(recorded["time_recorded"].max()), "the newest record"))
    if _finite(exp.tune_start):
        found.append((float(exp.tune_start), "Tune's start time"))
    times = [t.last_result_time for t in exp.tune_trials.values() if _finite(t.last_result_time)]
    if times:
        found.append((max(times), "Tune's last result"))
    return max(found) if found else (None, "")


def stale_limit(exp: Experiment) -> float:
    """Seconds without activity after which a running sweep is taken for interrupted."""
    longest = exp.frame["epoch_seconds"].max() if "epoch_seconds" in exp.frame else float("nan")
    return max(STALE_FLOOR_S, STALE_EPOCHS * float(longest)) if _finite(longest) else STALE_FLOOR_S


def detect_state(exp: Experiment, now: float) -> tuple[str, str]:
    """``finished``, ``running`` or ``interrupted``, and a sentence saying how that was decided."""
    status = exp.sweep.get("status")
    if status == "finished":
        return "finished", "sweep.json says finished" + _retrain_note(exp)
    if not exp.sweep and exp.tune_trials and all(t.status in TERMINAL for t in exp.tune_trials.values()):
        return "finished", "no sweep.json; Tune's state has every trial TERMINATED or ERROR" + _retrain_note(exp)
    last, source = last_activity(exp)
    limit = stale_limit(exp)
    said = f"sweep.json says {status}" if status else "no sweep.json and Tune's state has unfinished trials"
    if last is None:
        return "interrupted", f"{said}, and no activity timestamp was found"
    age = max(0.0, now - last)
    rule = f"limit max(10 min, 3 x longest epoch) = {_age(limit)}"
    if age <= limit:
        return "running", f"{said}; last activity ({source}) {_age(age)} ago, within the {rule}"
    return "interrupted", (f"{said}; last activity ({source}) {_age(age)} ago, older than the {rule}; "
                           "continue it with the same command and --resume")


def _retrain_note(exp: Experiment) -> str:
    if exp.summary is None:
        return "; no final/summary.json (the final retrain was skipped, is still running or failed)"
    return "; final/summary.json holds the final retrain"


# ---------------------------------------------------------------------------------------------------- leaderboard


def trial_status(exp: Experiment, trial_id: str, epochs: int, max_epochs: int | None, diverged: bool = False) -> str:
    """diverged, done, error, stopped early (by the scheduler), running, interrupted, pending or not started.

    A trial failed when Tune's state says ERROR or, unless the sweep is running (and may be retrying it), when
    Tune left its ``error.txt``: Tune's state file can be older than the failure.
    """
    tune = exp.tune_trials.get(trial_id)
    failed = (exp.path / f"trial-{trial_id}" / "error.txt").is_file() and exp.state != "running"
    if diverged:
        return "diverged"
    if max_epochs is not None and epochs >= max_epochs:
        return "done"
    if failed or (tune is not None and tune.status == "ERROR"):
        return "error"
    if epochs == 0:
        return "pending" if exp.state == "running" else "not started"
    if (tune is not None and tune.status == "TERMINATED") or exp.state == "finished":
        return "stopped early"
    return exp.state  # running or interrupted


def _best(values: pd.Series, mode: str) -> tuple[float | None, int | None]:
    """The best finite value of a trial's metric and its position."""
    finite = values[values.map(_finite)]
    if finite.empty:
        return None, None
    index = finite.idxmax() if mode == "max" else finite.idxmin()
    return float(finite[index]), index


def _config_of(group: pd.DataFrame, tune: TuneTrial | None) -> dict[str, Any]:
    """The swept hyperparameters from a trial's records, else from Tune's state (a trial with no epoch yet)."""
    last = group.iloc[-1] if len(group) else {}
    config = {c[len("config/"):]: last[c] for c in group.columns if c.startswith("config/") and len(group)}
    config = {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items() if not _missing(v)}
    return config or (dict(tune.config) if tune else {})


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def trial_row(exp: Experiment, trial_id: str, max_epochs: int | None) -> dict[str, Any]:
    """One leaderboard row: hyperparameters, best and final score, epochs, status, the last decoded genotype."""
    frame = exp.frame
    group = frame[frame["trial_id"] == trial_id].sort_values("epoch") if not frame.empty else frame
    metric = exp.metric
    values = group[metric] if metric in group else pd.Series(dtype=float)
    best, index = _best(values, exp.mode)
    last = group.iloc[-1] if len(group) else None
    final = values.iloc[-1] if len(values) and _finite(values.iloc[-1]) else None
    epochs = int(group["epoch"].max()) if len(group) else 0
    path = list(last["path"]) if last is not None and isinstance(last.get("path"), list) else None
    diverged = last is not None and isinstance(last.get("diverged"), (bool, np.bool_)) and bool(last["diverged"])
    status = trial_status(exp, trial_id, epochs, max_epochs, diverged)
    return {
        "trial_id": trial_id, "config": _config_of(group, exp.tune_trials.get(trial_id)),
        "best": best, "best_epoch": int(group.loc[index, "epoch"]) if index is not None else None,
        "final": float(final) if final is not None else None, "epochs": epochs, "status": status,
        "stopped_early": status == "stopped early", "path": path,
        "rates": " ".join(str(RATES[level]) for level in path) if path else "",
        "genotype": last.get("genotype") if last is not None and isinstance(last.get("genotype"), str) else None,
        "reason": _reason(exp, trial_id, status, last),
    }


def _reason(exp: Experiment, trial_id: str, status: str, last: pd.Series | None) -> str:
    """Why a trial diverged (its ``stop_reason``) or failed (the last line of Tune's ``error.txt``)."""
    if status == "diverged" and last is not None and isinstance(last.get("stop_reason"), str):
        return last["stop_reason"]
    if status == "error":
        try:
            lines = (exp.path / f"trial-{trial_id}" / "error.txt").read_text(encoding="utf-8").strip().splitlines()
        except OSError:
            return "Tune marked the trial ERROR"
        return f"{lines[-1].strip()[:200]} (trial-{trial_id}/error.txt)" if lines else ""
    return ""


def rank_trials(exp: Experiment, rank_by: str = "final") -> list[dict[str, Any]]:
    """Every trial (recorded or only known to Tune), best first by its ``final`` (last reported, what the sweep
    picks its best trial by) or ``best`` score; trials without a score last. Adds ``rank``."""
    recorded = set(exp.frame["trial_id"]) if "trial_id" in exp.frame else set()
    ids = sorted(recorded | set(exp.tune_trials))
    seen = exp.frame["epoch"].max() if "epoch" in exp.frame and len(exp.frame) else None
    max_epochs = exp.max_epochs or (int(seen) if _finite(seen) else None)
    rows = [trial_row(exp, trial_id, max_epochs) for trial_id in ids]
    sign = -1.0 if exp.mode == "max" else 1.0
    rows.sort(key=lambda r: (0, sign * r[rank_by], r["trial_id"]) if _finite(r[rank_by]) else (1, 0.0, r["trial_id"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def _fmt(value: Any, digits: int = 4) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """An aligned text table: columns of numbers right-aligned, others left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def numeric(text: str) -> bool:
        return text.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit() or text == "-"

    right = [bool(rows) and all(numeric(r[i]) for r in rows) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) if r else h.ljust(w) for h, w, r in zip(headers, widths, right, strict=True))]
    for row in rows:
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines[0] = lines[0].rstrip()
    return "\n".join(lines)


def param_keys(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for row in rows for k in row["config"]})


def leaderboard_text(exp: Experiment, rows: list[dict[str, Any]], rank_by: str) -> str:
    """The leaderboard as an aligned table, ranked by ``rank_by``."""
    keys, metric = param_keys(rows), exp.metric
    headers = ["rank", "trial", *keys, f"best {metric}", "@epoch", f"final {metric}", "epochs", "status", "path"]
    body = [[str(r["rank"]), r["trial_id"], *(_fmt(r["config"].get(k)) for k in keys), _fmt(r["best"]),
             _fmt(r["best_epoch"]), _fmt(r["final"]), str(r["epochs"]), r["status"], r["rates"] or "-"]
            for r in rows]
    order = "highest" if exp.mode == "max" else "lowest"
    note = (f"ranked by {rank_by} {metric}, {order} first; path = downsample rate per layer of the last decoded "
            "genotype")
    reasons = "".join(f"\n{r['trial_id']} {r['status']}: {r['reason']}" for r in rows if r["reason"])
    return format_table(headers, body) + f"\n({note}){reasons}"


def cell_text(genotype: dict[str, Any] | Genotype) -> str:
    """``B1 = op(input) + op(input); ...`` for a genotype (object or its dict)."""
    cell = genotype.cell if isinstance(genotype, Genotype) else genotype["cell"]
    names = ["H(l-2)", "H(l-1)"] + [f"B{b + 1}" for b in range(len(cell))]
    return "; ".join(f"B{b + 1} = " + " + ".join(f"{op}({names[inp]})" for op, inp in block)
                     for b, block in enumerate(cell))


def final_text(exp: Experiment) -> str:
    """The final retrain result from final/summary.json, or a line saying there is none."""
    summary = exp.summary
    if summary is None:
        return "final retrain: none yet (no final/summary.json)"
    retrain, search = summary.get("retrain") or {}, summary.get("search") or {}
    genotype = summary.get("genotype") or {}
    hp = " ".join(f"{k}={_fmt(v)}" for k, v in sorted((summary.get("hyperparameters") or {}).items()))
    lines = [f"final retrain of trial {summary.get('best_trial')} ({hp or 'no swept keys'}; search "
             f"{search.get('metric', exp.metric)}={_fmt(search.get('value'))}):",
             f"  retrained {_fmt(retrain.get('epochs'))} epochs in {_fmt(retrain.get('seconds'))} s: "
             f"val_miou={_fmt(retrain.get('val_miou'))}"]
    if retrain.get("error"):
        lines.append(f"  error: {retrain['error']}")
    if genotype.get("path"):
        lines.append("  path (rates): " + " ".join(str(RATES[level]) for level in genotype["path"]))
    if genotype.get("cell"):
        lines.append("  cell: " + cell_text(genotype))
    return "\n".join(lines + selection_lines(summary))


def selection_lines(summary: dict[str, Any]) -> list[str]:
    """The short retrains of the final step's candidates (summary's ``selection.short_retrains``), if any."""
    table = ((summary.get("selection") or {}).get("short_retrains")) or {}
    rows = table.get("candidates") or []
    if not rows:
        return []
    body = [[r["label"] + (" (winner)" if r["label"] == table.get("winner") else ""),
             " ".join(str(RATES[level]) for level in r["path"]), _fmt(r.get("epochs")), _fmt(r.get("val_miou"))]
            for r in rows]
    return [f"  selection: {len(rows)} candidates short-retrained ({table.get('short_epochs')} epochs; "
            "candidate-0 is the decoded genotype):",
            "    " + format_table(["candidate", "path (rates)", "epochs", "val_miou"], body).replace("\n", "\n    ")]


DIAGNOSTIC_WINDOW = 5
"""The last epochs in which `diagnostics_text` counts genotype changes."""

UNSETTLED = 0.98
"""Alpha entropy above this fraction of uniform's: the op weights have not moved enough to mean anything."""


def diagnostics_text(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    """Per trial, the search's health at its last epoch: parameter-free ops in the decoded cell (DARTS
    collapse), alpha and beta entropy, the path's deepest rate, and how many of the last epochs changed the
    genotype; then how many distinct genotypes the trials (e.g. search seeds) ended with."""
    frame = exp.frame
    if frame.empty or "param_free_ops" not in frame:
        return ""
    body = []
    for row in rows:
        group = frame[frame["trial_id"] == row["trial_id"]].sort_values("epoch")
        if group.empty:
            continue
        last, recent = group.iloc[-1], group.tail(DIAGNOSTIC_WINDOW)
        changed = int(recent["genotype_changed"].fillna(False).astype(bool).sum()) if "genotype_changed" in recent \
            else None
        depth = last.get("path_depth")
        body.append([row["trial_id"], _fmt(last.get("param_free_ops")), _fmt(last.get("alpha_entropy"), 3),
                     _fmt(last.get("beta_entropy"), 3),
                     "-" if _missing(depth) else str(RATES[int(depth)]), f"{_fmt(changed)}/{len(recent)}"])
    genotypes = [r["genotype"] for r in rows if r.get("genotype")]
    table = format_table(["trial", "param-free ops", "alpha H", "beta H", "deepest rate",
                          "genotype changes (last epochs)"], body)
    text = (f"search diagnostics at each trial's last epoch:\n{table}\n{len(genotypes)} trials ended with "
            f"{len(set(genotypes))} distinct genotypes")
    uniform = math.log(len(PRIMITIVES))
    last_alpha = frame.sort_values("epoch").groupby("trial_id")["alpha_entropy"].last()
    if len(last_alpha) and bool((last_alpha > UNSETTLED * uniform).all()):
        text += (f"\nalpha entropy is within {100 * (1 - UNSETTLED):.0f}% of uniform (ln {len(PRIMITIVES)} = "
                 f"{uniform:.2f}) in every trial: alpha has barely moved, so the decoded cell is close to a random "
                 "draw (more arch steps, a larger search.arch_lr or a longer search move it)")
    return text


def validation_text(exp: Experiment) -> str:
    """The searched genotype against random ones, from the summary's ``validation`` (experiments/validate.py)."""
    v = (exp.summary or {}).get("validation")
    if not v:
        return ""
    lines = [f"validation ({v.get('file')}): {v['random_count']} random architectures retrain to mIoU "
             f"{_fmt(v['random_mean'])} +- {_fmt(v['random_sd'])}"]
    for s in v["searched"]:
        lines.append(f"  searched {s['experiment']}: {_fmt(s['mean'])} +- {_fmt(s['sd'])}, percentile "
                     f"{_fmt(s['percentile'], 3)} among the random ones")
    taus = ", ".join(_fmt(t, 2) for t in v.get("kendall_tau") or [])
    if taus:
        lines.append(f"  supernet ranking: Kendall tau {taus} (supernet score vs retrained mIoU)")
    return "\n".join(lines)


def header_text(exp: Experiment) -> str:
    trials = len(set(exp.frame["trial_id"])) if "trial_id" in exp.frame else 0
    return (f"experiment {exp.path}\nstate: {exp.state} ({exp.state_reason})\n"
            f"metric: {exp.metric} ({exp.mode}); epochs per trial: {_fmt(exp.max_epochs)}; "
            f"{len(exp.frame)} epoch records from {trials} trials; {len(exp.tune_trials)} trials in Tune's state")


# ---------------------------------------------------------------------------------------------------- outputs


def write_leaderboard_csv(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> Path:
    """leaderboard.csv: one row per trial in rank order; hyperparameters as ``config/<key>`` columns."""
    keys, metric = param_keys(rows), exp.metric
    fields = ["rank", "trial_id", *(f"config/{k}" for k in keys), f"best_{metric}", "best_epoch",
              f"final_{metric}", "epochs", "status", "stopped_early", "reason", "path", "rates", "genotype"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"rank": r["rank"], "trial_id": r["trial_id"],
                         **{f"config/{k}": r["config"].get(k, "") for k in keys},
                         f"best_{metric}": _csv(r["best"]), "best_epoch": _csv(r["best_epoch"]),
                         f"final_{metric}": _csv(r["final"]), "epochs": r["epochs"], "status": r["status"],
                         "stopped_early": r["stopped_early"], "reason": r["reason"],
                         "path": json.dumps(r["path"]) if r["path"] else "", "rates": r["rates"],
                         "genotype": r["genotype"] or ""})
    return write_bytes(path, buf.getvalue().encode("utf-8"))


def _csv(value: Any) -> Any:
    return "" if _missing(value) else value


def write_results(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> Path:
    """results.parquet: the per-epoch table with each row's ``trial_status`` added (pyarrow, atomic)."""
    status = {r["trial_id"]: r["status"] for r in rows}
    ids = exp.table.column("trial_id").to_pylist()
    table = exp.table.append_column("trial_status", pa.array([status.get(t) for t in ids], pa.string()))
    return write_table(table, path)


def _hparam_value(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)


def write_hparams_view(exp: Experiment, rows: list[dict[str, Any]], logdir: str | os.PathLike | None = None) -> Path:
    """A TensorBoard hparams view: one session per trial with records (its hyperparameters and ``trial``
    against final and best score, epochs, stopped early), in ``<experiment>/tensorboard/hparams/<trial_id>``.

    Written to a temporary folder and swapped in, so a rerun replaces the view instead of adding sessions. No
    experiment-level summary is written: TensorBoard builds the view from the sessions, and Tune's own per-trial
    hparams summaries (``trial-*/``, last reported metrics of ended trials) keep theirs when TensorBoard is
    opened on the whole experiment folder.
    """
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    logdir = Path(logdir) if logdir is not None else exp.path / HPARAMS_DIR
    tmp = logdir.parent / f".{logdir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    metric = exp.metric
    for row in (r for r in rows if r["epochs"] > 0):
        hp = {"trial": row["trial_id"], **{k: _hparam_value(v) for k, v in row["config"].items()}}
        scores = {f"final/{metric}": row["final"], f"best/{metric}": row["best"], "epochs": float(row["epochs"]),
                  "stopped_early": float(row["stopped_early"])}
        scores = {k: float(v) for k, v in scores.items() if _finite(v)}
        _, start, end = hparams(hp, scores)
        writer = SummaryWriter(logdir=str(tmp / row["trial_id"]))
        writer.file_writer.add_summary(start)
        writer.file_writer.add_summary(_session_end(end, row["status"]))
        for key, value in scores.items():
            writer.add_scalar(key, value, row["epochs"])
        writer.close()
    _swap_dir(tmp, logdir)
    return logdir


SESSION_STATUS = {"done": "STATUS_SUCCESS", "stopped early": "STATUS_SUCCESS", "error": "STATUS_FAILURE",
                  "diverged": "STATUS_FAILURE", "running": "STATUS_RUNNING"}
"""TensorBoard's session status for a trial status; anything else (interrupted, ...) is STATUS_UNKNOWN."""


def _session_end(summary: Any, status: str) -> Any:
    """tensorboardX's session-end summary (always STATUS_SUCCESS) with the trial's real status."""
    from tensorboardX.proto import api_pb2, plugin_hparams_pb2

    data = plugin_hparams_pb2.HParamsPluginData()
    data.ParseFromString(summary.value[0].metadata.plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(SESSION_STATUS.get(status, "STATUS_UNKNOWN"))
    summary.value[0].metadata.plugin_data.content = data.SerializeToString()
    return summary


def _swap_dir(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest``, replacing what was there."""
    new.mkdir(parents=True, exist_ok=True)
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def write_outputs(exp: Experiment, rows: list[dict[str, Any]], out: Path, top: int) -> list[Path]:
    """leaderboard.csv, results.parquet and the plots in ``out``; returns the files written."""
    from orchestrator.analysis.plots import write_plots

    files = [write_leaderboard_csv(exp, rows, out / "leaderboard.csv")]
    if exp.table.num_rows:
        files.append(write_results(exp, rows, out / "results.parquet"))
        files += write_plots(exp, rows, out, top)
    return files


# ---------------------------------------------------------------------------------------------------- command


@dataclass
class Analysis:
    """What `analyze` read and wrote for one experiment."""

    experiment: Experiment
    rows: list[dict[str, Any]]
    files: list[Path]
    text: str


def analyze(path: str | os.PathLike, out: str | os.PathLike | None = None, top: int = 3, rank_by: str = "final",
            now: float | None = None, hparams_view: bool = True) -> Analysis:
    """Read one experiment, write its outputs into ``out`` (default ``<path>/analysis``) and return the report.

    Args:
        path: the experiment folder.
        out: where leaderboard.csv, results.parquet and the plots go.
        top: draw alpha, beta and paths for this many best trials (0: all).
        rank_by: ``final`` (last reported score, as the sweep picks its best trial) or ``best`` (peak score).
        now: judge running/interrupted against this time (default: the clock).
        hparams_view: also (re)write the TensorBoard hparams view in ``<path>/tensorboard/hparams``.
    """
    exp = load_experiment(path, now)
    rows = rank_trials(exp, rank_by)
    parts = [header_text(exp)]
    if exp.table.num_rows == 0:
        known = "; Tune knows the trials listed below" if exp.tune_trials else ""
        parts.append("no epoch records yet (no records/, trial-*/result.json or train-*/epochs/ entries): nothing "
                     f"to plot{known}")
    parts += [leaderboard_text(exp, rows, rank_by) if rows else "", diagnostics_text(exp, rows), final_text(exp),
              validation_text(exp)]
    out = Path(out) if out is not None else exp.path / ANALYSIS_DIR
    files = write_outputs(exp, rows, out, top)
    parts.append(f"wrote to {out}: " + ", ".join(os.path.relpath(f, out) for f in files))
    if hparams_view and exp.table.num_rows:
        try:
            files.append(write_hparams_view(exp, rows))
            parts[-1] += f"\nTensorBoard hparams view: tensorboard --logdir {files[-1]}"
        except OSError as err:
            parts.append(f"warning: no TensorBoard hparams view ({err})")
    return Analysis(exp, rows, files, "\n\n".join(p for p in parts if p))


def _best_row(analysis: Analysis) -> dict[str, Any] | None:
    top = analysis.rows[0] if analysis.rows else None
    return top if top is not None and (top["final"] is not None or top["best"] is not None) else None


def compare_rows(a: Analysis, b: Analysis) -> list[list[str]]:
    """Side-by-side facts of two experiments: state, best trial and score, final retrain, decoded genotype."""
    def facts(an: Analysis) -> dict[str, str]:
        exp, best, summary = an.experiment, _best_row(an), an.experiment.summary or {}
        genotype = summary.get("genotype") or (json.loads(best["genotype"]) if best and best["genotype"] else {})
        return {
            "state": exp.state, "trials": str(len(an.rows)), "metric": f"{exp.metric} ({exp.mode})",
            "best trial": best["trial_id"] if best else "-",
            "hyperparameters": " ".join(f"{k}={_fmt(v)}" for k, v in sorted(best["config"].items())) if best else "-",
            "final score": _fmt(best["final"]) if best else "-", "best score": _fmt(best["best"]) if best else "-",
            "epochs": str(best["epochs"]) if best else "-",
            "retrain val_miou": _fmt((summary.get("retrain") or {}).get("val_miou")),
            "path (rates)": " ".join(str(RATES[v]) for v in genotype["path"]) if genotype.get("path") else "-",
            "cell": cell_text(genotype) if genotype.get("cell") else "-",
        }

    fa, fb = facts(a), facts(b)
    same = "-" if "-" in (fa["cell"], fb["cell"]) else (
        "yes" if (fa["cell"], fa["path (rates)"]) == (fb["cell"], fb["path (rates)"]) else "no")
    return [[key, fa[key], fb[key]] for key in fa] + [["same genotype", same, same]]


def write_compare_csv(rows: list[list[str]], names: tuple[str, str], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *names])
    writer.writerows(rows)
    return write_bytes(path, buf.getvalue().encode("utf-8"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="the experiment folder, <storage>/<name>")
    parser.add_argument("--compare", metavar="OTHER_DIR", help="a second experiment to compare with")
    parser.add_argument("--out", metavar="DIR", help="output folder; default RESULTS_DIR/analysis (with --compare, "
                                                     "the other experiment's go to DIR/compare-<name>)")
    parser.add_argument("--top", type=int, default=3, help="alpha/beta/path plots for the K best trials (0: all)")
    parser.add_argument("--rank-by", choices=("final", "best"), default="final",
                        help="rank by the last reported score (default, as the sweep picks) or the peak score")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        first = analyze(args.results_dir, args.out, args.top, args.rank_by)
        print(first.text, flush=True)
        if args.compare:
            other_out = Path(args.out) / f"compare-{Path(args.compare).name}" if args.out else None
            second = analyze(args.compare, other_out, args.top, args.rank_by)
            print("\n" + "=" * 100 + "\n\n" + second.text, flush=True)
            rows = compare_rows(first, second)
            names = (str(first.experiment.path), str(second.experiment.path))
            out = Path(args.out) if args.out else first.experiment.path / ANALYSIS_DIR
            written = write_compare_csv(rows, names, out / "compare.csv")
            print("\n" + format_table(["", first.experiment.name, second.experiment.name], rows)
                  + f"\n\nwrote: {written}", flush=True)
    except NotAnExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the analysis: {err}; pass --out to write elsewhere", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
