"""Per-epoch records of every trial, as Parquet: readable by pandas, polars and duckdb with no project code.

Layout: ``<experiment>/records/<trial_id>/epoch-<k>.parquet``, one row per file, and the consolidated
``<experiment>/records.parquet`` (one row per trial-epoch, sorted), rewritten after every record. The experiment
may be a local folder or a URI (``s3://bucket/prefix/<experiment>?...``): every file goes through
`orchestrator.io.storage`, so each is written atomically (local: temp file + rename; remote: one PUT). A record
is named by (trial, epoch), so a trial that resumes and reports epoch k again replaces its row instead of
duplicating it, and a crash never leaves a half-written file.
Read the table with ``pandas.read_parquet("<experiment>/records.parquet")``, polars or duckdb, or `read_records`.

Columns: ``trial_id``, ``epoch``, ``config/<dotted key>`` for each swept hyperparameter, every scalar metric,
``per_class_iou`` (list), ``alpha`` (edges x ops), ``beta`` (L x 4 x 3), ``genotype`` (JSON text), ``path``
(level per layer), the search diagnostics (``param_free_ops``, ``path_depth``, ``alpha_entropy``,
``beta_entropy``, ``beta_entropy_per_layer`` (list), ``end_level_probs`` (list, per level), ``genotype_changed``),
``time_recorded`` (unix seconds).
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.io import storage

RECORDS_DIR = "records"
RECORDS_FILE = "records.parquet"


def _clean(value: Any) -> Any:
    """Scalars, strings and (nested) lists of them pass; everything else becomes its string form."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return str(value)


def record_row(trial_id: str, hparams: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The row for one reported epoch: hyperparameters under ``config/``, metrics as reported."""
    row: dict[str, Any] = {"trial_id": trial_id, "epoch": int(metrics["epoch"])}
    for key, value in sorted(hparams.items()):
        row[f"config/{key}"] = _clean(value)
    for key, value in metrics.items():
        if key in ("epoch", "trial_id", "config") or key.startswith("config/"):
            continue
        if isinstance(value, dict):
            continue  # Tune bookkeeping; the flat keys carry the same facts
        row[key] = _clean(value)
    row["time_recorded"] = time.time()
    return row


def write_record(experiment_dir: str | os.PathLike, trial_id: str, hparams: dict[str, Any],
                 metrics: dict[str, Any]) -> Path | str:
    """Write (or replace) the record of ``metrics["epoch"]`` for ``trial_id``; returns records.parquet."""
    row = record_row(trial_id, hparams, metrics)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row]), buf)
    path = storage.join(experiment_dir, RECORDS_DIR, trial_id, f"epoch-{row['epoch']:05d}.parquet")
    storage.write_bytes(path, buf.getvalue())
    return write_table(read_records(experiment_dir), storage.join(experiment_dir, RECORDS_FILE))


def write_table(table: pa.Table, path: str | os.PathLike) -> Path | str:
    """Write an Arrow table to Parquet atomically, to a local path or a URI."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return storage.write_bytes(path, buf.getvalue())


def read_table(path: str | os.PathLike) -> pa.Table:
    """One Parquet file, from a local path or a URI."""
    fs, inner = storage.resolve(path)
    return pq.read_table(inner, filesystem=fs)


def read_records(experiment_dir: str | os.PathLike) -> pa.Table:
    """All records of an experiment as one table sorted by (trial_id, epoch); empty if there are none."""
    files = storage.glob(storage.join(experiment_dir, RECORDS_DIR), "*/epoch-*.parquet")
    if not files:
        return pa.table({"trial_id": pa.array([], pa.string()), "epoch": pa.array([], pa.int64())})
    tables = [read_table(f) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
