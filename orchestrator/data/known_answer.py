"""Two variants of the synthetic task whose right network path is known in advance (``data.options.task``).

- ``detail``: only fine detail matters. Discs and one-pixel rings of the same size and colours, and wiggly
  curves among straight look-alike lines, on a textured background; every object is 2-4 px across, and the
  labelled classes differ only in a pixel or two. A stride-32 map of a 64 px image is 2x2 and cannot outline
  any of them: a path that stays at stride 4-8 is the right answer.
- ``context``: only large-scale context matters. The image's four quadrants are each warm or cool (both
  families in every image); each is sprinkled with small speckles, a slight majority of them (54-58%) from its
  family and the rest from the other, on the same neutral grey everywhere. A quadrant's class is its majority
  family. A window of a few pixels holds a speckle or two of either family and cannot tell; only an average over
  most of the quadrant can. The labels are the quadrants, which a stride-32 map of a 64 px image (2x2) outlines
  exactly and a stride-16 map (4x4) well. It was built for paths that descend to stride 16-32; measured, it
  does not reward them: single-path networks score best at stride 8, with every cell tried, and stride 16-32 do
  not beat stride 4 with every cell (docs/validation.md). Its known answer is therefore not "deep".

Whether a path is right is measured, not assumed: `experiments/studies/known_answer.py` retrains a network per
path on each task, cell by cell, and reports their mIoU (docs/validation.md). Each sample is a function of (seed,
split, index) only, as in the default task, on a random stream of its own per task.
"""

from __future__ import annotations

import math

import numpy as np

from orchestrator.data import synthetic as base

DETAIL_CLASSES = ("background", "disc", "ring", "curve")
CONTEXT_CLASSES = ("region_warm", "region_cool")
TASKS = {"multi": base.CLASSES, "detail": DETAIL_CLASSES, "context": CONTEXT_CLASSES}
"""Task name -> its classes (index = label value)."""
TASK_STREAMS = {"multi": None, "detail": 1, "context": 2}
"""An extra word in each variant's random seed, so no two tasks share a sample."""


def _detail(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    gray = 0.5 + 0.12 * base._texture_patch(rng, size, int(rng.integers(3)))
    image = gray[..., None] * (2 * base._colour(rng, 0.3, 0.7))
    label = np.zeros((size, size), dtype=np.uint8)
    yy, xx = base._grid(size)
    area = (size / 64) ** 2
    for _ in range(int(rng.integers(30, 45) * area)):
        ring = rng.random() < 0.5
        r, cy, cx = (float(v) for v in rng.uniform((2.0, 0, 0), (4.0, size, size)))
        y0, y1 = int(max(cy - r - 1, 0)), int(min(cy + r + 2, size))
        x0, x1 = int(max(cx - r - 1, 0)), int(min(cx + r + 2, size))
        d2 = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2
        shape = (d2 <= r * r) & (d2 > (r - 1.2) ** 2) if ring else d2 <= r * r
        colour = base._colour(rng, 0.0, 1.0)
        colour[rng.integers(3)] = rng.choice([0.0, 1.0])
        image[y0:y1, x0:x1][shape] = colour
        label[y0:y1, x0:x1][shape] = 2 if ring else 1
    count = int(rng.integers(4, 7) * math.sqrt(area))
    for k in range(2 * count):
        pts = base._line_points(rng, size, wiggle=k < count)
        image[pts[:, 0], pts[:, 1]] = base._colour(rng, 0.0, 1.0)
        label[pts[:, 0], pts[:, 1]] = 3 if k < count else 0
    return image, label


CONTEXT_DENSITY = 0.2
CONTEXT_MAJORITY = (0.54, 0.58)
"""Share of speckled pixels, and the range of a quadrant's majority share (drawn per image)."""


def _context(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Four quadrants, each warm or cool (both families in every image), sprinkled with speckles of which a
    slight majority come from the quadrant's family: only an average over most of a quadrant tells."""
    yy, xx = base._grid(size)
    quadrant = (yy >= size // 2).astype(np.int64) * 2 + (xx >= size // 2)
    families = rng.permutation([0, 1] + list(rng.integers(0, 2, size=2)))
    image = np.full((size, size, 3), 0.5, dtype=np.float32) + 0.04 * rng.standard_normal((size, size, 3),
                                                                                           np.float32)
    label = families[quadrant].astype(np.uint8)
    speckles = rng.random((size, size)) < CONTEXT_DENSITY
    majority = rng.random((size, size)) < rng.uniform(*CONTEXT_MAJORITY)
    warm = np.where(majority, label == 0, label == 1)
    ranges = (base.WARM, base.COOL)
    for fam, where in ((0, speckles & warm), (1, speckles & ~warm)):
        n = int(where.sum())
        image[where] = np.stack([rng.uniform(*r, size=n) for r in ranges[fam]], axis=1)
    return image, label


GENERATORS = {"detail": _detail, "context": _context}


def generate(seed: int, split: str, index: int, size: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """One sample of ``task`` ("detail" or "context"): uint8 image and label, a function of its arguments."""
    rng = np.random.default_rng([seed, base.SPLITS[split], index, TASK_STREAMS[task]])
    image, label = GENERATORS[task](rng, size)
    image = image + 0.02 * rng.standard_normal(image.shape, np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), label
