"""The Ray Train runs: `make_trainer` builds a search's `TorchTrainer` (the Tune driver uses it per trial),
`run_single_search` fits one on the current cluster with the config's scaling, no Tune; `make_retrain_trainer`
and `run_retrain` do the same for the retrain of a genotype; `check_resources` refuses what no node could hold
(`orchestrator.train.capacity`).

A run lives in ``<storage_path>/<name>/``: Ray's ``checkpoint_epoch<k>/`` folders and
``checkpoint_manager_snapshot.json``, the resolved ``config.yaml``, ``tensorboard/`` and ``epochs/`` (one JSON
of metrics per finished epoch, from rank 0). Fitting the same name
again resumes from its latest checkpoint (Train V2 restores the run's checkpoint manager), which is why run
names are derived from the config (`orchestrator.config.derive_name`), never from the clock.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.config import (
    ExperimentConfig,
    config_to_dict,
    save_config,
    search_space_of,
)
from orchestrator.io import storage
from orchestrator.io.paths import absolute, is_remote
from orchestrator.train import capacity
from orchestrator.train.capacity import ResourceError as ResourceError  # where the entry points look for it
from orchestrator.train.resume import check_search_folder
from orchestrator.train.retrain_loop import retrain_fn_per_worker
from orchestrator.train.search_loop import train_fn_per_worker
from orchestrator.train.worker import EPOCHS_DIR
from search_space import Genotype


class DivergedError(RuntimeError):
    """A search or retrain loss (or alpha/beta) became NaN or infinite; the message says when and why."""


def run_dir(storage_path: str, name: str) -> str:
    """The run's folder (absolute when local, as Ray Train wants; on a URI the name goes before its query)."""
    return storage.join(_base(storage_path), name)


def _base(storage_path: str) -> str:
    return absolute(os.path.expanduser(storage_path))


def read_epochs(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch metrics rank 0 wrote into a run folder (a local path or a URI), in epoch order."""
    return [storage.read_json(f) for f in storage.glob(storage.join(directory, EPOCHS_DIR), "epoch-*.json")]


def check_resources(cfg: ExperimentConfig, num_workers: int | None = None,
                    workers_key: str = "scaling.num_workers", custom: dict | None = None) -> None:
    """Fail fast when no node the cluster has or can get could hold the run's workers (`capacity`).

    Args:
        cfg: the config; ``scaling`` gives the resources per worker.
        num_workers: defaults to ``scaling.num_workers``; the retrain passes ``retrain.num_workers``.
        workers_key: the config key ``num_workers`` came from, for the message.
        custom: custom resources per worker; defaults to ``scaling.custom_resources``.
    """
    sc = cfg.scaling
    n = sc.num_workers if num_workers is None else num_workers
    custom = sc.custom_resources if custom is None else custom
    advice = (f"Lower {workers_key} or scaling.cpus_per_worker" + (", set scaling.use_gpu=false" if sc.use_gpu else "")
              + ", or add nodes (or node types that offer these resources)")
    capacity.capacity(capacity.run_request(cfg, n, custom),
                      f"the run of {workers_key}={n} workers of scaling.cpus_per_worker={sc.cpus_per_worker:g}", advice)


def make_trainer(cfg: ExperimentConfig, storage_path: str, name: str, *, callbacks: list[Any] | None = None,
                 stop_at_epoch: int | None = None) -> TorchTrainer:
    """The `TorchTrainer` for one search: scaling, backend, checkpoint and failure policy from the config.

    Args:
        cfg: the resolved experiment config (passed to the workers as a plain dict).
        storage_path: the folder (or URI) that holds run folders; the run is ``<storage_path>/<name>``.
        name: the run name; reusing it resumes that run.
        callbacks: Ray Train callbacks (the Tune driver passes ``TuneReportCallback``).
        stop_at_epoch: end this run after that many finished epochs (the schedule still spans
            ``search.epochs``); fit again under the same name to continue.
    """
    directory = run_dir(storage_path, name)
    if not is_remote(directory):
        check_search_folder(directory, search_space_of(cfg))
    save_config(cfg, storage.join(directory, "config.yaml"))
    loop_config = {"config": config_to_dict(cfg), "stop_at_epoch": stop_at_epoch, "run_dir": directory}
    return torch_trainer(train_fn_per_worker, loop_config, cfg, (storage_path, name), cfg.scaling.num_workers,
                         callbacks, cfg.scaling.custom_resources)


WORKER_START_TIMEOUT_S = "600"
"""How long Train waits for a worker group (Ray's default, 60 s, is shorter than worker start-up on a loaded
machine or a cluster that is still scaling up). The resource checks have already refused impossible requests."""


def torch_trainer(loop_fn: Any, loop_config: dict[str, Any], cfg: ExperimentConfig, where: tuple[str, str],
                  num_workers: int, callbacks: list[Any] | None = None, custom: dict | None = None) -> TorchTrainer:
    """A `TorchTrainer` running ``loop_fn`` in the run folder ``where = (storage_path, name)`` (Ray joins the
    name onto a URI's path itself) with the config's scaling (backend, resources per worker), checkpoint and
    failure policy; shared by the search and the retrain."""
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_START_TIMEOUT_S)
    sc = cfg.scaling
    resources = capacity.worker_bundle(cfg, custom)
    backend = sc.backend if sc.backend != "auto" else ("nccl" if sc.use_gpu else "gloo")
    return TorchTrainer(
        loop_fn,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=sc.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=where[1],
            storage_path=_base(where[0]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.runtime.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.runtime.max_failures),
            callbacks=callbacks,
        ),
    )


def run_single_search(cfg: ExperimentConfig, storage_path: str | None = None, name: str | None = None, *,
                      stop_at_epoch: int | None = None) -> ray.train.Result:
    """Fit one search on the current Ray cluster (``ray.init`` first) and return its `Result`.

    Args:
        cfg: the resolved experiment config.
        storage_path: defaults to ``cfg.storage_path``.
        name: defaults to ``cfg.name``, else ``search-<config_hash>``.
        stop_at_epoch: see `make_trainer`.
    """
    from orchestrator.config import derive_name

    check_resources(cfg)
    storage_path, name = storage_path or cfg.storage_path, name or derive_name(cfg)
    result = make_trainer(cfg, storage_path, name, stop_at_epoch=stop_at_epoch).fit()
    check_diverged(run_dir(storage_path, name), (result.metrics or {}).get("epoch", 0))
    return result


def check_diverged(directory: str, checkpointed_epoch: int = 0) -> None:
    """Raise DivergedError when the run's last recorded epoch, later than its last checkpoint, says the search
    diverged."""
    epochs = read_epochs(directory)
    if epochs and epochs[-1].get("diverged") and epochs[-1]["epoch"] > checkpointed_epoch:
        raise DivergedError(f"the run in {directory} stopped: {epochs[-1].get('stop_reason')}")


def make_retrain_trainer(cfg: ExperimentConfig, genotype: Genotype, storage_path: str, name: str,
                         callbacks: list | None = None, report: bool = True) -> TorchTrainer:
    """A TorchTrainer that retrains ``genotype`` with ``cfg.retrain`` into ``<storage_path>/<name>``; ``report``:
    a full retrain that evaluates the report split after its last epoch (short retrains that choose must not)."""
    loop_config = {"config": config_to_dict(cfg), "genotype": genotype.to_dict(),
                   "run_dir": run_dir(storage_path, name), "report": report}
    return torch_trainer(retrain_fn_per_worker, loop_config, cfg, (storage_path, name), cfg.retrain.num_workers,
                         callbacks, cfg.retrain.custom_resources)


def run_retrain(cfg: ExperimentConfig, genotype: Genotype, storage_path: str, name: str = "retrain"):
    """Fit the retrain TorchTrainer; returns its `ray.train.Result`."""
    return make_retrain_trainer(cfg, genotype, storage_path, name).fit()
