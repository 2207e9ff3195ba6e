"""Scoring architectures with a trained supernet's shared weights: the supernet's validation mIoU of one genotype,
with alpha and beta fixed to it (`SuperNet.forward(x, genotype)`).

Two users:

- path selection (``selection.path: supernet``): the final step scores the ``selection.path_candidates``
  most probable paths under beta (`search_space.decoding.top_paths`), each with the decoded cell, and keeps the
  best. The paper decodes the path by Viterbi alone; with near-uniform beta that is the decoder's prior (paths
  that stay at rates 4 and 32, whose nodes have two outgoing edges instead of three), not something learned.
- validation: the rank correlation between these scores and the retrained mIoU of the same genotypes (does the
  supernet rank architectures at all? Yu et al., "How to Train Your Super-Net", 2020).

Batch-norm statistics were estimated on the mixture of all paths and ops; a single architecture's activations
differ. Before each candidate is scored its statistics are re-estimated on ``selection.recalibration_batches``
trainA batches (the same batches for every candidate), as single-path NAS methods do; the weights are restored
afterwards. Runs in one process (a Ray task or the final actor), no Train, no Tune.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from orchestrator.config import ExperimentConfig, config_from_dict
from orchestrator.data import IGNORE_INDEX, role_dataset, search_splits
from orchestrator.io.checkpointing import read_checkpoint_dir
from orchestrator.train.metrics import confusion_matrix, iou_from_confusion
from search_space import Genotype, SuperNet, decode_cell, decode_path
from search_space.decoding import top_paths


@dataclass(frozen=True)
class TrainedSupernet:
    """A search checkpoint's supernet with its config and class count."""

    net: SuperNet
    cfg: ExperimentConfig
    num_classes: int

    def genotype(self) -> Genotype:
        return Genotype(cell=decode_cell(self.net.alpha), path=decode_path(self.net.beta))


def read_search_state(checkpoint_path: str) -> dict[str, Any]:
    """A search checkpoint's state (a local folder or a storage URI), verified by its SHA-256 first."""
    import ray.train

    with ray.train.Checkpoint(path=checkpoint_path).as_directory() as directory:
        return read_checkpoint_dir(directory)


def load_supernet(checkpoint_path: str, cfg: ExperimentConfig | None = None) -> TrainedSupernet:
    """The supernet of a search checkpoint, with ``cfg`` (default: the config saved in the checkpoint) for its
    data and selection settings."""
    state = read_search_state(checkpoint_path)
    cfg = cfg or config_from_dict(state["config"], f"checkpoint {checkpoint_path}")
    s, num_classes = cfg.search_space, int(state["search_space"]["num_classes"])
    net = SuperNet(num_classes, layers=s.layers, blocks=s.blocks, filter_multiplier=s.filter_multiplier,
                   ops=s.ops, stem_channels=tuple(s.stem_channels), head=s.head, head_mix=s.head_mix)
    net.load_state_dict(state["model"])
    return TrainedSupernet(net.eval(), cfg, num_classes)


def _batches(cfg: ExperimentConfig) -> tuple[list, list]:
    """The validation batches and the recalibration batches (the first trainA batches, drawn once)."""
    d = cfg.data
    val = role_dataset(d, "select", train=False, crop_size=d.crop_size)
    val_batches = list(DataLoader(val, batch_size=d.val_batch_size, shuffle=False))
    calib: list = []
    wanted = cfg.selection.recalibration_batches
    if wanted:
        train = role_dataset(d, "train", train=True, crop_size=d.crop_size)
        train_a, _ = search_splits(train, d.split_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.runtime.seed)
            for x, _ in DataLoader(train_a, batch_size=d.batch_size, shuffle=False, drop_last=True):
                calib.append(x)
                if len(calib) == wanted:
                    break
    return val_batches, calib


@torch.no_grad()
def score_genotypes(trained: TrainedSupernet, genotypes: list[Genotype], threads: int = 1) -> list[float]:
    """The supernet's validation mIoU of each genotype (alpha and beta fixed to it)."""
    net, cfg = trained.net, trained.cfg
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    val_batches, calib = _batches(cfg)
    original = copy.deepcopy(net.state_dict())
    scores = []
    try:
        for genotype in genotypes:
            net.load_state_dict(original)
            net.train()
            for x in calib:
                net(x, genotype=genotype)
            net.eval()
            cm = torch.zeros(trained.num_classes, trained.num_classes, dtype=torch.int64)
            for x, y in val_batches:
                cm += confusion_matrix(net(x, genotype=genotype).argmax(1), y, trained.num_classes, IGNORE_INDEX)
            scores.append(iou_from_confusion(cm)[1])
    finally:
        net.load_state_dict(original)
        net.eval()
        torch.set_num_threads(previous_threads)
    return scores


def select_path(trained: TrainedSupernet, threads: int = 1) -> tuple[Genotype, list[dict[str, Any]]]:
    """The decoded cell on the best-scoring of the ``selection.path_candidates`` most probable paths; returns it
    and one row per candidate (path, log probability under beta, supernet mIoU), most probable first. Ties in
    score go to the more probable path."""
    cell = decode_cell(trained.net.alpha)
    candidates = top_paths(trained.net.beta, trained.cfg.selection.path_candidates)
    genotypes = [Genotype(cell=cell, path=path) for path, _ in candidates]
    scores = score_genotypes(trained, genotypes, threads)
    rows = [{"path": list(path), "log_prob": log_prob, "supernet_miou": score}
            for (path, log_prob), score in zip(candidates, scores, strict=True)]
    best = max(range(len(rows)), key=lambda i: (rows[i]["supernet_miou"], -i))
    return genotypes[best], rows
