"""The one leaderboard of a sweep: a trial's status, the row both sides fill, the ranking and the text table.

Two readers build it from different sources: `orchestrator.analysis.trials` from an experiment folder (records,
Tune's state files) and `orchestrator.sweep.chain` from Tune's ResultGrid at the end of a sweep. Each extracts
the facts (error, diverged, epochs, metric); status, ranking and formatting live here, so both say the same.
Plain functions over plain dicts: no Ray, no pandas.

Status precedence, first match wins:

1. ``error``: the trial failed (Tune marked it ERROR). Tune's verdict on how the trial ended, with its
   traceback; it outranks everything the trial reported, a complete run included, because the sweep's
   `orchestrator.sweep.tune_driver.best_result` never picks a failed trial.
2. ``diverged``: the trial's last report says its search diverged (its ``stop_reason`` says why).
3. ``done``: it ran every epoch of the sweep.
4. ``pending`` / ``not started``: no epoch reported yet, while the sweep runs / after it stopped.
5. ``stopped early``: it ended (the scheduler stopped it) before the last epoch.
6. ``running`` / ``interrupted``: it has not ended; the sweep's state says which.

Ranking: trials that neither failed nor diverged and have a finite score, best first by ``mode``; then failed
or diverged trials with a finite score; then trials without one; ties by trial id. The first row is so the trial
the sweep retrains.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.io.numbers import finite_or_none, is_finite
from search_space.genotypes import RATES

STATUSES = ("error", "diverged", "done", "pending", "not started", "stopped early", "running", "interrupted")
FAILED = ("error", "diverged")
"""Statuses of trials the sweep never picks as its best."""


def trial_status(*, failed: bool, diverged: bool, epochs: int, max_epochs: int | None, ended: bool,
                 sweep_state: str = "finished") -> str:
    """A trial's status by the precedence of this module's docstring.

    Args:
        failed: Tune says the trial failed.
        diverged: the trial's last report says it diverged.
        epochs: the last epoch it reported (0: none).
        max_epochs: the sweep's epochs per trial; None when unknown.
        ended: Tune has ended the trial (or the whole sweep has finished).
        sweep_state: ``finished``, ``running`` or ``interrupted``.
    """
    if failed:
        return "error"
    if diverged:
        return "diverged"
    if max_epochs is not None and epochs >= max_epochs:
        return "done"
    if epochs == 0:
        return "pending" if sweep_state == "running" else "not started"
    if ended or sweep_state == "finished":
        return "stopped early"
    return sweep_state


def stop_reason(status: str, error: str | None, diverged: str | None) -> str | None:
    """Why a trial stopped, for the statuses that need a reason: the error's line or the divergence's reason."""
    return {"error": error, "diverged": diverged}.get(status) or None


def rates_text(path: list[int] | None) -> str:
    """``4 8 8 16``: the downsample rate of each layer of a decoded path (levels), or "" without one."""
    return " ".join(str(RATES[level]) for level in path) if path else ""


def leaderboard_row(trial_id: str, config: dict[str, Any], *, final: Any, epochs: int, status: str,
                    stop_reason: str | None = None, path: list[int] | None = None, best: Any = None,
                    best_epoch: int | None = None, genotype: str | None = None) -> dict[str, Any]:
    """The row both sides fill for one trial; scores that are not finite become None.

    Args:
        trial_id: Tune's trial id.
        config: the swept hyperparameters.
        final: the last reported score (what the sweep picks its best trial by).
        epochs: the last epoch reported.
        status: from `trial_status`.
        stop_reason: from `stop_reason`.
        path: the last decoded path (levels).
        best: the peak score, where the reader knows the trial's history.
        best_epoch: the epoch of ``best``.
        genotype: the last decoded genotype as JSON.
    """
    path = [int(level) for level in path] if isinstance(path, list | tuple) else None
    return {"trial_id": trial_id, "config": dict(config), "best": finite_or_none(best), "best_epoch": best_epoch,
            "final": finite_or_none(final), "epochs": int(epochs), "status": status,
            "stopped_early": status == "stopped early", "stop_reason": stop_reason, "path": path,
            "rates": rates_text(path), "genotype": genotype}


def rank_rows(rows: list[dict[str, Any]], mode: str, by: str = "final") -> list[dict[str, Any]]:
    """The rows sorted as this module's docstring says, each with its 1-based ``rank`` added.

    Args:
        rows: from `leaderboard_row`.
        mode: ``max`` or ``min``.
        by: ``final`` or ``best``.
    """
    sign = -1.0 if mode == "max" else 1.0

    def key(row: dict[str, Any]) -> tuple[int, float, str]:
        value = row[by]
        if not is_finite(value):
            return 2, 0.0, row["trial_id"]
        return (1 if row["status"] in FAILED else 0), sign * value, row["trial_id"]

    ranked = sorted(rows, key=key)
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return ranked


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: ``-`` for a missing value, floats to ``digits`` significant digits."""
    if is_missing(value):
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
    """The hyperparameter names of all rows, sorted."""
    return sorted({k for row in rows for k in row["config"]})


def leaderboard_text(rows: list[dict[str, Any]], metric: str, mode: str, rank_by: str = "final",
                     best: bool = True) -> str:
    """The ranked rows as an aligned table, a note on the order, then one line per trial that has a stop reason.

    Args:
        rows: from `rank_rows`.
        metric: the sweep's metric, for the headers.
        mode: ``max`` or ``min``, for the note.
        rank_by: what the rows were ranked by, for the note.
        best: show the peak-score columns (the Tune side knows only the last report).
    """
    keys = param_keys(rows)
    peak = [f"best {metric}", "@epoch"] if best else []
    headers = ["rank", "trial", *keys, *peak, f"final {metric}", "epochs", "status", "path"]
    body = [[str(r["rank"]), r["trial_id"], *(fmt(r["config"].get(k)) for k in keys),
             *([fmt(r["best"]), fmt(r["best_epoch"])] if best else []), fmt(r["final"]), str(r["epochs"]),
             r["status"], r["rates"] or "-"] for r in rows]
    order = "highest" if mode == "max" else "lowest"
    note = (f"ranked by {rank_by} {metric}, {order} first; path = downsample rate per layer of the last decoded "
            "genotype")
    reasons = "".join(f"\n{r['trial_id']} {r['status']}: {r['stop_reason']}" for r in rows if r["stop_reason"])
    return format_table(headers, body) + f"\n({note}){reasons}"
