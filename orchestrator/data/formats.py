"""The on-disk formats: where each split's image/label pairs are, the class names, and the label lookup table
from stored values to training ids (facts in docs/notes/data-formats.md).

- ``cityscapes``: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/{split}/{city}/
  *_gtFine_labelIds.png``; labelIds -> the 19 trainIds, every other id -> 255.
- ``voc``: ``JPEGImages/{id}.jpg`` with palette ``SegmentationClass/{id}.png`` read as indices; ids from
  ``ImageSets/Segmentation/{split}.txt``; 21 classes, 255 kept as ignore. Root: ``VOC2012``, ``VOCdevkit``
  or their parent.
- ``ade20k``: ``ADEChallengeData2016/{images,annotations}/{training,validation}``; 0 -> 255, v -> v - 1.
  Class names from ``objectInfo150.csv`` (or the ``.txt`` of the challenge zip) when present.
- ``folder``: ``classes.txt`` (one name per line, line i = class i), ``images/`` and ``masks/`` with matching
  stems (masks: 8-bit PNGs of class indices, 255 = ignore); a split is ``splits/{split}.txt`` (stems, one a
  line) or the subfolder ``{split}/images`` + ``{split}/masks``; split ``all`` takes every pair.

Each lister returns the sorted pairs and raises `DataError` for a missing root or folder, an empty split,
or an image without a label (or the reverse), naming the path and what was expected.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.data.common import IGNORE_INDEX, INVALID, DataError, identity_lut

Pair = tuple[Path, Path]
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_TRAIN_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
"""labelId of each trainId, in trainId order."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass(frozen=True)
class Format:
    """One on-disk layout: its splits, how to list a split, its classes, and its label lookup table."""

    splits: tuple[str, ...]
    list_pairs: Callable[[Path, str], list[Pair]]
    classes: Callable[[Path], tuple[str, ...]]
    lut: Callable[[int], np.ndarray]
    valid: str
    """Human description of the valid stored label values, for error messages."""


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} does not exist or is not a folder: expected {what}")
    return path


def _by_stem(folder: Path, exts: tuple[str, ...], suffix: str = "") -> dict[str, Path]:
    """Files in ``folder`` (recursively) ending with ``suffix`` + one of ``exts``, keyed by relative stem."""
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in exts or not p.stem.endswith(suffix):
            continue
        rel = str(p.relative_to(folder).with_suffix(""))
        key = rel[: len(rel) - len(suffix)]
        if key in found:
            raise DataError(f"{found[key]} and {p} have the same name stem: expected one file per stem")
        found[key] = p
    return found


def _match(images: dict[str, Path], labels: dict[str, Path], image_hint: str, label_hint: str) -> list[Pair]:
    """Pair files by key; raise naming the first few unmatched files and where their partner was expected."""
    lonely_images = sorted(set(images) - set(labels))
    lonely_labels = sorted(set(labels) - set(images))
    if lonely_images:
        shown = ", ".join(str(images[k]) for k in lonely_images[:3])
        raise DataError(f"{len(lonely_images)} image(s) without a label, e.g. {shown}: expected a label at "
                        f"{label_hint.format(key=lonely_images[0])}")
    if lonely_labels:
        shown = ", ".join(str(labels[k]) for k in lonely_labels[:3])
        raise DataError(f"{len(lonely_labels)} label(s) without an image, e.g. {shown}: expected an image at "
                        f"{image_hint.format(key=lonely_labels[0])}")
    return [(images[k], labels[k]) for k in sorted(images)]


def _nonempty(pairs: list[Pair], where: Path, split: str) -> list[Pair]:
    if not pairs:
        raise DataError(f"split {split!r} under {where} is empty: expected at least one image/label pair")
    return pairs


def _cityscapes_pairs(root: Path, split: str) -> list[Pair]:
    img_dir = _require_dir(root / "leftImg8bit" / split, f"images leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    lab_dir = _require_dir(root / "gtFine" / split, f"labels gtFine/{split}/<city>/*_gtFine_labelIds.png")
    images = _by_stem(img_dir, (".png",), "_leftImg8bit")
    labels = _by_stem(lab_dir, (".png",), "_gtFine_labelIds")
    pairs = _match(images, labels, f"{img_dir}/{{key}}_leftImg8bit.png", f"{lab_dir}/{{key}}_gtFine_labelIds.png")
    return _nonempty(pairs, img_dir, split)


def _cityscapes_lut(num_classes: int) -> np.ndarray:
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[:34] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX  # labelId -1 (license plate) stored as 255
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_IDS):
        lut[label_id] = train_id
    return lut


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"no PASCAL VOC 2012 under {root}: expected {root}/JPEGImages, {root}/VOC2012/JPEGImages "
                    f"or {root}/VOCdevkit/VOC2012/JPEGImages")


def _voc_pairs(root: Path, split: str) -> list[Pair]:
    base = _voc_root(root)
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"VOC split list {listing} does not exist: expected one image id per line")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    pairs = []
    for i in ids:
        image, label = base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png"
        if not label.is_file():
            raise DataError(f"image {image} (id {i!r} in {listing}) has no label: expected {label}")
        if not image.is_file():
            raise DataError(f"label {label} (id {i!r} in {listing}) has no image: expected {image}")
        pairs.append((image, label))
    return _nonempty(pairs, listing, split)


def _ade_root(root: Path) -> Path:
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


def _ade_pairs(root: Path, split: str) -> list[Pair]:
    base, sub = _ade_root(root), {"train": "training", "val": "validation"}[split]
    img_dir = _require_dir(base / "images" / sub, f"ADE20K images ADEChallengeData2016/images/{sub}/*.jpg")
    lab_dir = _require_dir(base / "annotations" / sub, f"ADE20K labels ADEChallengeData2016/annotations/{sub}/*.png")
    images, labels = _by_stem(img_dir, (".jpg", ".jpeg", ".png")), _by_stem(lab_dir, (".png",))
    return _nonempty(_match(images, labels, f"{img_dir}/{{key}}.jpg", f"{lab_dir}/{{key}}.png"), img_dir, split)


def _ade_classes(root: Path) -> tuple[str, ...]:
    """Names from objectInfo150.csv (comma) or objectInfo150.txt (tab); ``class_{i}`` when neither is there."""
    base = _ade_root(root)
    for name, delimiter in (("objectInfo150.csv", ","), ("objectInfo150.txt", "\t")):
        path = base / name
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
        try:
            names = tuple(row["Name"].split(";")[0].strip() for row in sorted(rows, key=lambda r: int(r["Idx"])))
        except (KeyError, ValueError):
            raise DataError(f"{path}: expected columns Idx, Ratio, Train, Val, Name with integer Idx") from None
        if len(names) != 150:
            raise DataError(f"{path} lists {len(names)} classes: expected 150")
        return names
    return tuple(f"class_{i}" for i in range(1, 151))


def _ade_lut(num_classes: int) -> np.ndarray:
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[0] = IGNORE_INDEX
    lut[1:151] = np.arange(150)
    return lut


def _folder_classes(root: Path) -> tuple[str, ...]:
    path = root / "classes.txt"
    if not path.is_file():
        raise DataError(f"class list {path} does not exist: expected one class name per line (line i = class i)")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not 1 <= len(names) <= IGNORE_INDEX:
        raise DataError(f"{path} lists {len(names)} classes: expected between 1 and 255 (255 is the ignore label)")
    return names


def _folder_pairs(root: Path, split: str) -> list[Pair]:
    listing, subdir = root / "splits" / f"{split}.txt", root / split
    if (subdir / "images").is_dir():
        base, keep = subdir, None
    elif listing.is_file():
        base = root
        keep = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif split == "all":
        base, keep = root, None
    else:
        raise DataError(f"folder dataset {root} has no split {split!r}: expected {listing} (image stems, one a "
                        f"line) or {subdir}/images and {subdir}/masks (or use split 'all')")
    img_dir = _require_dir(base / "images", "a folder of images")
    lab_dir = _require_dir(base / "masks", "a folder of index masks (PNG) named like the images")
    images, labels = _by_stem(img_dir, IMAGE_EXTS), _by_stem(lab_dir, (".png",))
    if keep is not None:
        for stem in keep:
            if stem not in images and stem not in labels:
                raise DataError(f"{listing} lists {stem!r} but {img_dir} has no image with that stem")
        wanted = set(keep)
        images = {k: v for k, v in images.items() if k in wanted}
        labels = {k: v for k, v in labels.items() if k in wanted}
    pairs = _match(images, labels, f"{img_dir}/{{key}}.<png|jpg>", f"{lab_dir}/{{key}}.png")
    return _nonempty(pairs, listing if keep is not None else img_dir, split)


FORMATS: dict[str, Format] = {
    "cityscapes": Format(("train", "val", "test"), _cityscapes_pairs, lambda root: CITYSCAPES_CLASSES,
                         _cityscapes_lut, "Cityscapes labelIds 0-33 (or 255)"),
    "voc": Format(("train", "val", "trainval"), _voc_pairs, lambda root: VOC_CLASSES, identity_lut,
                  "VOC palette indices 0-20 or 255"),
    "ade20k": Format(("train", "val"), _ade_pairs, _ade_classes, _ade_lut, "ADE20K values 0-150"),
    "folder": Format(("train", "val", "test", "trainval", "all"), _folder_pairs, _folder_classes, identity_lut,
                     "class indices 0..{n} or 255"),
}
"""Every file-backed format, by the name `load_dataset` takes."""
