"""The whole chain a user runs: the Tune sweep, a leaderboard, then the final actor that decodes the best
trial and retrains it. This module orchestrates; the sweep (`orchestrator.sweep.tune_driver`) and the final step
(`orchestrator.sweep.final`) do the work.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from orchestrator.analysis.leaderboard import (
    leaderboard_row,
    leaderboard_text,
    rank_rows,
    stop_reason,
    trial_status,
)
from orchestrator.config import ExperimentConfig, config_to_dict, with_overrides
from orchestrator.io import storage
from orchestrator.io.checkpointing import latest_checkpoint_dir
from orchestrator.io.numbers import is_finite
from orchestrator.io.paths import absolute, is_remote
from orchestrator.sweep.final import FinalActor
from orchestrator.sweep.selection import choose_architecture
from orchestrator.sweep.tune_driver import best_result, experiment_dir, run_sweep, trial_id_of


class SweepFailedError(RuntimeError):
    """No trial of the sweep finished with a usable metric (all failed or diverged)."""


def _status(result, cfg: ExperimentConfig) -> tuple[str, str | None]:
    """A trial's status for the leaderboard (`orchestrator.analysis.leaderboard.trial_status` on the facts of its
    Tune result: every trial of a returned grid has ended), and why it stopped when it failed or diverged."""
    m = result.metrics or {}
    error = str(result.error).strip() if result.error else ""
    status = trial_status(failed=result.error is not None, diverged=bool(m.get("diverged")),
                          epochs=int(m.get("epoch") or 0), max_epochs=cfg.search.epochs, ended=True)
    return status, stop_reason(status, error.splitlines()[0][:200] if error else None, m.get("stop_reason"))


def leaderboard(grid, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """One `orchestrator.analysis.leaderboard` row per trial, ranked as there (by the last reported metric):
    hyperparameters, metric, epochs, status, decoded path and the reason a trial failed or diverged."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        status, reason = _status(r, cfg)
        rows.append(leaderboard_row(trial_id_of(r) or "?", r.config or {}, final=m.get(cfg.tune.metric),
                                    epochs=int(m.get("epoch") or 0), status=status, stop_reason=reason,
                                    path=m.get("path")))
    return rank_rows(rows, cfg.tune.mode)


def print_leaderboard(rows: list[dict[str, Any]], metric: str, mode: str = "max") -> None:
    """The rows as `orchestrator.analysis.leaderboard.leaderboard_text` lays them out (without peak scores)."""
    print("\n" + leaderboard_text(rows, metric, mode, best=False), flush=True)


def _checkpoint_of(result, exp_dir: str) -> str:
    """The best trial's last checkpoint: the path Tune's report carries on local storage; on a URI the newest
    checkpoint folder of the trial's Train run (Ray reports a path inside the bucket, without scheme or query)."""
    path = (result.metrics or {}).get("checkpoint_path")
    if path and not is_remote(exp_dir):
        return path
    run = storage.join(exp_dir, f"train-{trial_id_of(result)}")
    latest = latest_checkpoint_dir(run)
    if latest is None:
        raise SweepFailedError(f"the best trial {trial_id_of(result)} left no checkpoint in {run}")
    return str(latest)


def run_experiment(cfg: ExperimentConfig, storage_path: str, name: str, resume: bool = False,
                   retrain: bool = True, final_retrain: bool = True) -> dict[str, Any]:
    """Sweep, then choose the architecture (decode, and short-retrain the candidates when ``selection.top_k > 1``)
    and retrain it on a `FinalActor`; returns the final summary. ``retrain=False`` stops after the sweep;
    ``final_retrain=False`` after the choice (``final/choice.json``), as validation's arms do."""
    start = time.time()
    grid = run_sweep(cfg, storage_path, name, resume=resume)
    search_seconds = round(time.time() - start, 1)
    rows = leaderboard(grid, cfg)
    print_leaderboard(rows, cfg.tune.metric, cfg.tune.mode)
    best = best_result(grid, cfg.tune.metric, cfg.tune.mode)
    if best is None:
        errors = [f"{row['trial_id']}: {row['status']}" + (f" ({row['stop_reason']})" if row["stop_reason"] else "")
                  for row in rows]
        raise SweepFailedError(
            f"no trial of the sweep {experiment_dir(storage_path, name)} reported a finite {cfg.tune.metric}, so "
            f"there is no architecture to retrain. Trials: {'; '.join(errors) or 'none'}. Failed trials keep an "
            "error.txt in their trial-<id> folder; diverged ones need a smaller search.lr or search.arch_lr.")
    exp_dir = experiment_dir(absolute(storage_path), name)
    start = time.time()
    best = _by_architecture(cfg, grid, exp_dir, best)
    ranking_seconds = round(time.time() - start, 1)  # the trials' short retrains (tune.rank_by: architecture)
    facts = {
        "trial_id": best.metrics.get("trial_id"),
        "config": dict(best.config),
        "metric_value": best.metrics[cfg.tune.metric],
        "checkpoint_path": _checkpoint_of(best, exp_dir),
        "search_seconds": search_seconds,
        "ranking_seconds": ranking_seconds,
    }
    print(f"\nbest trial {facts['trial_id']}: {cfg.tune.metric}={facts['metric_value']:.4f} {facts['config']}",
          flush=True)
    if not retrain:
        return {"best_trial": facts["trial_id"], "search": facts}
    best_cfg = with_overrides(cfg, dict(best.config), f"best trial {facts['trial_id']}")
    actor = FinalActor.remote()
    try:
        choice = choose_architecture(actor, best_cfg, exp_dir, facts)
        if not final_retrain:
            return {"best_trial": facts["trial_id"], "search": facts, "choice": choice}
        summary = ray.get(actor.run.remote(config_to_dict(best_cfg), exp_dir, facts, choice["selected"],
                                           choice["short_retrains"]))
    finally:
        ray.kill(actor)
    return _validate_in_chain(cfg, exp_dir, summary)


def _by_architecture(cfg: ExperimentConfig, grid, exp_dir: str, best):
    """With ``tune.rank_by: architecture`` and more than one usable trial, the trial whose decoded genotype
    short-retrains best (`orchestrator.sweep.ranking`); else ``best`` (the supernet's metric)."""
    ok = [r for r in grid if r.error is None and r.metrics and not r.metrics.get("diverged")
          and is_finite(r.metrics.get(cfg.tune.metric))]
    if cfg.tune.rank_by != "architecture" or len(ok) < 2:
        return best
    from orchestrator.sweep.ranking import rank_trials

    rows = rank_trials(cfg, {trial_id_of(r): _checkpoint_of(r, exp_dir) for r in ok}, exp_dir)
    return next(r for r in ok if trial_id_of(r) == rows[0]["trial_id"])


def _validate_in_chain(cfg: ExperimentConfig, exp_dir: str, summary: dict[str, Any]) -> dict[str, Any]:
    v = cfg.validation
    if v.random > 0:
        from orchestrator.sweep.validation import validate_experiments

        print(f"\nvalidation: the searched genotype against {v.random} random ones", flush=True)
        result = validate_experiments([exp_dir], storage.join(exp_dir, "final"), v.random, v.seeds, v.random_seeds,
                                      v.sample_seed)
        summary["validation_result"] = result
    return summary
