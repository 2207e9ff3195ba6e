"""What every dataset shares: the ignore label, `DataError`, and reading image/label files with errors that
name the path and what was expected.

Labels are read as the integers stored in the file (`np.array(Image.open(p))`): a palette PNG gives its
indices, never its colours. A file's raw values go through a 256-entry lookup table to training ids;
entries marked `INVALID` are values that are neither a class nor ignore, and are reported with the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
"""Label value excluded from loss and metrics in every dataset."""

INVALID = -1
"""Lookup-table entry for a raw label value that is neither a class nor ignore."""

LABEL_MODES = ("L", "P")
"""PIL modes accepted for label files: 8-bit grayscale or palette indices."""


class DataError(ValueError):
    """A dataset on disk (or a data option) is not what the loader expects; the message says where and why."""


def open_image(path: Path) -> Image.Image:
    """An RGB image, decoded, as a PIL image (grayscale or palette images are expanded to RGB)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except Exception as err:  # PIL raises several types for unreadable or truncated files
        raise DataError(f"cannot read image {path}: {err}; expected a readable PNG/JPEG image") from None


def read_image(path: Path) -> np.ndarray:
    """An RGB image as uint8 H x W x 3 (grayscale or palette images are expanded to RGB)."""
    return np.array(open_image(path), dtype=np.uint8)


def read_label(path: Path) -> np.ndarray:
    """A label map as uint8 H x W: palette indices or gray values, exactly as stored."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in LABEL_MODES:
                raise DataError(
                    f"label {path} has PIL mode {mode!r}: expected a single-channel 8-bit PNG of class indices "
                    f"(mode 'L' or palette 'P'); colour (RGB) masks must be converted to index masks first"
                )
            return np.array(img, dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist") from None
    except Exception as err:
        raise DataError(f"cannot read label {path}: {err}; expected a readable single-channel PNG") from None


def identity_lut(num_classes: int) -> np.ndarray:
    """Lookup table for files that store class ids directly: 0..num_classes-1 and 255 valid, others invalid."""
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def map_label(raw: np.ndarray, lut: np.ndarray, path: Path, valid: str) -> np.ndarray:
    """Map raw label values through ``lut``; raise naming ``path`` if any value is invalid.

    Args:
        raw: the label as read from the file.
        lut: 256 entries, raw value -> training id, 255 or `INVALID`.
        path: the label file, for the error message.
        valid: human description of the valid raw values, for the error message.
    """
    check_label(raw, lut, path, valid)
    return lut[raw].astype(np.int64)


def check_label(raw: np.ndarray, lut: np.ndarray, path: Path, valid: str) -> None:
    """Raise naming ``path`` if ``raw`` holds a value that ``lut`` marks `INVALID` (one histogram of the file)."""
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    bad = present[lut[present] == INVALID]
    if len(bad):
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"label {path} contains values {shown} that are neither a class nor ignore: expected {valid}")


def check_same_size(image_hw: tuple[int, int], label_hw: tuple[int, int], image_path: Path,
                    label_path: Path) -> None:
    """Raise if image and label (their (height, width)) differ in height or width."""
    if tuple(image_hw) != tuple(label_hw):
        (ih, iw), (lh, lw) = image_hw, label_hw
        raise DataError(
            f"image {image_path} is {iw}x{ih} but its label {label_path} is {lw}x{lh}: "
            f"expected the same width and height"
        )
