"""The three roles data plays in an honest search, and which split of a dataset plays each.

- ``train``: network weights and architecture parameters learn on it (the search halves it into trainA and
  trainB; every retrain trains on all of it).
- ``select``: everything that chooses reads it, and nothing else: the supernet's per-epoch validation that ASHA
  compares, the sweep's ranking, the short retrains that pick the final architecture, and every retrain's
  per-epoch ``val_*`` metrics. Its metrics are called ``val_*``.
- ``report``: read once, at the end of a full retrain, for the numbers claims are made on; no search, sweep or
  selection reads it. Its metrics are called ``test_*``.

Which split plays each role (the config's ``data`` section): ``select_split`` is ``val`` (a split of the
dataset) or ``holdout`` (``data.holdout`` images carved out of the training split, chosen by
``data.split_seed``, which the train role then leaves out); ``report_split`` is a split of the dataset, or null
for none. The synthetic task has train, val and test, independent streams: select = val, report = test.
Cityscapes, VOC and ADE20K keep their test labels private, so the selection split is carved out of train (as the
paper carves trainA and trainB) and their val split is the report split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from orchestrator.data.common import DataError
from orchestrator.data.dataset import load_dataset
from orchestrator.data.loaders import SearchSplit

ROLES = ("train", "select", "report")
HOLDOUT = "holdout"
"""``select_split`` value: the selection split is carved out of the training split."""
METRIC_PREFIX = {"select": "val", "report": "test"}
"""Metrics computed on a role's split are named ``<prefix>_miou``, ``<prefix>_loss``, ..."""
SHARED_OPTIONS = ("task",)
"""Options of ``data.options`` that define the dataset itself, so every role's split has them too (the synthetic
task variant); a role's own options may not contradict them."""


def holdout_indices(n: int, holdout: int, seed: int) -> list[int]:
    """The ``holdout`` training images that form the selection split: a seeded draw, sorted."""
    if not 0 < holdout < n:
        raise DataError(f"data.holdout = {holdout}: expected 1 .. {n - 1} (the training split has {n} images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:holdout])


def split_name(d: Any, role: str) -> str | None:
    """The dataset split that plays ``role`` under the data config ``d`` (``holdout`` is the carved part of
    train); None when the role has no split (no report split)."""
    if role not in ROLES:
        raise ValueError(f"unknown data role {role!r}: expected one of {', '.join(ROLES)}")
    return {"train": "train", "select": d.select_split, "report": d.report_split}[role]


def role_options(d: Any, role: str, extra: dict | None = None) -> dict:
    """The dataset options of ``role``: ``data.options`` for train, ``data.val_options`` for select (over
    ``data.options`` for a holdout, which must see the training split's images: its size is the train one's),
    ``data.report_options`` for report; ``extra`` merged on top."""
    if role == "train":
        return {**d.options, **(extra or {})}
    if role == "select" and d.select_split == HOLDOUT:
        own = {k: v for k, v in {**d.val_options, **(extra or {})}.items() if k not in ("size", "fresh")}
        return {**{k: v for k, v in d.options.items() if k != "fresh"}, **own}
    own = {**(d.val_options if role == "select" else d.report_options), **(extra or {})}
    shared = {k: d.options[k] for k in SHARED_OPTIONS if k in d.options}
    for key, value in shared.items():
        if own.get(key, value) != value:
            raise DataError(f"data options: {key} is {value!r} for training but {own[key]!r} for the {role} split: "
                            f"set {key} in data.options only, every split takes it from there")
    return {**own, **shared}


def role_dataset(d: Any, role: str, *, train: bool, crop_size: int, extra: dict | None = None) -> Dataset:
    """The dataset of ``role`` (training augmentation with ``train``), with `role_options`.

    Raises:
        DataError: the role has no split, or the dataset refuses the split or its options.
    """
    split = split_name(d, role)
    if split is None:
        raise DataError(f"data.report_split is null: the {d.dataset} run has no report split to read")
    options = role_options(d, role, extra)
    carved = role == "train" and d.select_split == HOLDOUT
    if split != HOLDOUT and not carved:
        return load_dataset(d.dataset, d.root, split, train=train, crop_size=crop_size, **options)
    full = load_dataset(d.dataset, d.root, "train", train=train, crop_size=crop_size, **options)
    held = holdout_indices(len(full), d.holdout, d.split_seed)
    if role == "select":
        return SearchSplit(full, held)
    taken = set(held)
    return SearchSplit(full, [i for i in range(len(full)) if i not in taken])


def describe(d: Any, role: str) -> str | None:
    """Where a role's numbers come from, for summaries: ``"synthetic val"``, ``"cityscapes train holdout (300
    images, split_seed 0)"``; None when the role has no split."""
    split = split_name(d, role)
    if split is None:
        return None
    if split == HOLDOUT:
        return f"{d.dataset} train holdout ({d.holdout} images, split_seed {d.split_seed})"
    task = d.options.get("task") if d.dataset == "synthetic" else None
    return f"{d.dataset}{f' ({task})' if task else ''} {split}"
