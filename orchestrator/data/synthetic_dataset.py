"""`SyntheticSegmentation`: a split of the embedded synthetic task as a torch Dataset.

Three tasks share it (``task``): ``multi``, the default multi-cue task (`synthetic`), and the two variants whose
right path is known, ``detail`` and ``context`` (`known_answer`). Every sample is a function of (task seed, split,
sample id) alone, so the train, val and test splits are independent streams that never share an image.

A fixed split (the default) holds the same ``size`` images in every pass. A ``fresh`` split draws new ones each
pass: pass k's index i is sample id ``k * size + i``, so a network never sees an image twice and cannot
memorise the training set, at the cost of generating each image when it is drawn (about 7 ms at 64 px). The
loaders call `set_epoch` with the pass number before each pass (`loaders.set_pass`), which keeps a resumed run's
images identical to an uninterrupted one's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from orchestrator.data import known_answer, synthetic
from orchestrator.data.common import IGNORE_INDEX, DataError
from orchestrator.data.transforms import to_tensors


def generate(seed: int, split: str, index: int, size: int, task: str = "multi") -> tuple[np.ndarray, np.ndarray]:
    """One sample of ``task``: uint8 size x size x 3 image and uint8 label, a function of its arguments."""
    if task == "multi":
        return synthetic.generate(seed, split, index, size)
    return known_answer.generate(seed, split, index, size, task)


class SyntheticSegmentation(Dataset):
    """A split of the synthetic task; the transform is applied to each generated sample.

    Args:
        split: "train", "val" or "test" (independent streams of samples).
        size: number of images (per pass, with ``fresh``).
        image_size: side of the generated square images, in pixels.
        seed: the task seed; with split and sample id it determines every sample.
        transform: a joint (image, label) transform on normalized tensors, or None.
        cache: keep generated samples in memory (about 16 KB per 64 px image) instead of regenerating them.
        task: "multi" (default), "detail" or "context" (`known_answer.TASKS`).
        fresh: new images every pass (see the module docstring); excludes ``cache``.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, split: str, size: int, image_size: int = 96, seed: int = 0, transform=None,
                 cache: bool = False, task: str = "multi", fresh: bool = False):
        if split not in synthetic.SPLITS:
            raise DataError(f"synthetic dataset has no split {split!r}: expected one of {', '.join(synthetic.SPLITS)}")
        if size < 1:
            raise DataError(f"synthetic split {split!r}: size must be at least 1 image, got {size}")
        if image_size < 32:
            raise DataError(f"synthetic image_size must be at least 32 px (objects need room), got {image_size}")
        if task not in known_answer.TASKS:
            raise DataError(f"synthetic task {task!r} is unknown: expected one of {', '.join(known_answer.TASKS)}")
        if fresh and cache:
            raise DataError("synthetic options fresh and cache exclude each other: a fresh split draws new images "
                            "every pass, so there is nothing to keep; set one of them to false")
        self.split, self.size, self.image_size, self.seed, self.transform = split, size, image_size, seed, transform
        self.task, self.fresh, self.pass_index = task, bool(fresh), 0
        self.classes = known_answer.TASKS[task]
        self.num_classes = len(self.classes)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, pass_index: int) -> None:
        """Which pass the next draws belong to (only a ``fresh`` split changes its images)."""
        self.pass_index = int(pass_index)

    def sample_id(self, index: int) -> int:
        """The generator's id of the image at ``index`` in the current pass."""
        return self.pass_index * self.size + index if self.fresh else index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for synthetic split of {self.size} images")
        image, label = to_tensors(*self.raw(index))
        return self.transform(image, label) if self.transform is not None else (image, label)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The generated uint8 image and label at ``index`` (of the current pass), before any transform."""
        sample = self.sample_id(index)
        if self._cache is None:
            return generate(self.seed, self.split, sample, self.image_size, self.task)
        if sample not in self._cache:
            self._cache[sample] = generate(self.seed, self.split, sample, self.image_size, self.task)
        return self._cache[sample]

    def class_weights(self, samples: int = 64) -> torch.Tensor:
        """Loss weights 1/sqrt(pixel frequency) over the first ``samples`` images, normalized to mean 1."""
        counts = np.zeros(self.num_classes)
        for i in range(min(samples, self.size)):
            counts += np.bincount(self.raw(i)[1].ravel(), minlength=self.num_classes)
        weights = 1.0 / np.sqrt(np.maximum(counts / counts.sum(), 1e-4))
        return torch.tensor(weights / weights.mean(), dtype=torch.float32)
