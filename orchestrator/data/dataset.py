"""`load_dataset`, the one entry point to every dataset, and `FileSegmentation`, the file-backed dataset.

Bad input is caught as early as it can be: the file list is validated when the dataset is built (root,
split, pairing), a seeded sample of pairs is read and checked (readable, same size, label values), and
every load checks its own pair again, so a bad file is reported with its path before or during training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from orchestrator.data.common import (
    IGNORE_INDEX,
    DataError,
    check_label,
    check_same_size,
    map_label,
    open_image,
    read_image,
    read_label,
)
from orchestrator.data.fast_crop import train_crop
from orchestrator.data.formats import FORMATS, Pair
from orchestrator.data.remote import local_root
from orchestrator.data.synthetic import DEFAULT_SIZE
from orchestrator.data.synthetic_dataset import SyntheticSegmentation
from orchestrator.data.transforms import EvalTransform, TrainTransform, to_tensors

DATASETS: tuple[str, ...] = ("synthetic", *FORMATS)
"""Names `load_dataset` accepts."""

_COMMON_OPTIONS = {"scale_range", "flip", "eval_crop"}
_OPTIONS = {"synthetic": _COMMON_OPTIONS | {"size", "image_size", "cache", "task", "fresh"}}
_FILE_OPTIONS = _COMMON_OPTIONS | {"check_samples"}


class FileSegmentation(Dataset):
    """Image/label pairs on disk, labels mapped through a lookup table to training ids (255 = ignore).

    Args:
        pairs: (image path, label path) per sample.
        classes: class names, index = training id.
        lut: 256-entry table from stored label value to training id, 255, or invalid.
        valid: description of valid stored values, for errors.
        transform: joint transform on normalized tensors, or None.
        check_samples: pairs to read and check now (None = all, 0 = none).
        seed: chooses which pairs are checked.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, pairs: list[Pair], classes: tuple[str, ...], lut: np.ndarray, valid: str, transform=None,
                 check_samples: int | None = 8, seed: int = 0):
        self.pairs, self.classes, self.lut, self.valid, self.transform = pairs, classes, lut, valid, transform
        self.num_classes = len(classes)
        n = len(pairs)
        count = n if check_samples is None else min(max(check_samples, 0), n)
        for i in sorted(np.random.default_rng(seed).choice(n, size=count, replace=False)):
            self.load(int(i))

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked pair at ``index``: uint8 H x W x 3 image and int64 H x W training ids."""
        image_path, label_path = self.pairs[index]
        image, raw = read_image(image_path), read_label(label_path)
        check_same_size(image.shape[:2], raw.shape, image_path, label_path)
        return image, map_label(raw, self.lut, label_path, self.valid)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.transform, TrainTransform):  # the fast path: work on the crop only (`fast_crop`)
            image_path, label_path = self.pairs[index]
            image, raw = open_image(image_path), read_label(label_path)
            check_same_size((image.height, image.width), raw.shape, image_path, label_path)
            check_label(raw, self.lut, label_path, self.valid)
            return train_crop(image, raw, self.lut, self.transform)
        image, label = to_tensors(*self.load(index))
        return self.transform(image, label) if self.transform is not None else (image, label)


def _transform(train: bool, crop_size: int, scale_range, flip: bool, eval_crop: bool):
    if train:
        return TrainTransform(crop_size, scale_range, flip)
    return EvalTransform(crop_size if eval_crop else None)


def load_dataset(name: str, root: str | Path | None, split: str, *, train: bool, crop_size: int, seed: int = 0,
                 **options: Any) -> Dataset:
    """A segmentation dataset of (normalized float image 3 x H x W, int64 label H x W), 255 = ignore.

    The result has ``classes`` (names), ``num_classes`` and ``ignore_index`` (255).

    Args:
        name: one of `DATASETS`: "synthetic" (embedded, no files) or an on-disk format (see `formats`).
        root: the dataset folder, or a storage URI copied once per node (`remote`); ignored for "synthetic".
        split: "train" or "val"; also "test" (synthetic, cityscapes, folder), "trainval" (voc, folder),
            "all" (folder).
        train: training augmentation (random scale, pad with ignore, random crop, flip) or the
            deterministic evaluation transform (full image, or a centre crop with ``eval_crop``).
        crop_size: side of training crops (and of evaluation crops with ``eval_crop``).
        seed: synthetic task seed; for files, which pairs are sample-checked.
        **options:
            scale_range: (low, high) random scale for training; default (0.5, 2.0), for synthetic (1, 1)
                because the generator already draws object scales and rescaling would blur 1 px curves away.
            flip: random horizontal flip in training (default True).
            eval_crop: centre-crop evaluation images to ``crop_size`` (default False: full images).
            size: synthetic only, number of images (default 512 train, 256 val, 512 test).
            image_size: synthetic only, side of generated images (default ``crop_size``).
            cache: synthetic only, keep generated samples in memory (default False).
            task: synthetic only, "multi" (default), or a known-answer variant "detail" or "context".
            fresh: synthetic only, new images every pass (default False; see `synthetic_dataset`).
            check_samples: files only, pairs read and checked up front (default 8; None = all, 0 = none).

    Raises:
        DataError: unknown name, split or option; missing root; bad files (see `formats`).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    allowed = _OPTIONS.get(name, _FILE_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DataError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)}: "
                        f"expected some of {', '.join(sorted(allowed))}")
    default_scale = (1.0, 1.0) if name == "synthetic" else (0.5, 2.0)
    transform = _transform(train, crop_size, options.get("scale_range", default_scale), options.get("flip", True),
                           options.get("eval_crop", False))
    if name == "synthetic":
        size = options.get("size", DEFAULT_SIZE.get(split, 64))
        return SyntheticSegmentation(split, size, options.get("image_size", crop_size), seed, transform,
                                     options.get("cache", False), options.get("task", "multi"),
                                     options.get("fresh", False))
    return _file_dataset(name, root, split, transform, options.get("check_samples", 8), seed)


def _file_dataset(name: str, root: str | Path | None, split: str, transform, check_samples: int | None,
                  seed: int) -> FileSegmentation:
    fmt = FORMATS[name]
    if root is None or str(root) == "":
        raise DataError(f"dataset {name!r} needs a root folder; only 'synthetic' runs without files")
    root = Path(local_root(str(root))).expanduser()  # a storage URI: this node's verified copy (`remote`)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder: expected the {name} dataset there")
    if split not in fmt.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}: expected one of {', '.join(fmt.splits)}")
    classes = fmt.classes(root)
    lut = fmt.lut(len(classes))
    pairs = fmt.list_pairs(root, split)
    valid = fmt.valid.format(n=len(classes) - 1)
    return FileSegmentation(pairs, classes, lut, valid, transform, check_samples, seed)
