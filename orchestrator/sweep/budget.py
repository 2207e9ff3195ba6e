"""Searches at a given number of architecture steps, for the studies of whether (and when) the supernet learns.

One search (Ray Train, no Tune) per (budget, seed, overrides): the config with ``runtime.seed`` and as many
epochs after the warmup as the budget of Adam steps on alpha and beta needs (``search.epochs = warmup +
ceil(budget / steps per epoch)``). The run is named by budget, seed and a hash of its whole config (the config
file, the study's command-line overrides and its own), so running the same study again reuses the finished runs,
and a changed setting names a new run instead of resuming one made with another. Its per-epoch records
(`orchestrator.train.worker.record_epoch`) hold everything the studies read: alpha and beta entropy, their
gradient norms, the decoded path and cell.
"""

from __future__ import annotations

import json
import math
from typing import Any

from orchestrator.config import ExperimentConfig, config_hash, with_overrides
from orchestrator.train.trainers import read_epochs, run_dir, run_single_search


def steps_per_epoch(cfg: ExperimentConfig) -> int:
    """Search steps per epoch: trainA (the larger half of the training split) over the global batch, capped by
    ``search.max_steps_per_epoch``; for a dataset whose size the config gives (the synthetic task)."""
    from orchestrator.data.roles import role_dataset

    train = role_dataset(cfg.data, "train", train=True, crop_size=cfg.data.crop_size)
    steps = ((len(train) + 1) // 2) // (cfg.data.batch_size * cfg.scaling.num_workers)
    cap = cfg.search.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def budget_config(cfg: ExperimentConfig, arch_steps: int, seed: int) -> ExperimentConfig:
    """``cfg`` at ``seed`` with the epochs that give at least ``arch_steps`` architecture steps."""
    per_epoch = steps_per_epoch(cfg)
    epochs = cfg.search.warmup_epochs + max(1, math.ceil(arch_steps / per_epoch))
    return with_overrides(cfg, {"runtime.seed": seed, "search.epochs": epochs}, f"budget {arch_steps} seed {seed}")


def run_name(arch_steps: int, seed: int, run_cfg: ExperimentConfig) -> str:
    """``b<steps>-<hash of the run's config>-seed<seed>``."""
    return f"b{arch_steps}-{config_hash(run_cfg, 6)}-seed{seed}"


def search_at_budget(cfg: ExperimentConfig, arch_steps: int, seed: int, out: str,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) one search; returns its per-epoch records, the decoded genotype and the arch steps done."""
    run_cfg = budget_config(with_overrides(cfg, overrides or {}, "study overrides"), arch_steps, seed)
    name = run_name(arch_steps, seed, run_cfg)
    directory = run_dir(out, name)
    epochs = read_epochs(directory)
    if not epochs or epochs[-1]["epoch"] < run_cfg.search.epochs:
        print(f"study: search {name} ({run_cfg.search.epochs} epochs, {run_cfg.search.warmup_epochs} of warmup)",
              flush=True)
        run_single_search(run_cfg, out, name)
        epochs = read_epochs(directory)
    per_epoch = steps_per_epoch(run_cfg)
    return {"name": name, "run_dir": str(directory), "arch_steps": arch_steps, "seed": seed,
            "overrides": overrides or {}, "epochs": epochs, "steps_per_epoch": per_epoch,
            "arch_steps_done": sum(per_epoch for e in epochs if e.get("arch_updates")),
            "genotype": json.loads(epochs[-1]["genotype"]) if epochs else None,
            "seconds": sum(float(e.get("epoch_seconds") or 0.0) for e in epochs)}
