"""The files the analysis writes: ``leaderboard.csv``, ``results.parquet``, the plots (`orchestrator.analysis.plots`)
and ``compare.csv`` into the output folder, and the TensorBoard hparams view into the experiment's
``tensorboard/hparams/``. Every file is written atomically; the hparams view is swapped in whole."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from orchestrator.analysis.experiment import Experiment
from orchestrator.analysis.leaderboard import is_missing, param_keys
from orchestrator.io.atomic import write_bytes
from orchestrator.io.numbers import is_finite
from orchestrator.io.records import write_table

ANALYSIS_DIR = "analysis"
"""The default output folder, inside the experiment folder."""
HPARAMS_DIR = os.path.join("tensorboard", "hparams")


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
                         "stopped_early": r["stopped_early"], "reason": r["stop_reason"] or "",
                         "path": json.dumps(r["path"]) if r["path"] else "", "rates": r["rates"],
                         "genotype": r["genotype"] or ""})
    return write_bytes(path, buf.getvalue().encode("utf-8"))


def _csv(value: Any) -> Any:
    return "" if is_missing(value) else value


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
        scores = {k: float(v) for k, v in scores.items() if is_finite(v)}
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
    from orchestrator.analysis.plots import write_plots  # matplotlib, only when plots are drawn

    files = [write_leaderboard_csv(exp, rows, out / "leaderboard.csv")]
    if exp.table.num_rows:
        files.append(write_results(exp, rows, out / "results.parquet"))
        files += write_plots(exp, rows, out, top)
    return files


def write_compare_csv(rows: list[list[str]], names: tuple[str, str], path: Path) -> Path:
    """compare.csv: the facts of `orchestrator.analysis.cli.compare_rows`, one column per experiment."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *names])
    writer.writerows(rows)
    return write_bytes(path, buf.getvalue().encode("utf-8"))
