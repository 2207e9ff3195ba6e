"""The files the analysis writes: ``leaderboard.csv``, ``results.parquet``, the plots (`orchestrator.analysis.plots`)
and ``compare.csv`` into the output folder, and the TensorBoard hparams view into the experiment's
``tensorboard/hparams/``.

Either place may be a local folder or a URI: every file goes through `orchestrator.io.storage`, so each is
written atomically (local: temporary file and rename; object store: one whole-object PUT). A local hparams view
is swapped in whole (`_swap_dir`); an object store has no folder rename, so there the new view's files are
written one by one and the old view's other files removed after them (`_replace_remote_dir`)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from orchestrator.analysis.experiment import Experiment
from orchestrator.analysis.leaderboard import is_missing, param_keys
from orchestrator.io import storage
from orchestrator.io.atomic import write_bytes
from orchestrator.io.numbers import is_finite
from orchestrator.io.records import write_table

ANALYSIS_DIR = "analysis"
"""The default output folder, inside the experiment folder."""
HPARAMS_DIR = ("tensorboard", "hparams")
"""Where the hparams view goes, inside the experiment folder."""
Written = Path | str
"""Where a file was written: a `Path` for a local one, the URI for a remote one (as `orchestrator.io.storage`)."""


def write_leaderboard_csv(exp: Experiment, rows: list[dict[str, Any]], path: str | os.PathLike) -> Written:
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


def write_results(exp: Experiment, rows: list[dict[str, Any]], path: str | os.PathLike) -> Written:
    """results.parquet: the per-epoch table with each row's ``trial_status`` added (pyarrow, atomic)."""
    status = {r["trial_id"]: r["status"] for r in rows}
    ids = exp.table.column("trial_id").to_pylist()
    table = exp.table.append_column("trial_status", pa.array([status.get(t) for t in ids], pa.string()))
    return write_table(table, path)


def _hparam_value(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)


def write_hparams_view(exp: Experiment, rows: list[dict[str, Any]],
                       logdir: str | os.PathLike | None = None) -> Written:
    """A TensorBoard hparams view: one session per trial with records (its hyperparameters and ``trial``
    against final and best score, epochs, stopped early), in ``<experiment>/tensorboard/hparams/<trial_id>``.

    Written to a temporary folder and swapped in, so a rerun replaces the view instead of adding sessions (on an
    object store: written from a temporary local folder, then the old view's other objects removed, see the
    module docstring). No experiment-level summary is written: TensorBoard builds the view from the sessions,
    and Tune's own per-trial hparams summaries (``trial-*/``, last reported metrics of ended trials) keep theirs
    when TensorBoard is opened on the whole experiment folder.
    """
    logdir = logdir if logdir is not None else storage.join(exp.path, *HPARAMS_DIR)
    local = storage.local_path(logdir)
    if local is None:
        with tempfile.TemporaryDirectory(prefix="adl-hparams-") as tmp:  # tensorboardX writes local files
            _write_sessions(exp, rows, Path(tmp))
            _replace_remote_dir(Path(tmp), logdir)
        return os.fspath(logdir)
    dest = Path(local)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_sessions(exp, rows, tmp)
    _swap_dir(tmp, dest)
    return dest


def _write_sessions(exp: Experiment, rows: list[dict[str, Any]], logdir: Path) -> None:
    """One hparams session per trial with records, in ``logdir/<trial_id>``."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    metric = exp.metric
    for row in (r for r in rows if r["epochs"] > 0):
        hp = {"trial": row["trial_id"], **{k: _hparam_value(v) for k, v in row["config"].items()}}
        scores = {f"final/{metric}": row["final"], f"best/{metric}": row["best"], "epochs": float(row["epochs"]),
                  "stopped_early": float(row["stopped_early"])}
        scores = {k: float(v) for k, v in scores.items() if is_finite(v)}
        _, start, end = hparams(hp, scores)
        writer = SummaryWriter(logdir=str(logdir / row["trial_id"]))
        writer.file_writer.add_summary(start)
        writer.file_writer.add_summary(_session_end(end, row["status"]))
        for key, value in scores.items():
            writer.add_scalar(key, value, row["epochs"])
        writer.close()


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
    """Put the local folder ``new`` at ``dest``, replacing what was there (two renames; local paths only)."""
    new.mkdir(parents=True, exist_ok=True)
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _replace_remote_dir(new: Path, dest: str) -> None:
    """Put the files of the local folder ``new`` under the URI ``dest``, then remove the objects under ``dest``
    that were not rewritten. Not atomic as a whole (each object is): a reader in between sees the new files
    beside some old ones, never a half-written file. pyarrow leaves an empty ``<folder>/`` marker object where
    it deletes one (it keeps the folder "existing"); TensorBoard and `orchestrator.io.storage` ignore those."""
    old = set(storage.files_under(dest))
    written = set()
    for file in sorted(p for p in new.rglob("*") if p.is_file()):
        rel = file.relative_to(new).as_posix()
        storage.write_bytes(storage.join(dest, rel), file.read_bytes())
        written.add(rel)
    for rel in sorted(old - written):
        storage.delete(storage.join(dest, rel))


def write_outputs(exp: Experiment, rows: list[dict[str, Any]], out: str | os.PathLike, top: int) -> list[Written]:
    """leaderboard.csv, results.parquet and the plots in ``out`` (a local folder or a URI); returns the files
    written."""
    from orchestrator.analysis.plots import write_plots  # matplotlib, only when plots are drawn

    files = [write_leaderboard_csv(exp, rows, storage.join(out, "leaderboard.csv"))]
    if exp.table.num_rows:
        files.append(write_results(exp, rows, storage.join(out, "results.parquet")))
        files += write_plots(exp, rows, out, top)
    return files


def write_compare_csv(rows: list[list[str]], names: tuple[str, str], path: str | os.PathLike) -> Written:
    """compare.csv: the facts of `orchestrator.analysis.cli.compare_rows`, one column per experiment."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *names])
    writer.writerows(rows)
    return write_bytes(path, buf.getvalue().encode("utf-8"))
