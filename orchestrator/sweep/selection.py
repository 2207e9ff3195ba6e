"""Selection that does not trust the supernet alone (SEARCH_VALIDITY.md: weight sharing scrambles rankings):
the final step's top-k candidates are short-retrained as Tune trials with ASHA on the retrain mIoU, and the
winner gets the full retrain (``selection.top_k``, ``selection.short_epochs``).

A short retrain is the retrain section with ``retrain.epochs = selection.short_epochs``, at the experiment's
seed. The winner is the candidate that ran the most epochs (ASHA's survivor) with the highest mIoU there; ties
go to the better-ranked candidate. The table goes to ``final/selection.json``. Tune driver side: genotypes and
configs only.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from orchestrator.config import ExperimentConfig, with_overrides
from orchestrator.io.atomic import write_json
from orchestrator.sweep.retrain_trials import run_trials

SELECTION_FILE = "selection.json"


def pick_winner(rows: list[dict[str, Any]]) -> int:
    """Index of the row with the most epochs, then the highest finite mIoU, then the lowest rank."""
    def key(i: int) -> tuple:
        value = rows[i]["val_miou"]
        return (rows[i]["epochs"] or 0, value if math.isfinite(value) else -1.0, -i)

    return max(range(len(rows)), key=key)


def short_retrain_selection(cfg: ExperimentConfig, genotypes: list[dict], path: str) -> tuple[dict, dict]:
    """Short-retrain ``genotypes`` (dicts, best-ranked first) under ASHA in ``path``; returns the winner and the
    table written to ``<path>/../selection.json``."""
    s = cfg.selection
    short = with_overrides(cfg, {"retrain.epochs": s.short_epochs}, "selection.short_epochs")
    trials = [{"label": f"candidate-{i}", "genotype": g, "seed": cfg.runtime.seed} for i, g in enumerate(genotypes)]
    scheduler = ASHAScheduler(time_attr="epoch", max_t=s.short_epochs, grace_period=min(s.grace_period,
                              s.short_epochs), reduction_factor=s.reduction_factor)
    print(f"selection: short retrains ({s.short_epochs} epochs, ASHA) of the top {len(trials)} candidates",
          flush=True)
    metrics = run_trials(short, trials, path, scheduler, in_process=s.in_process)
    rows = []
    for trial in trials:
        m = metrics.get((trial["label"], trial["seed"]), {"val_miou": math.nan})
        rows.append({"label": trial["label"], "genotype": trial["genotype"], "path": trial["genotype"]["path"],
                     "val_miou": m["val_miou"], "epochs": m.get("epoch")})
    winner = pick_winner(rows)
    table = {"short_epochs": s.short_epochs, "winner": rows[winner]["label"], "candidates": rows}
    write_json(os.path.join(os.path.dirname(os.path.abspath(path)), SELECTION_FILE), table)
    for row in rows:
        mark = " <- winner" if row is rows[winner] else ""
        print(f"selection: {row['label']} path {row['path']} val_miou={row['val_miou']:.4f} after "
              f"{row['epochs']} epochs{mark}", flush=True)
    return rows[winner]["genotype"], table
