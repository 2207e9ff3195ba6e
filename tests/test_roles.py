"""The three data roles (orchestrator/data/roles.py): splits disjoint and deterministic, the report split read by
nothing that chooses, fresh training images, and the data order following the run's seed. No Ray."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from orchestrator.config import ConfigError, config_from_dict
from orchestrator.data import DataError, InfiniteLoader, make_loader, role_dataset, search_splits, seed_sampler
from orchestrator.data.roles import describe, holdout_indices, role_options
from orchestrator.data.synthetic_dataset import SyntheticSegmentation, generate


def data_config(**changes) -> SimpleNamespace:
    base = {"dataset": "synthetic", "root": None, "options": {"size": 16}, "val_options": {"size": 8},
            "report_options": {"size": 8}, "select_split": "val", "holdout": 0, "report_split": "test",
            "split_seed": 0}
    return SimpleNamespace(**{**base, **changes})


def images(ds) -> list[bytes]:
    return [ds.raw(i)[0].tobytes() for i in range(len(ds))]


@pytest.mark.parametrize("task", ["multi", "detail", "context"])
def test_synthetic_splits_never_share_an_image_and_repeat_exactly(task):
    opts = {"task": task}
    splits = {split: SyntheticSegmentation(split, 12, 32, task=task) for split in ("train", "val", "test")}
    seen = {split: set(images(ds)) for split, ds in splits.items()}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    again = role_dataset(data_config(options={"size": 12, **opts}, report_options={"size": 12}), "report",
                         train=False, crop_size=32)
    assert images(again.dataset if hasattr(again, "indices") else again) == images(splits["test"])


def test_the_holdout_is_carved_out_of_train_deterministically_and_training_leaves_it_out():
    d = data_config(select_split="holdout", holdout=5, report_split=None, options={"size": 20})
    train = role_dataset(d, "train", train=True, crop_size=32)
    select = role_dataset(d, "select", train=False, crop_size=32)
    assert len(train) == 15 and len(select) == 5
    assert not set(train.indices) & set(select.indices) and set(train.indices) | set(select.indices) == set(range(20))
    assert select.indices == holdout_indices(20, 5, 0) == role_dataset(d, "select", train=False, crop_size=32).indices
    assert holdout_indices(20, 5, 1) != select.indices  # split_seed decides which images
    assert describe(d, "select") == "synthetic train holdout (5 images, split_seed 0)"
    with pytest.raises(DataError, match="report_split is null"):
        role_dataset(d, "report", train=False, crop_size=32)


def test_a_task_set_for_training_reaches_every_split_and_cannot_be_contradicted():
    d = data_config(options={"size": 4, "task": "context"})
    assert role_options(d, "report")["task"] == "context" and role_options(d, "select")["task"] == "context"
    with pytest.raises(DataError, match="task is 'context' for training but 'detail'"):
        role_options(data_config(options={"task": "context"}, val_options={"task": "detail"}), "select")


@pytest.mark.parametrize(("changes", "key"), [
    ({"report_split": "val"}, "data.report_split"),
    ({"report_split": "train"}, "data.report_split"),
    ({"select_split": "holdout"}, "data.holdout"),
    ({"holdout": 3}, "data.holdout"),
    ({"dataset": "cityscapes", "root": "/x"}, "private"),
])
def test_config_refuses_splits_that_would_mix_roles(changes, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"data": changes})


def test_a_fresh_split_draws_new_images_each_pass_and_the_same_ones_for_the_same_pass():
    ds = SyntheticSegmentation("train", 4, 32, fresh=True)
    first = images(ds)
    ds.set_epoch(1)
    second = images(ds)
    assert not set(first) & set(second)
    ds.set_epoch(0)
    assert images(ds) == first
    assert ds.raw(2)[0].tobytes() == generate(0, "train", 2, 32)[0].tobytes()
    with pytest.raises(DataError, match="fresh and cache exclude each other"):
        SyntheticSegmentation("train", 4, 32, fresh=True, cache=True)


def test_the_search_halves_stay_disjoint_in_every_pass_of_a_fresh_split():
    ds = SyntheticSegmentation("train", 8, 32, fresh=True)
    a, b = search_splits(ds, 0)
    for k in range(3):
        la, lb = InfiniteLoader(make_loader(a, 2, shuffle=True, num_workers=0, seed=1, drop_last=True)), \
            InfiniteLoader(make_loader(b, 2, shuffle=True, num_workers=0, seed=2, drop_last=True))
        la.epoch = lb.epoch = k
        xa = torch.cat([la.next()[0] for _ in range(2)])
        xb = torch.cat([lb.next()[0] for _ in range(2)])
        assert not {t.numpy().tobytes() for t in xa} & {t.numpy().tobytes() for t in xb}
        assert a.dataset.pass_index == k and b.dataset.pass_index == k  # each half moves its own copy


def order(seed: int, epoch: int = 0) -> list[int]:
    loader = make_loader(list(range(32)), 4, shuffle=True, num_workers=0, seed=seed, drop_last=False)
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=0, shuffle=True)  # what Ray puts in
    loader = seed_sampler(SimpleNamespace(sampler=sampler, dataset=loader.dataset), seed)
    loader.sampler.set_epoch(epoch)
    return list(iter(loader.sampler))


def test_the_distributed_data_order_follows_the_seed():
    assert order(3) == order(3)
    assert order(3) != order(4)
    assert order(3, epoch=1) != order(3, epoch=0)


def test_nothing_in_the_search_or_selection_reads_the_report_split(monkeypatch):
    """The search setup, supernet scoring and a standalone short retrain build their datasets with the report
    split refused; a full retrain's loader does read it (the check would otherwise pass vacuously)."""
    from orchestrator.data import roles

    reads = []
    real = roles.load_dataset

    def guarded(name, root, split, **kwargs):
        reads.append(split)
        return real(name, root, split, **kwargs)

    monkeypatch.setattr(roles, "load_dataset", guarded)
    cfg = config_from_dict({"data": {"options": {"size": 8}, "val_options": {"size": 4},
                                     "report_options": {"size": 4}, "crop_size": 32},
                            "retrain": {"crop_size": 32, "batch_size": 2, "num_workers": 1}})
    retrain_loop = importlib.import_module("orchestrator.train.retrain_loop")
    supernet_score = importlib.import_module("orchestrator.train.supernet_score")
    retrain_loop._loaders(cfg, 0, 1, standalone=True, report=False)
    supernet_score._batches(cfg)
    assert "test" not in reads and "val" in reads
    retrain_loop._loaders(cfg, 0, 1, standalone=True, report=True)
    assert reads[-1] == "test"


def test_the_search_workers_data_comes_from_train_and_the_selection_split(monkeypatch):
    from orchestrator.data import roles
    from orchestrator.train import search_setup

    seen = []
    monkeypatch.setattr(roles, "load_dataset", lambda name, root, split, **kw: seen.append(split) or
                        SyntheticSegmentation(split, 8, 32))
    monkeypatch.setattr(search_setup.ray.train.torch, "prepare_data_loader", lambda loader, **kw: loader)
    cfg = config_from_dict({"data": {"crop_size": 32}, "scaling": {"num_workers": 1}})
    data = search_setup.build_data(cfg, 0, 1)
    assert seen == ["train", "val"] and data.steps_per_epoch == 2
    assert np.array_equal(sorted(data.train_a.loader.dataset.indices + data.train_b.loader.dataset.indices),
                          list(range(8)))
