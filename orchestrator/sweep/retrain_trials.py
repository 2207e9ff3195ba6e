"""Retraining many genotypes as Ray Tune trials: one trial per (genotype, seed), each a `TorchTrainer` running
the retrain loop with ``runtime.seed`` set to the seed, as many at once as the cluster holds, optionally under a
scheduler (ASHA on the retrain mIoU for the final step's short retrains). Used by validation against random
architectures (`orchestrator.sweep.validation`) and by the final step's top-k selection (`orchestrator.sweep.final`).

Runs are named by genotype and seed (``retrain-<genotype hash>-seed<s>``) in ``<path>/runs/``, and Tune's state
is in ``<path>/tune-<plan hash>``: running the same plan again restores it, a finished retrain is reported again
instead of run again, an unfinished one continues from its checkpoint. This module knows genotypes and configs,
not the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.config import (
    SELECTION_METRICS,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    with_overrides,
)
from orchestrator.data.roles import role_options
from orchestrator.io import storage
from orchestrator.io.numbers import finite_or_nan
from orchestrator.io.paths import absolute
from orchestrator.train import capacity
from orchestrator.train.retrain_loop import retrain_fn_per_worker
from orchestrator.train.trainers import make_retrain_trainer, read_epochs, run_dir
from orchestrator.train.worker import report_listener
from search_space import Genotype


def genotype_key(genotype: Genotype) -> str:
    return hashlib.sha256(genotype.to_json(indent=None).encode()).hexdigest()[:10]


def retrain_inputs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything a retrain's result depends on besides genotype and seed: the retrain section, the data each
    role's split is built from (as the retrain resolves it, so two configs whose searches differ but whose
    retrains read the same images share their runs), the stem and op family, bf16. Not where it runs
    (``retrain.custom_resources``)."""
    d, everything = cfg.data, config_to_dict(cfg)
    retrain = {k: v for k, v in everything["retrain"].items()  # custom_resources: where it runs, not what it learns
               if k not in ("data_options", "val_options", "custom_resources")}
    roles = {role: role_options(d, role, extra) for role, extra in
             (("train", cfg.retrain.data_options), ("select", cfg.retrain.val_options), ("report", None))}
    data = {k: everything["data"][k] for k in ("dataset", "root", "split_seed", "select_split", "holdout",
                                               "report_split", "val_batch_size")}
    space = {k: everything["search_space"][k] for k in ("ops", "stem_channels")}
    return {"retrain": retrain, "data": data, "roles": roles, "space": space, "bf16": cfg.runtime.bf16}


def run_name(genotype: Genotype, seed: int, cfg: ExperimentConfig) -> str:
    """``retrain-<genotype hash>-<budget hash>-seed<s>``: the budget (`retrain_inputs`) is in the name, so a short
    retrain never resumes into a full one."""
    budget = hashlib.sha256(json.dumps(retrain_inputs(cfg), sort_keys=True).encode()).hexdigest()[:6]
    return f"retrain-{genotype_key(genotype)}-{budget}-seed{seed}"


def finished_retrain(directory: str, epochs: int) -> dict[str, Any] | None:
    """The last epoch's metrics of a retrain run (local or at a URI) that ran all ``epochs`` (or diverged), else
    None."""
    done = read_epochs(directory)
    if done and (done[-1].get("diverged") or done[-1]["epoch"] >= epochs):
        return done[-1]
    return None


def trial_config(base: dict[str, Any], seed: int, label: str, in_process: bool = False) -> ExperimentConfig:
    """The config one retrain trial runs with: ``base`` at ``runtime.seed`` = ``seed``; ``in_process``: one
    worker with the global batch of ``retrain.num_workers`` workers (so the run's name and result match)."""
    cfg = with_overrides(config_from_dict(base, "retrain trial base config"), {"runtime.seed": seed},
                         f"retrain trial {label} seed {seed}")
    if in_process:
        r = cfg.retrain
        cfg = with_overrides(cfg, {"retrain.batch_size": r.batch_size * r.num_workers, "retrain.num_workers": 1},
                             f"in-process retrain trial {label}")
    return cfg


def retrain_trial(config: dict[str, Any], base: dict[str, Any], runs: str, in_process: bool = False,
                  report: bool = False) -> None:
    """One retrain of ``config["trial"]["genotype"]`` with ``runtime.seed`` set to its ``seed``, reported to
    Tune. ``in_process``: the retrain loop runs standalone in this trial's own process (one worker with the global
    batch of ``retrain.num_workers`` workers, no `ray.train`), so no worker group starts; its reports reach Tune
    through `report_listener`. It keeps no checkpoint: interrupted, it starts again. ``report``: a full retrain
    that evaluates the report split after its last epoch (never for the short retrains that select)."""
    config = config["trial"]
    cfg = trial_config(base, config["seed"], config["label"], in_process)
    genotype = Genotype.from_dict(config["genotype"], f"retrain trial {config['label']}")
    name = run_name(genotype, config["seed"], cfg)
    ended = finished_retrain(run_dir(runs, name), cfg.retrain.epochs)
    if ended is not None:
        tune.report(ended)
        return
    if in_process:
        directory = run_dir(runs, name)
        with report_listener(tune.report):
            retrain_fn_per_worker({"config": config_to_dict(cfg), "genotype": genotype.to_dict(),
                                   "run_dir": directory, "standalone": True, "report": report})
        return
    make_retrain_trainer(cfg, genotype, runs, name, callbacks=[TuneReportCallback()], report=report).fit()


def trial_resources(cfg: ExperimentConfig, in_process: bool) -> dict[str, float]:
    """What one trial holds itself: the retrain's compute when in process, else the Tune trial's CPU share."""
    if not in_process:
        return {"CPU": cfg.tune.trial_cpus}
    return capacity.worker_bundle(cfg, cfg.retrain.custom_resources)


def concurrency(cfg: ExperimentConfig, in_process: bool = False) -> int:
    """Retrains that fit at once on the cluster at its largest (`capacity`); ResourceError when none could."""
    custom = cfg.retrain.custom_resources
    request = ([capacity.worker_bundle(cfg, custom)] if in_process
               else capacity.trial_request(cfg, cfg.retrain.num_workers, custom))
    what = "in process" if in_process else "retrain.num_workers x scaling per worker, plus tune.trial_cpus"
    return capacity.capacity(request, f"one retrain trial ({what})", "Lower retrain.num_workers")


def run_trials(cfg: ExperimentConfig, trials: list[dict[str, Any]], path: str, scheduler: Any = None,
               in_process: bool = False, metric: str = "val_miou",
               report: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
    """Fit (or continue) one trial per ``{"label", "genotype" (dict), "seed"}`` in ``path``, with ``cfg``'s retrain
    section (each in its trial's process with ``in_process``, see `retrain_trial`: a finished trial's process
    takes the next one, which spares a Python start and the imports, about 5 s a trial on 2 cores; each retrain
    seeds its own RNGs), ``metric`` for Tune and the scheduler; returns each (label, seed)'s last reported metrics
    (``val_miou`` and ``metric`` NaN when it failed). ``report``: full retrains that also evaluate the report
    split after their last epoch (``test_*``); the short retrains of selection never do."""
    path = absolute(path)
    runs = storage.join(path, "runs")
    plan = ([trials, config_to_dict(cfg)["retrain"]] + ([{"in_process": True}] if in_process else [])
            + ([{"metric": metric}] if metric != "val_miou" else []) + ([{"report": True}] if report else []))
    plan_key = hashlib.sha256(json.dumps(plan, sort_keys=True).encode())
    name = f"tune-{plan_key.hexdigest()[:8]}"
    trainable = tune.with_resources(
        tune.with_parameters(retrain_trial, base=config_to_dict(cfg), runs=runs, in_process=in_process,
                             report=report),
        trial_resources(cfg, in_process))
    if tune.Tuner.can_restore(storage.join(path, name)):
        tuner = tune.Tuner.restore(storage.join(path, name), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(metric=metric, mode=SELECTION_METRICS[metric], scheduler=scheduler,
                                        max_concurrent_trials=concurrency(cfg, in_process),
                                        trial_dirname_creator=lambda t: f"trial-{t.trial_id}",
                                        reuse_actors=in_process),
            run_config=tune.RunConfig(name=name, storage_path=path, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=cfg.runtime.max_failures)))
    out = {}
    for result in tuner.fit():
        trial, metrics = (result.config or {}).get("trial", {}), dict(result.metrics or {})
        failed = result.error is not None
        out[(trial.get("label"), trial.get("seed"))] = {
            **metrics, **{k: math.nan if failed else finite_or_nan(metrics.get(k)) for k in {"val_miou", metric}}}
    return out
