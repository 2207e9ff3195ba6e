"""Segmentation and architecture metrics: confusion-matrix mIoU, entropies of alpha and beta, class weights,
parameter-free ops of a genotype.

The confusion matrix is the one sufficient statistic for mIoU: workers each accumulate theirs over their shard
of the validation set, the matrices are summed across workers (an all-reduce of integers, exact), and every
worker derives the same IoUs from the sum. Rows are the true class, columns the prediction; pixels labelled
``ignore_index`` are left out entirely.
"""

from __future__ import annotations

import math

import torch

from search_space.genotypes import Genotype
from search_space.operations import PARAMETER_FREE
from search_space.trellis import beta_mask, end_level_probs, transition_probs


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``[C, C]`` int64 counts of (true class, predicted class) over the pixels not labelled ``ignore_index``.

    Args:
        pred: predicted class per pixel (any shape).
        target: true class per pixel, same shape; values outside 0..C-1 other than ``ignore_index`` are an error.
        num_classes: C.
        ignore_index: label value excluded from the counts.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {list(pred.shape)} differs from target shape {list(target.shape)}")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target holds class ids outside 0..{num_classes - 1} (and not {ignore_index})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_from_confusion(cm: torch.Tensor) -> tuple[list[float], float]:
    """Per-class IoU and their mean. A class absent from both labels and predictions has IoU NaN and is left
    out of the mean (it says nothing about the model); the mean of no classes is NaN."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return [float(v) for v in iou], miou


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = float(cm.sum())
    return float(cm.diag().sum()) / total if total else float("nan")


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row; zero-probability entries contribute 0."""
    logp = torch.where(probs > 0, probs.log(), torch.zeros_like(probs))
    return -(probs * logp).sum(-1)


def alpha_entropy(alpha: torch.Tensor) -> float:
    """Mean entropy (nats) of the op distribution on each cell edge; ln(8) = 2.08 is uniform, 0 is one op."""
    return float(_entropy(torch.softmax(alpha.detach().double().cpu(), dim=-1)).mean())


def _node_entropies(beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[L, 4]`` entropy (nats) of each node's outgoing transition distribution, and the mask of reachable
    nodes (the others have no edges and entropy 0)."""
    beta = beta.detach().double().cpu()
    return _entropy(transition_probs(beta)), beta_mask(beta.shape[0]).any(-1)


def beta_entropy(beta: torch.Tensor) -> float:
    """Mean entropy (nats) of the outgoing transition distribution of every reachable trellis node."""
    entropy, reachable = _node_entropies(beta)
    return float(entropy[reachable].mean())


def beta_entropy_per_layer(beta: torch.Tensor) -> list[float]:
    """Per row of beta, the mean entropy (nats) of the outgoing transitions of that layer's reachable nodes.

    Entry l is the choice made leaving layer l (0: the stem, one node with two edges, at most ln 2), so a
    layer whose entry falls to 0 has settled where its path goes next.
    """
    entropy, reachable = _node_entropies(beta)
    return [float(row[mask].mean()) for row, mask in zip(entropy, reachable, strict=True)]


def end_levels(beta: torch.Tensor) -> list[float]:
    """The probability that beta's path ends at each level (`trellis.end_level_probs`; 0.31 0.37 0.23 0.09 at
    L=4 with beta at zero). The plainest sign that beta learns where the path should go: it moves away from its
    start in one direction, the same for every seed."""
    return [float(p) for p in end_level_probs(transition_probs(beta))]


def param_free_ops(genotype: Genotype) -> int:
    """How many of the cell's ops have no weights (`PARAMETER_FREE`: pooling and skip). Many of them is the
    known failure of differentiable search (DARTS collapse), so a rising count is a warning sign."""
    return sum(op in PARAMETER_FREE for block in genotype.cell for op, _ in block)


def class_weights_from_counts(counts: torch.Tensor, c: float = 1.02) -> torch.Tensor:
    """ENet-style class weights ``1 / ln(c + frequency)`` from pixel counts per class (the public port's
    choice); classes never seen get the largest weight, 1 / ln(c)."""
    freq = counts.double() / max(float(counts.sum()), 1.0)
    return (1.0 / torch.log(c + freq)).float()


def nan_to_none(values: list[float]) -> list[float | None]:
    """NaNs as None, for strict-JSON consumers."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
