"""Is a known-answer task's right path really right? Train single-path networks that differ only in their path.

For each task variant (`orchestrator.data.known_answer`) and each of a few cells, the discrete network of every
path in `PATHS` with the supernet's own search head (`DiscreteNet(head="search")`: the single-path network the
supernet's mixture is made of, without the retrain network's decoder, which restores detail for any path) is
trained the same way from the same seed and scored on the report split. The task's answer holds when the paths on
its right side beat those on the wrong side with every cell, each cell's paths compared with each other. No Ray:
one process, plain loops (used by `experiments/studies/known_answer.py` and its test).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from orchestrator.data import load_dataset, make_loader, set_pass
from orchestrator.train.metrics import confusion_matrix, iou_from_confusion
from search_space import DiscreteNet, Genotype

PATHS = {"stride4": (0, 0, 0, 0), "stride8": (0, 1, 1, 1), "stride16": (1, 2, 2, 2), "stride32": (1, 2, 3, 3)}
"""Four-layer paths ending at each rate (the default search has L = 4)."""
RIGHT = {"detail": ("stride4",), "context": ("stride16", "stride32")}
WRONG = {"detail": ("stride16", "stride32"), "context": ("stride4",)}
"""The side of the trellis each task is built for (detail stays fine, context descends) and the side it is built
against; stride 8 sits between and counts for neither."""


def verdict(task: str, path: list[int] | tuple[int, ...]) -> bool:
    """Whether a decoded path is on the task's right side: shallow (never below stride 8) for detail, deep
    (reaching stride 16 or 32) for context."""
    return max(path) <= 1 if task == "detail" else max(path) >= 2


@dataclass(frozen=True)
class Budget:
    """How each network trains: images per epoch (fresh each epoch), epochs, batch, side, F, and the report
    split's size."""

    images: int = 64
    epochs: int = 40
    batch: int = 8
    image_size: int = 64
    filter_multiplier: int = 4
    test_images: int = 128
    lr: float = 0.05


def train_and_score(task: str, genotype: Genotype, budget: Budget, seed: int = 0) -> float:
    """Test mIoU of the search-head network of ``genotype`` after SGD with a poly schedule on fresh images."""
    train = load_dataset("synthetic", None, "train", train=True, crop_size=budget.image_size, task=task,
                         fresh=True, size=budget.images)
    test = load_dataset("synthetic", None, "test", train=False, crop_size=budget.image_size, task=task,
                        size=budget.test_images, cache=True)
    torch.manual_seed(seed)
    net = DiscreteNet(genotype, train.num_classes, filter_multiplier=budget.filter_multiplier,
                      stem_channels=(16, 16, 32), head="search")
    opt = torch.optim.SGD(net.parameters(), lr=budget.lr, momentum=0.9, weight_decay=4e-5)
    loader = make_loader(train, budget.batch, shuffle=True, num_workers=0, seed=seed, drop_last=True)
    total, step = budget.epochs * len(loader), 0
    for epoch in range(budget.epochs):
        set_pass(train, epoch)
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = budget.lr * (1 - step / total) ** 0.9
            loss = F.cross_entropy(net(x), y, ignore_index=train.ignore_index)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    net.eval()
    cm = torch.zeros(train.num_classes, train.num_classes, dtype=torch.int64)
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=16):
            cm += confusion_matrix(net(x).argmax(1), y, train.num_classes, train.ignore_index)
    return float(iou_from_confusion(cm)[1])


def check_task(task: str, cells: list, budget: Budget, seed: int = 0) -> dict:
    """Every path of `PATHS` with every cell: the scores, the mean per path, and the margin between the sides.

    A cell's margin is its worst right-side path's score minus its best wrong-side path's score (same cell, same
    seed: paired); ``margin`` is their mean. The answer ``holds`` when the right side wins with every cell, not
    only on average: paths that differ by less than the spread between cells are not a known answer (the study
    adds a bootstrap interval of the margin over cells)."""
    scores = {name: [train_and_score(task, Genotype(cell=cell, path=path), budget, seed) for cell in cells]
              for name, path in PATHS.items()}
    means = {name: statistics.fmean(v) for name, v in scores.items()}
    per_cell = [min(scores[n][i] for n in RIGHT[task]) - max(scores[n][i] for n in WRONG[task])
                for i in range(len(cells))]
    return {"task": task, "scores": scores, "means": means, "right": list(RIGHT[task]), "wrong": list(WRONG[task]),
            "cell_margins": per_cell, "margin": statistics.fmean(per_cell), "holds": min(per_cell) > 0}
