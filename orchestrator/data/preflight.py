"""Checks run in the driver before any Ray worker starts, so bad input fails in seconds with a clear message
instead of inside a worker group that Ray restarts. Every data role is opened (`orchestrator.data.roles`): the
train split (minus a holdout), the selection split and, when there is one, the report split. A dataset root at a
storage URI is checked against the bucket's listing (`remote.skeleton`), without downloading an image.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile

from orchestrator.config import ExperimentConfig
from orchestrator.data import DataError
from orchestrator.data.remote import skeleton
from orchestrator.data.roles import role_dataset
from orchestrator.io.paths import is_remote


@contextlib.contextmanager
def checked_view(cfg: ExperimentConfig):
    """``cfg`` itself, or for a root at a storage URI a copy whose root is the URI's skeleton and whose file
    datasets check no image contents (they are empty files there)."""
    if not cfg.data.root or not is_remote(str(cfg.data.root)):
        yield cfg
        return
    with tempfile.TemporaryDirectory(prefix="adl-skeleton-") as folder:
        view = copy.deepcopy(cfg)
        view.data.root = skeleton(str(cfg.data.root), folder)
        for name in ("options", "val_options", "report_options"):
            setattr(view.data, name, {**getattr(view.data, name), "check_samples": 0})
        view.retrain.data_options = {**view.retrain.data_options, "check_samples": 0}
        view.retrain.val_options = {**view.retrain.val_options, "check_samples": 0}
        yield view


def check_data(cfg: ExperimentConfig) -> None:
    """Open the train and selection splits (file lists validated, labels sample-checked by the data layer)
    and check the search has a full batch in each training half."""
    with checked_view(cfg) as view:
        _check_search_data(view)


def _check_search_data(cfg: ExperimentConfig) -> None:
    d = cfg.data
    train = role_dataset(d, "train", train=True, crop_size=d.crop_size)
    role_dataset(d, "select", train=False, crop_size=d.crop_size)
    half = len(train) // 2
    need = d.batch_size * cfg.scaling.num_workers
    if half < need:
        raise DataError(f"data: the training split has {len(train)} images, so trainA/trainB hold about {half}, fewer "
                        f"than data.batch_size ({d.batch_size}) x scaling.num_workers ({cfg.scaling.num_workers}) "
                        f"= {need}: no full batch per worker")


def check_retrain_data(cfg: ExperimentConfig) -> None:
    """Open every role's split at the retrain crop and check one full batch per retrain worker (the retrain drops
    the last partial batch), so a sweep does not end in a traceback from the final step hours later."""
    with checked_view(cfg) as view:
        _check_retrain_data(view)


def _check_retrain_data(cfg: ExperimentConfig) -> None:
    d, r = cfg.data, cfg.retrain
    train = role_dataset(d, "train", train=True, crop_size=r.crop_size, extra=r.data_options)
    role_dataset(d, "select", train=False, crop_size=r.crop_size, extra=r.val_options)
    if d.report_split is not None:
        role_dataset(d, "report", train=False, crop_size=r.crop_size)
    if len(train) < r.batch_size * r.num_workers:
        raise DataError(f"data: the training split has {len(train)} images, fewer than retrain.batch_size "
                        f"({r.batch_size}) x retrain.num_workers ({r.num_workers}): no full batch per worker")
