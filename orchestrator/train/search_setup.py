"""What a search worker builds before its first step (Auto-DeepLab Sec. 4.2 "Search procedure"): the trainA /
trainB loaders (halves of the train role) and the validation loader (the selection split; the report split is
never read here), the supernet, its two optimizers (SGD for the weights, Adam for alpha and beta),
the per-step cosine learning rate and the class weights of the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from orchestrator.config import ExperimentConfig
from orchestrator.data import DataError, InfiniteLoader, make_loader, role_dataset, search_splits, seed_sampler
from orchestrator.train.metrics import class_weights_from_counts
from orchestrator.train.steps import distributed
from orchestrator.train.worker import all_reduce
from search_space import SuperNet


@dataclass
class SearchData:
    """The search's three loaders and the facts about the dataset the loop needs."""

    train_a: InfiniteLoader  # weights
    train_b: InfiniteLoader  # alpha and beta
    val: Any  # this worker's shard of the validation set, moved to the device by prepare_data_loader
    steps_per_epoch: int
    classes: list[str]
    num_classes: int
    ignore_index: int
    train_ds: Any


def build_data(cfg: ExperimentConfig, rank: int, world: int) -> SearchData:
    """Datasets, the trainA/trainB halves and loaders; sharding and devices via ``prepare_data_loader``."""
    d = cfg.data
    train = role_dataset(d, "train", train=True, crop_size=d.crop_size)
    val = role_dataset(d, "select", train=False, crop_size=d.crop_size)  # never the report split
    train_a, train_b = search_splits(train, d.split_seed)
    if min(len(train_a), len(train_b)) < d.batch_size * world:
        raise DataError(f"data: trainA/trainB have {len(train_a)}/{len(train_b)} images, fewer than "
                         f"data.batch_size ({d.batch_size}) x scaling.num_workers ({world}): no full batch")

    def infinite(ds: Any, seed: int) -> InfiniteLoader:
        loader = make_loader(ds, d.batch_size, shuffle=True, num_workers=d.loader_workers, seed=seed,
                             drop_last=True,  # drop_last: a 1-image batch breaks batch norm at rate 32
                             pin_memory=cfg.scaling.use_gpu)  # page-locked: Ray's copy to the GPU overlaps
        # prepare_data_loader's DistributedSampler has seed 0; seeded here, the data order follows runtime.seed
        return InfiniteLoader(seed_sampler(ray.train.torch.prepare_data_loader(loader), seed))

    loader_a = infinite(train_a, cfg.runtime.seed)
    loader_b = infinite(train_b, cfg.runtime.seed + 1)
    steps = len(loader_a.loader)
    if cfg.search.max_steps_per_epoch:
        steps = min(steps, cfg.search.max_steps_per_epoch)
    # Every rank must run the same number of DDP steps; DistributedSampler already pads shards to equal size.
    steps = int(all_reduce(torch.tensor(float(steps)), dist.ReduceOp.MIN)) if distributed() else steps
    # Validation: a plain strided shard (no padding, so no image counts twice), evaluated without DDP.
    shard = Subset(val, list(range(rank, len(val), world)))
    val_loader = DataLoader(shard, batch_size=d.val_batch_size, shuffle=False, num_workers=d.loader_workers)
    val_loader = ray.train.torch.prepare_data_loader(val_loader, add_dist_sampler=False)
    return SearchData(loader_a, loader_b, val_loader, steps, list(train.classes), train.num_classes,
                      train.ignore_index, train_a)


def build_model(cfg: ExperimentConfig, num_classes: int) -> SuperNet:
    s = cfg.search_space
    return SuperNet(num_classes, layers=s.layers, blocks=s.blocks, filter_multiplier=s.filter_multiplier,
                    ops=s.ops, stem_channels=tuple(s.stem_channels), checkpoint_cells=cfg.runtime.checkpoint_levels,
                    recompute_units=cfg.runtime.recompute_units, head=s.head, head_mix=s.head_mix)


def make_optimizers(net: SuperNet, cfg: ExperimentConfig) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """SGD for the weights, Adam for alpha and beta (the paper's optimizers; values from the config)."""
    s = cfg.search
    weights = torch.optim.SGD(net.weight_parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    arch = torch.optim.Adam(net.arch_parameters(), lr=s.arch_lr, betas=tuple(s.arch_betas),
                            weight_decay=s.arch_weight_decay)
    return weights, arch


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """The weight learning rate at ``step`` of ``total``: cosine from ``lr`` (step 0) towards ``lr_min``."""
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def class_weights(ds: Any, num_classes: int, ignore_index: int, samples: int = 64) -> torch.Tensor:
    """Loss weights from the label frequencies of up to ``samples`` trainA images (same on every rank).

    Augmentation draws from the global RNG, so the count runs inside ``fork_rng``: it must not shift the
    random stream the search itself uses.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i in range(min(samples, len(ds))):
            label = ds[i][1]
            label = label[label != ignore_index]
            counts += torch.bincount(label.flatten(), minlength=num_classes).double()
    return class_weights_from_counts(counts)
