"""Ranking a sweep's trials by what they are for: the architecture each found (``tune.rank_by: architecture``).

A sweep varies the search's outer hyperparameters (warmup, F, the architecture learning rate). Its trials' own
metric, the supernet's validation mIoU, rewards a larger or longer-trained supernet rather than a better
architecture. So, when more than one trial finished, each trial's decoded genotype is short-retrained the way
the selection step short-retrains candidates (``selection.short_epochs``, at ``runtime.seed``, ranked by
``selection.metric`` on the selection split) and the trial whose architecture ranks best is the sweep's pick;
its alpha and beta then feed the selection step. ASHA still stops weak trials early on the supernet's metric.
Trials that decoded the same genotype share one short retrain. The table goes to ``trial_ranking.json``.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.config import SELECTION_METRICS, ExperimentConfig, with_overrides
from orchestrator.io import storage
from orchestrator.io.atomic import write_json
from orchestrator.sweep.retrain_trials import genotype_key, run_trials
from search_space import Genotype

RANKING_FILE = "trial_ranking.json"


def decoded_genotypes(checkpoints: dict[str, str], max_param_free: int | None = None,
                      path: str = "viterbi") -> dict[str, Genotype]:
    """trial id -> the genotype decoded from its checkpoint's alpha and beta (the paper's decoding, with
    ``selection.max_param_free``; ``selection.path: supernet`` ranks by beta's Viterbi here)."""
    from orchestrator.sweep.final import BETA_DECODINGS, genotype_from_checkpoint

    path = path if path in BETA_DECODINGS else "viterbi"
    return {trial: genotype_from_checkpoint(p, max_param_free, path) for trial, p in checkpoints.items()}


def rank_trials(cfg: ExperimentConfig, checkpoints: dict[str, str], exp_dir: str) -> list[dict[str, Any]]:
    """Short-retrain each trial's decoded genotype (one retrain per distinct genotype) and return one row per
    trial, best first: trial id, genotype, the short retrain's metrics. Writes ``<exp_dir>/trial_ranking.json``."""
    s = cfg.selection
    genotypes = decoded_genotypes(checkpoints, s.max_param_free, s.path)
    distinct = {genotype_key(g): g for g in genotypes.values()}
    short = with_overrides(cfg, {"retrain.epochs": s.short_epochs, "retrain.eval_every": s.short_epochs},
                           "tune.rank_by: architecture")
    trials = [{"label": f"genotype-{key}", "genotype": g.to_dict(), "seed": cfg.runtime.seed}
              for key, g in distinct.items()]
    print(f"sweep ranking: short retrains ({s.short_epochs} epochs, {s.metric}) of the {len(distinct)} distinct "
          f"genotypes the {len(genotypes)} trials decoded", flush=True)
    metrics = run_trials(short, trials, storage.join(exp_dir, "trial_ranking"), in_process=s.in_process,
                         metric=s.metric)
    sign = 1.0 if SELECTION_METRICS[s.metric] == "max" else -1.0
    rows = []
    for trial, g in genotypes.items():
        m = metrics.get((f"genotype-{genotype_key(g)}", cfg.runtime.seed), {})
        value = m.get(s.metric, math.nan)
        rows.append({"trial_id": trial, "genotype": g.to_dict(), "path": list(g.path), s.metric: value,
                     "val_miou": m.get("val_miou"), "score": sign * value if math.isfinite(value) else -math.inf})
    rows.sort(key=lambda r: -r["score"])
    write_json(storage.join(exp_dir, RANKING_FILE), {"metric": s.metric, "short_epochs": s.short_epochs,
                                                     "trials": rows})
    for row in rows:
        print(f"sweep ranking: trial {row['trial_id']} path {row['path']} {s.metric}={row[s.metric]:.4f}",
              flush=True)
    return rows
