"""Search splits and loaders: the two disjoint halves of the training set, a reproducible DataLoader that
Ray Train's `prepare_data_loader` can re-wrap, and `InfiniteLoader` to draw trainB batches step by step.

Reproducibility: `make_loader` gives the DataLoader a seeded `torch.Generator`. It decides the shuffle order
and the base seed of every worker process; `seed_worker` derives numpy's and `random`'s seeds from it.
`prepare_data_loader` keeps ``generator`` and ``worker_init_fn`` when it swaps in a `DistributedSampler`
(it replaces the generator by one seeded with its own seed when `enable_reproducibility` was called).
`InfiniteLoader` re-seeds that generator and calls ``sampler.set_epoch`` at the start of every pass, so pass
k is the same whether the run was resumed or not. With ``num_workers=0`` augmentation draws from the main
process's global torch generator instead, which the caller seeds and checkpoints.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from orchestrator.data.common import DataError


class SearchSplit(Subset):
    """A `Subset` that also answers ``classes``, ``num_classes`` and ``ignore_index`` of its dataset."""

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def ignore_index(self) -> int:
        return self.dataset.ignore_index


def search_splits(train_ds: Dataset, seed: int) -> tuple[SearchSplit, SearchSplit]:
    """Split ``train_ds`` into trainA (network weights) and trainB (architecture), disjoint and covering it.

    The partition depends only on ``seed`` and the dataset's length; trainA gets the extra image when the
    length is odd. Indices inside each half are sorted (file locality); loaders shuffle them. Each half holds
    its own shallow copy of the dataset, so its loader's pass (`set_pass`) does not move the other half's.
    """
    n = len(train_ds)
    if n < 2:
        raise DataError(f"the training set has {n} image(s): the search needs at least 2 to split into halves")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    half = (n + 1) // 2
    return (SearchSplit(copy.copy(train_ds), sorted(perm[:half])),
            SearchSplit(copy.copy(train_ds), sorted(perm[half:])))


def set_pass(ds: Any, pass_index: int) -> None:
    """Tell ``ds`` (through any `Subset` wrappers) which pass over it begins: a dataset that draws new images
    per pass (the synthetic task's ``fresh`` option) has a ``set_epoch``; others ignore it."""
    while ds is not None:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(pass_index)
        ds = getattr(ds, "dataset", None)


def seed_sampler(loader: Any, seed: int) -> Any:
    """Seed the `DistributedSampler` that `prepare_data_loader` put in ``loader`` (it builds it with seed 0, so
    without this every run's data order would be the same whatever its seed); returns ``loader``."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch") and hasattr(sampler, "seed"):
        sampler.seed = int(seed)
    return loader


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and `random` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, num_workers: int, seed: int, drop_last: bool,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentation are reproducible from ``seed``.

    Uses the default samplers (RandomSampler/SequentialSampler), which `prepare_data_loader` recognises
    and replaces by a `DistributedSampler` with the same shuffle setting. No persistent workers: fresh
    workers per pass are what makes a resumed pass identical (and `prepare_data_loader` drops the flag).

    Args:
        ds: the dataset.
        batch_size: images per batch (per training worker under Ray).
        shuffle: draw in random order each pass.
        num_workers: loader processes; 0 loads in the calling process.
        seed: seeds the loader's generator.
        drop_last: drop the last incomplete batch (needed for batch norm on tiny last batches).
        pin_memory: page-lock batches for faster host-to-GPU copies.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise DataError(f"num_workers must be 0 or more, got {num_workers}")
    if drop_last and len(ds) < batch_size:
        raise DataError(f"the dataset has {len(ds)} images, fewer than batch_size {batch_size} with drop_last: "
                        f"the loader would yield no batch")
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                      worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
                      pin_memory=pin_memory)


def _pass_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class InfiniteLoader:
    """Draw batches forever from ``loader``, one pass after another, keeping the iterator between steps.

    At the start of pass k it calls ``loader.sampler.set_epoch(k)`` when the sampler has it (a
    `DistributedSampler`) and re-seeds ``loader.generator`` from (seed, k) when there is one, so each pass is a
    function of the seed and k alone. `state_dict` records the pass and the batches drawn in it; after
    `load_state_dict` the next `next()` restarts that pass and skips the batches already drawn, so a resumed
    search sees the same batches as an uninterrupted one.

    Args:
        loader: a DataLoader, possibly wrapped by `prepare_data_loader`.
        seed: base of the per-pass seeds; defaults to the loader generator's initial seed (else 0).
    """

    def __init__(self, loader: Any, seed: int | None = None):
        self.loader = loader
        generator = getattr(loader, "generator", None)
        self.seed = seed if seed is not None else (generator.initial_seed() if generator is not None else 0)
        self.epoch, self.batch = 0, 0
        self._iterator = None
        self._skip = 0

    def _start_pass(self) -> None:
        set_pass(getattr(self.loader, "dataset", None), self.epoch)
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        generator = getattr(self.loader, "generator", None)
        if generator is not None:
            generator.manual_seed(_pass_seed(self.seed, self.epoch))
        self._iterator = iter(self.loader)
        for _ in range(self._skip):
            next(self._iterator)
        self._skip = 0

    def next(self) -> Any:
        """The next batch, starting a new pass when the current one is exhausted."""
        if self._iterator is None:
            self._start_pass()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self._start_pass()
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise DataError("the loader yields no batches (empty dataset, or fewer images than "
                                "batch_size with drop_last)") from None
        self.batch += 1
        return batch

    __next__ = next

    def __iter__(self) -> InfiniteLoader:
        return self

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at pass ``state["epoch"]`` after ``state.get("batch", 0)`` batches of it."""
        self.epoch, self.batch = int(state["epoch"]), int(state.get("batch", 0))
        self.seed = int(state.get("seed", self.seed))
        self._iterator, self._skip = None, self.batch
