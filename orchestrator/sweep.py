"""The Ray Tune sweep over the search's outer hyperparameters (warmup epoch, F, architecture learning rate,
or any config key), with ASHA early stopping on validation mIoU.

Train V2 pattern (RAY_NOTES.md): each trial is a Tune *function* trainable, `search_trial`, that builds and
fits a `TorchTrainer` running the per-worker search loop; metrics reach Tune through `TuneReportCallback`.
The trial's Train run is named ``train-<trial_id>`` so a restored sweep resumes each trial's own checkpoints.
This module knows nothing about the model: it maps config keys to Tune samplers, budgets resources, records
every reported epoch (`orchestrator.records`) and prints progress.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestrator.atomic import write_json
from orchestrator.config import ExperimentConfig, config_from_dict, config_hash, config_to_dict, with_overrides
from orchestrator.records import write_record
from orchestrator.run_search import ResourceError, make_trainer

EPOCH_ATTR = "epoch"
"""ASHA's time attribute: the search loop's finished-epoch count (training_iteration restarts on restore)."""


def tune_param_space(param_space: dict[str, dict]) -> dict[str, Any]:
    """Config's ``tune.param_space`` (dotted key -> {kind: values}) as Tune search-space objects."""
    makers = {
        "grid": lambda v: tune.grid_search(list(v)),
        "choice": lambda v: tune.choice(list(v)),
        "uniform": lambda v: tune.uniform(v[0], v[1]),
        "loguniform": lambda v: tune.loguniform(v[0], v[1]),
    }
    return {key: makers[kind](values) for key, spec in param_space.items() for kind, values in spec.items()}


def _largest_swept(cfg: ExperimentConfig, key: str, current: float) -> float:
    spec = cfg.tune.param_space.get(key)
    if not spec:
        return current
    kind, values = next(iter(spec.items()))
    return max(values) if kind in ("grid", "choice", "uniform", "loguniform") else current


def trial_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What one trial occupies at once: its driver plus its Train workers (Tune does not count the latter)."""
    workers = _largest_swept(cfg, "scaling.num_workers", cfg.scaling.num_workers)
    cpus = _largest_swept(cfg, "scaling.cpus_per_worker", cfg.scaling.cpus_per_worker)
    need = {"CPU": cfg.tune.trial_cpus + workers * cpus}
    if cfg.scaling.use_gpu:
        need["GPU"] = workers * cfg.scaling.gpus_per_worker
    return need


def check_resources(cfg: ExperimentConfig, cluster: dict[str, float], node_cpus: list[float]) -> int:
    """How many trials run at once; raises ResourceError when not even one trial's resources fit.

    Args:
        cfg: the experiment config.
        cluster: total resources of the cluster (``ray.cluster_resources()``).
        node_cpus: CPUs of each alive node: a single worker must fit on one node.
    """
    need = trial_resources(cfg)
    per_worker = _largest_swept(cfg, "scaling.cpus_per_worker", cfg.scaling.cpus_per_worker)
    fits = min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    biggest_node = max(node_cpus, default=0.0)
    if fits < 1 or per_worker > biggest_node:
        have = ", ".join(f"{k}={cluster.get(k, 0.0):g}" for k in need)
        want = ", ".join(f"{k}={v:g}" for k, v in need.items())
        raise ResourceError(
            f"one trial needs {want} (tune.trial_cpus={cfg.tune.trial_cpus:g} + scaling.num_workers x "
            f"scaling.cpus_per_worker{' and GPUs per worker' if cfg.scaling.use_gpu else ''}; each worker on one "
            f"node, largest node has CPU={biggest_node:g}), but the cluster has {have}. Lower scaling.num_workers "
            "or scaling.cpus_per_worker, set scaling.use_gpu=false, or add nodes; Ray would otherwise wait forever."
        )
    limit = cfg.tune.max_concurrent_trials
    return min(fits, limit) if limit > 0 else fits


def search_trial(config: dict[str, Any], base: dict[str, Any], storage_path: str) -> None:
    """One trial: the base config with this trial's sampled keys, searched by a TorchTrainer."""
    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(config_from_dict(base, "sweep base config"), dict(config), f"trial {trial_id}")
    trainer = make_trainer(cfg, storage_path=storage_path, name=f"train-{trial_id}",
                           callbacks=[TuneReportCallback()])
    trainer.fit()


class EpochReporter(tune.Callback):
    """One line per epoch per trial on stdout, and the epoch's record in the experiment's Parquet table."""

    def __init__(self, experiment_dir: str, epochs: int):
        self.experiment_dir = experiment_dir
        self.epochs = epochs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if EPOCH_ATTR not in result:
            return
        write_record(self.experiment_dir, trial.trial_id, dict(trial.config), result)
        hp = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.config.items()))
        print(f"[{trial.trial_id}] epoch {result[EPOCH_ATTR]}/{self.epochs} "
              f"val_miou={_fmt(result.get('val_miou'))} val_loss={_fmt(result.get('val_loss'))} "
              f"path={result.get('path', '')} {hp}".rstrip(), flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[{trial.trial_id}] FAILED: {trial.error_file or 'see its error.txt'}", file=sys.stderr, flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def experiment_dir(storage_path: str, name: str) -> str:
    return os.path.join(storage_path, name)


def make_tuner(cfg: ExperimentConfig, storage_path: str, name: str, concurrency: int) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(search_trial, base=config_to_dict(cfg), storage_path=experiment_dir(storage_path, name)),
        {"CPU": cfg.tune.trial_cpus},
    )
    scheduler = (ASHAScheduler(time_attr=EPOCH_ATTR, max_t=cfg.search.epochs, grace_period=cfg.tune.grace_period,
                               reduction_factor=cfg.tune.reduction_factor)
                 if cfg.tune.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=tune_param_space(cfg.tune.param_space),
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=scheduler, num_samples=cfg.tune.num_samples,
            max_concurrent_trials=concurrency, trial_dirname_creator=lambda t: f"trial-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path,
            callbacks=[EpochReporter(experiment_dir(storage_path, name), cfg.search.epochs)],
        ),
    )


SWEEP_FILE = "sweep.json"
"""The sweep's own description and status (running / finished), beside Tune's files."""


def write_sweep_file(cfg: ExperimentConfig, path: str, concurrency: int, status: str) -> None:
    if "://" in path:
        return  # Tune's own state files describe a sweep on remote storage
    write_json(os.path.join(path, SWEEP_FILE), {
        "status": status, "updated": time.time(), "config_hash": config_hash(cfg),
        "metric": cfg.tune.metric, "mode": cfg.tune.mode, "epochs": cfg.search.epochs,
        "scheduler": {"kind": cfg.tune.scheduler, "time_attr": EPOCH_ATTR, "grace_period": cfg.tune.grace_period,
                      "reduction_factor": cfg.tune.reduction_factor, "max_t": cfg.search.epochs},
        "param_space": cfg.tune.param_space, "num_samples": cfg.tune.num_samples,
        "max_concurrent_trials": concurrency,
    })


def run_sweep(cfg: ExperimentConfig, storage_path: str, name: str, resume: bool = False) -> tune.ResultGrid:
    """Run (or with ``resume``, continue) the sweep; returns Tune's ResultGrid."""
    storage_path = storage_path if "://" in storage_path else str(Path(storage_path).resolve())
    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    concurrency = check_resources(cfg, ray.cluster_resources(), nodes)
    path = experiment_dir(storage_path, name)
    write_sweep_file(cfg, path, concurrency, "running")
    grid = _fit(cfg, storage_path, name, path, concurrency, resume)
    write_sweep_file(cfg, path, concurrency, "finished")
    return grid


def _fit(cfg: ExperimentConfig, storage_path: str, name: str, path: str, concurrency: int,
         resume: bool) -> tune.ResultGrid:
    if resume and tune.Tuner.can_restore(path):
        trainable = tune.with_resources(
            tune.with_parameters(search_trial, base=config_to_dict(cfg), storage_path=path),
            {"CPU": cfg.tune.trial_cpus},
        )
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = make_tuner(cfg, storage_path, name, concurrency)
    return tuner.fit()


def best_result(grid: tune.ResultGrid, metric: str, mode: str):
    """The best trial that did not fail and reported ``metric`` (its last report), or None."""
    ok = [r for r in grid if r.error is None and r.metrics and _finite(r.metrics.get(metric))]
    if not ok:
        return None
    sign = 1 if mode == "max" else -1
    return max(ok, key=lambda r: sign * r.metrics[metric])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
