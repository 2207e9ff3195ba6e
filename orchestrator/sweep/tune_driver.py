"""The Ray Tune sweep over the search's outer hyperparameters (warmup epoch, F, architecture learning rate,
or any config key), with ASHA early stopping on validation mIoU.

Train V2 pattern (docs/notes/ray.md): each trial is a Tune *function* trainable, `search_trial`, that builds and
fits a `TorchTrainer` running the per-worker search loop; metrics reach Tune through `TuneReportCallback`.
The trial's Train run is named ``train-<trial_id>`` so a restored sweep resumes each trial's own checkpoints.
This module knows nothing about the model: it maps config keys to Tune samplers, budgets resources, records
every reported epoch (`orchestrator.io.records`) and prints progress.

Resume. ``sweep.json`` and ``config.yaml`` in the experiment folder say what the sweep is. Running a sweep whose
folder exists needs ``resume=True``; resuming with a config whose hash differs is refused, naming the keys that
differ, so a resumed sweep is the sweep that was started. `Tuner.restore` keeps finished trials and restarts the
unfinished ones, whose Train runs continue from their checkpoints. Epochs that a killed driver never recorded
are filled in from the trials' own ``epochs/`` files (`backfill_records`), so the records have no gaps.
A trial whose search diverged ends normally with ``diverged: True`` and a ``stop_reason`` in its last result;
`best_result` never picks it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestrator.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
    with_overrides,
)
from orchestrator.io import storage
from orchestrator.io.atomic import write_json
from orchestrator.io.checkpointing import latest_checkpoint_dir, read_manifest
from orchestrator.io.numbers import is_finite
from orchestrator.io.paths import absolute
from orchestrator.io.records import RECORDS_DIR, write_record
from orchestrator.train import capacity
from orchestrator.train.trainers import make_trainer, read_epochs


class SweepError(ValueError):
    """A sweep that cannot be started or resumed as asked (it exists already, or was started with another
    config); the message names the folder and what to do."""

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


def sweep_concurrency(cfg: ExperimentConfig) -> int:
    """How many trials run at once: as many of the largest trial the sweep can sample (its driver plus its Train
    workers, whom Tune does not count) as the cluster holds at its largest (`capacity`), capped by
    ``tune.max_concurrent_trials``; ResourceError when no node could hold one."""
    workers = int(_largest_swept(cfg, "scaling.num_workers", cfg.scaling.num_workers))
    cpus = _largest_swept(cfg, "scaling.cpus_per_worker", cfg.scaling.cpus_per_worker)
    widest = with_overrides(cfg, {"scaling.cpus_per_worker": cpus}, "the sweep's largest trial")
    request = capacity.trial_request(widest, workers, cfg.scaling.custom_resources)
    advice = ("Lower scaling.num_workers or scaling.cpus_per_worker" + (", set scaling.use_gpu=false"
              if cfg.scaling.use_gpu else "") + ", or add nodes (or node types that offer these resources)")
    fits = capacity.capacity(request, f"one trial (tune.trial_cpus={cfg.tune.trial_cpus:g} + {workers} workers of "
                             f"scaling.cpus_per_worker={cpus:g})", advice)
    limit = cfg.tune.max_concurrent_trials
    return min(fits, limit) if limit > 0 else fits


def search_trial(config: dict[str, Any], base: dict[str, Any], storage_path: str) -> None:
    """One trial: the base config with this trial's sampled keys, searched by a TorchTrainer."""
    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(config_from_dict(base, "sweep base config"), dict(config), f"trial {trial_id}")
    name = f"train-{trial_id}"
    ended = ended_run(storage.join(storage_path, name), cfg.search.epochs)
    if ended is not None:
        # Tune saves its state every ~10 s: a driver killed in between restarts a trial that had ended.
        print(f"[{trial_id}] its search had ended at epoch {ended[EPOCH_ATTR]}; reporting that epoch again instead "
              "of running it again", flush=True)
        tune.report(ended)
        return
    trainer = make_trainer(cfg, storage_path=storage_path, name=name, callbacks=[TuneReportCallback()])
    trainer.fit()


def ended_run(directory: str, epochs: int) -> dict[str, Any] | None:
    """The last report of a Train run (local or at a URI) that already ended (all ``epochs`` done and
    checkpointed, or diverged), with its checkpoint's path as Tune's callback adds it; None when the run must
    (still) be fit."""
    done = read_epochs(directory)
    if not done:
        return None
    last = done[-1]
    if last.get("diverged"):
        return last
    latest = latest_checkpoint_dir(directory)
    if last[EPOCH_ATTR] < epochs or latest is None:
        return None
    manifest = read_manifest(latest) or {}
    return {**last, "checkpoint_path": str(latest)} if manifest.get("epoch") == last[EPOCH_ATTR] else None


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
        if result.get("diverged"):
            print(f"[{trial.trial_id}] STOPPED: {result.get('stop_reason')} {hp}".rstrip(), flush=True)
            return
        print(f"[{trial.trial_id}] epoch {result[EPOCH_ATTR]}/{self.epochs} "
              f"val_miou={_fmt(result.get('val_miou'))} val_loss={_fmt(result.get('val_loss'))} "
              f"path={result.get('path', '')} {hp}".rstrip(), flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[{trial.trial_id}] FAILED: {trial.error_file or 'see its error.txt'}", file=sys.stderr, flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def experiment_dir(storage_path: str, name: str) -> str:
    return storage.join(storage_path, name)


def asha_grace_period(cfg: ExperimentConfig) -> int:
    """``tune.grace_period``, at most the search's epochs: a shortened search (``search.epochs=5`` on a config
    written for 28) keeps its sweep, as ``selection.grace_period`` is capped by ``selection.short_epochs``."""
    return min(cfg.tune.grace_period, cfg.search.epochs)


def make_tuner(cfg: ExperimentConfig, storage_path: str, name: str, concurrency: int) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(search_trial, base=config_to_dict(cfg), storage_path=experiment_dir(storage_path, name)),
        {"CPU": cfg.tune.trial_cpus},
    )
    scheduler = (ASHAScheduler(time_attr=EPOCH_ATTR, max_t=cfg.search.epochs, grace_period=asha_grace_period(cfg),
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
            # A lost node can take a trial's driver with it (Train's own retries cannot help then): Tune restarts
            # the trial, whose Train run continues from its latest checkpoint.
            failure_config=tune.FailureConfig(max_failures=cfg.runtime.max_failures),
        ),
    )


SWEEP_FILE = "sweep.json"
"""The sweep's own description and status (running / finished), beside Tune's files."""


SWEEP_CONFIG = "config.yaml"
"""The resolved config the sweep was started with (what ``--resume`` must match)."""


def check_sweep_state(cfg: ExperimentConfig, path: str, resume: bool) -> bool:
    """Whether a sweep exists at ``path`` to be resumed; refuses a rerun without ``resume`` and a resume with
    another config (SweepError). The same on a storage URI."""
    state = storage.join(path, SWEEP_FILE)
    if not storage.is_file(state):
        if resume:
            print(f"--resume: no sweep at {path} yet; starting a new one", flush=True)
        return False
    if not resume:
        raise SweepError(
            f"a sweep already exists in {path} ({SWEEP_FILE} says "
            f"'{_read_json(state).get('status', 'unknown')}'); pass --resume to continue it with the same config, "
            "or --name (or name=...) to start another sweep beside it"
        )
    saved = _read_json(state).get("config_hash")
    if saved != config_hash(cfg):
        raise SweepError(
            f"{state}: the sweep was started with config hash {saved}, this config has {config_hash(cfg)}"
            f"{_differences(cfg, storage.join(path, SWEEP_CONFIG))}. A resumed sweep must run the config it started "
            "with: pass the same config file and overrides, or use --name for a new sweep"
        )
    return True


def _read_json(path: str) -> dict[str, Any]:
    try:
        return storage.read_json(path)
    except (OSError, ValueError) as err:
        raise SweepError(f"{path}: cannot read the sweep's state ({err}); move the folder away or use --name") \
            from None


def _differences(cfg: ExperimentConfig, saved_path: str) -> str:
    """``; differing keys: a.b (was x, now y), ...`` against the saved config, or '' when it is unreadable."""
    try:
        saved = config_to_dict(load_config(saved_path))
    except ConfigError:
        return ""
    now, diffs = config_to_dict(cfg), []
    for section, body in saved.items():
        if isinstance(body, dict):
            diffs += [f"{section}.{k} (was {v!r}, now {now[section].get(k)!r})"
                      for k, v in body.items() if now[section].get(k) != v]
    return f"; differing keys: {', '.join(diffs)}" if diffs else ""


def write_sweep_file(cfg: ExperimentConfig, path: str, concurrency: int, status: str) -> None:
    save_config(cfg, storage.join(path, SWEEP_CONFIG))
    write_json(storage.join(path, SWEEP_FILE), {
        "status": status, "updated": time.time(), "config_hash": config_hash(cfg),
        "metric": cfg.tune.metric, "mode": cfg.tune.mode, "epochs": cfg.search.epochs,
        "scheduler": {"kind": cfg.tune.scheduler, "time_attr": EPOCH_ATTR, "grace_period": asha_grace_period(cfg),
                      "reduction_factor": cfg.tune.reduction_factor, "max_t": cfg.search.epochs},
        "param_space": cfg.tune.param_space, "num_samples": cfg.tune.num_samples,
        "max_concurrent_trials": concurrency,
    })


def run_sweep(cfg: ExperimentConfig, storage_path: str, name: str, resume: bool = False) -> tune.ResultGrid:
    """Run (or with ``resume``, continue) the sweep; returns Tune's ResultGrid."""
    storage_path = absolute(storage_path)
    concurrency = sweep_concurrency(cfg)
    path = experiment_dir(storage_path, name)
    resume = check_sweep_state(cfg, path, resume)
    write_sweep_file(cfg, path, concurrency, "running")
    grid = _fit(cfg, storage_path, name, path, concurrency, resume)
    backfill_records(path, grid)
    write_sweep_file(cfg, path, concurrency, "finished")
    return grid


def _fit(cfg: ExperimentConfig, storage_path: str, name: str, path: str, concurrency: int,
         resume: bool) -> tune.ResultGrid:
    if resume and tune.Tuner.can_restore(path):
        print(f"resuming the sweep in {path}: finished trials are kept, unfinished ones continue from their "
              "checkpoints", flush=True)
        trainable = tune.with_resources(
            tune.with_parameters(search_trial, base=config_to_dict(cfg), storage_path=path),
            {"CPU": cfg.tune.trial_cpus},
        )
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        if resume:
            print(f"--resume: {path} holds no Tune state to restore; starting the sweep's trials afresh", flush=True)
        tuner = make_tuner(cfg, storage_path, name, concurrency)
    return tuner.fit()


def trial_id_of(result) -> str | None:
    """A result's trial id: its last report's, else from its ``trial-<id>`` folder name."""
    trial_id = (result.metrics or {}).get("trial_id")
    if not trial_id and result.path:
        trial_id = os.path.basename(result.path.rstrip("/")).removeprefix("trial-")
    return trial_id or None


def backfill_records(path: str, grid: tune.ResultGrid) -> list[tuple[str, int]]:
    """Write the records missing for epochs a trial reached (a driver killed between a trial's report and its
    record leaves such a gap) from the trial's own ``train-<id>/epochs/`` files; returns what was added."""
    added = []
    for result in grid:
        trial_id = trial_id_of(result)
        if trial_id is None:
            continue
        have = {int(storage.basename(p).removesuffix(".parquet").split("-")[1])
                for p in storage.glob(storage.join(path, RECORDS_DIR, trial_id), "epoch-*.parquet")}
        reached = max([(result.metrics or {}).get(EPOCH_ATTR, 0), *have])
        for metrics in read_epochs(storage.join(path, f"train-{trial_id}")):
            if metrics["epoch"] <= reached and metrics["epoch"] not in have:
                write_record(path, trial_id, dict(result.config or {}), metrics)
                added.append((trial_id, metrics["epoch"]))
    if added:
        print(f"records: filled in {len(added)} epochs the interrupted driver had not recorded: {added}", flush=True)
    return added


def best_result(grid: tune.ResultGrid, metric: str, mode: str):
    """The best trial that did not fail and reported ``metric`` (its last report), or None."""
    ok = [r for r in grid if r.error is None and r.metrics and not r.metrics.get("diverged")
          and is_finite(r.metrics.get(metric))]
    if not ok:
        return None
    sign = 1 if mode == "max" else -1
    return max(ok, key=lambda r: sign * r.metrics[metric])
