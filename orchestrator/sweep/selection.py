"""Selection that does not trust the supernet alone (docs/notes/search-validity.md: weight sharing scrambles rankings):
the final step's top-k candidates are short-retrained as Tune trials with ASHA on ``selection.metric`` (the
retrain mIoU, or the training loss: a training-speed estimate, Ru et al. 2021), and the winner gets the full
retrain (``selection.top_k``, ``selection.short_epochs``, ``selection.seeds``: a candidate ranks by the mean over
its seeds). `choose_architecture` is the whole decision: the best trial's candidates (the decoded genotype first),
their short retrains when ``selection.top_k > 1``, and ``final/choice.json``.

A short retrain is the retrain section with ``retrain.epochs = selection.short_epochs``, at the experiment's
seed and the ``selection.seeds - 1`` after it. The winner is the candidate that ran the most epochs (ASHA's
survivor) with the best metric there; ties go to the better-ranked candidate. The table goes to
``final/selection.json``. Tune driver side: genotypes and configs only.
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray
from ray.tune.schedulers import ASHAScheduler

from orchestrator.config import SELECTION_METRICS, ExperimentConfig, config_to_dict, with_overrides
from orchestrator.io import storage
from orchestrator.io.atomic import write_json
from orchestrator.io.numbers import finite_or_nan
from orchestrator.io.paths import absolute
from orchestrator.sweep.retrain_trials import run_trials

SELECTION_FILE = "selection.json"
REPORTED = ("val_miou", "val_loss", "train_loss")  # each candidate's row in selection.json


def pick_winner(rows: list[dict[str, Any]], metric: str = "val_miou") -> int:
    """Index of the row with the most epochs, then the best finite ``metric`` (its direction from
    SELECTION_METRICS), then the lowest rank."""
    sign = 1.0 if SELECTION_METRICS[metric] == "max" else -1.0

    def key(i: int) -> tuple:
        value = rows[i].get(metric, math.nan)
        return (rows[i]["epochs"] or 0, sign * value if math.isfinite(value) else -math.inf, -i)

    return max(range(len(rows)), key=key)


def candidate_rows(trials: list[dict[str, Any]], metrics: dict[tuple[str, int], dict[str, Any]]) -> list[dict]:
    """One row per candidate (``trials`` in rank order, a candidate's seeds adjacent): each REPORTED metric is the
    mean over its seeds (NaN when any seed failed), ``epochs`` the fewest any seed ran, ``seeds`` each seed's
    metrics."""
    rows: dict[str, dict[str, Any]] = {}
    for trial in trials:
        m = metrics.get((trial["label"], trial["seed"]), {})
        row = rows.setdefault(trial["label"], {"label": trial["label"], "genotype": trial["genotype"],
                                               "path": trial["genotype"]["path"], "seeds": {}})
        row["seeds"][str(trial["seed"])] = {**{k: finite_or_nan(m.get(k)) for k in REPORTED},
                                            "epochs": m.get("epoch")}
    for row in rows.values():
        runs = list(row["seeds"].values())
        for k in REPORTED:
            row[k] = finite_or_nan(sum(r[k] for r in runs) / len(runs))
        ran = [r["epochs"] for r in runs]
        row["epochs"] = None if None in ran else min(ran)
    return list(rows.values())


def short_retrain_selection(cfg: ExperimentConfig, genotypes: list[dict], path: str) -> tuple[dict, dict]:
    """Short-retrain ``genotypes`` (dicts, best-ranked first), ``selection.seeds`` times each, under ASHA in
    ``path``; returns the winner and the table written to ``<path>/../selection.json``."""
    s = cfg.selection
    # val_* at ASHA's rungs (multiples of the grace period) and the last epoch only: the selection split is
    # large enough to rank well, and evaluating it every epoch would cost more than the short retrains' steps
    short = with_overrides(cfg, {"retrain.epochs": s.short_epochs,
                                 "retrain.eval_every": min(s.grace_period, s.short_epochs)}, "selection.short_epochs")
    trials = [{"label": f"candidate-{i}", "genotype": g, "seed": cfg.runtime.seed + j}
              for i, g in enumerate(genotypes) for j in range(s.seeds)]
    scheduler = ASHAScheduler(time_attr="epoch", max_t=s.short_epochs, grace_period=min(s.grace_period,
                              s.short_epochs), reduction_factor=s.reduction_factor)
    print(f"selection: short retrains ({s.short_epochs} epochs, {s.seeds} seed(s) each, ASHA on {s.metric}) of "
          f"the top {len(genotypes)} candidates", flush=True)
    rows = candidate_rows(trials, run_trials(short, trials, path, scheduler, in_process=s.in_process,
                                             metric=s.metric))
    winner = pick_winner(rows, s.metric)
    table = {"short_epochs": s.short_epochs, "seeds": s.seeds, "metric": s.metric, "winner": rows[winner]["label"],
             "candidates": rows}
    write_json(storage.join(storage.parent(absolute(path)), SELECTION_FILE), table)
    for row in rows:
        mark = " <- winner" if row is rows[winner] else ""
        shown = " ".join(f"{k}={row[k]:.4f}" for k in REPORTED)
        print(f"selection: {row['label']} path {row['path']} {shown} after {row['epochs']} epochs{mark}",
              flush=True)
    return rows[winner]["genotype"], table


CHOICE_FILE = "choice.json"
"""``final/choice.json``: the decoded genotype, the one the final step chose, and the time each stage took."""


def choose_architecture(actor: Any, cfg: ExperimentConfig, exp_dir: str, facts: dict[str, Any]) -> dict[str, Any]:
    """The candidates of the best trial (``candidates[0]`` is the decoded one), short-retrained when
    ``selection.top_k > 1``; writes and returns ``final/choice.json``."""
    start = time.time()
    ranked = ray.get(actor.candidates.remote(config_to_dict(cfg), exp_dir, facts))
    genotype, selection = ranked[0], None
    if cfg.selection.top_k > 1 and len(ranked) > 1:
        genotype, selection = short_retrain_selection(cfg, ranked[:cfg.selection.top_k],
                                                      storage.join(exp_dir, "final", "selection"))
    choice = {"decoded": ranked[0], "selected": genotype, "candidates": len(ranked[:cfg.selection.top_k]),
              "search_seconds": facts["search_seconds"], "ranking_seconds": facts.get("ranking_seconds", 0.0),
              "selection_seconds": round(time.time() - start, 1),
              "best_trial": facts["trial_id"], "checkpoint": facts["checkpoint_path"], "short_retrains": selection}
    write_json(storage.join(exp_dir, "final", CHOICE_FILE), choice)
    return choice
