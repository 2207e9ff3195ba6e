"""Joint image/label transforms: the DeepLab training augmentation and the deterministic evaluation transform.

Training (`TrainTransform`): normalize, random scale, pad to the crop size (image with 0 = the mean colour
after normalization, label with ignore), random crop, horizontal flip. Images are resampled bilinearly
(antialiased when shrinking), labels nearest-neighbour with the same half-pixel grid, so image and label
stay aligned. Randomness comes from torch's global generator, which a DataLoader seeds per worker process
from its own generator, so augmentation is reproducible from the loader's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from orchestrator.data.common import IGNORE_INDEX, DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""ImageNet statistics: the usual choice, and harmless for the synthetic task."""


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 H x W x 3 image and integer H x W label -> normalized float 3 x H x W and int64 H x W."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (img - mean) / std, torch.from_numpy(np.ascontiguousarray(label)).long()


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalization in `to_tensors`, back to [0, 1] (for tests and visualisation)."""
    return image * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)


def rescale(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize image bilinearly and label nearest-neighbour to ``size`` (H, W) on the same pixel grid."""
    if tuple(image.shape[1:]) == tuple(size):
        return image, label
    shrink = size[0] < image.shape[1] or size[1] < image.shape[2]
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    lab = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return img, lab


def pad_to(image: torch.Tensor, label: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least ``height`` x ``width``: image with 0 (the mean colour), label with ignore."""
    dh, dw = max(height - image.shape[1], 0), max(width - image.shape[2], 0)
    if dh == 0 and dw == 0:
        return image, label
    return F.pad(image, (0, dw, 0, dh), value=0.0), F.pad(label, (0, dw, 0, dh), value=IGNORE_INDEX)


@dataclass(frozen=True)
class Draw:
    """One training sample's random choices: the scaled size (H, W), the crop's top-left corner in the scaled
    and padded image, and whether to flip."""

    size: tuple[int, int]
    top: int
    left: int
    flip: bool


class TrainTransform:
    """Random scale, pad, random crop and horizontal flip of a normalized image and its label.

    Args:
        crop_size: side of the square output.
        scale_range: (low, high) of the uniform random scale factor.
        flip: whether to flip horizontally with probability 1/2.
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True):
        if crop_size < 1:
            raise DataError(f"crop_size must be a positive number of pixels, got {crop_size}")
        low, high = scale_range
        if not 0 < low <= high:
            raise DataError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.crop_size, self.scale_range, self.flip = crop_size, (float(low), float(high)), flip

    def draw(self, height: int, width: int) -> Draw:
        """The random choices for one ``height`` x ``width`` image, drawn in the order `__call__` uses them."""
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        size = (max(round(height * scale), 1), max(round(width * scale), 1))
        c = self.crop_size
        top = torch.randint(max(size[0], c) - c + 1, ()).item()
        left = torch.randint(max(size[1], c) - c + 1, ()).item()
        flip = bool(self.flip and torch.rand(()).item() < 0.5)
        return Draw(size, top, left, flip)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, c = self.draw(*image.shape[1:]), self.crop_size
        image, label = rescale(image, label, d.size)
        image, label = pad_to(image, label, c, c)
        image, label = image[:, d.top:d.top + c, d.left:d.left + c], label[d.top:d.top + c, d.left:d.left + c]
        if d.flip:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


class EvalTransform:
    """Deterministic: the full image, or a centre crop padded like training when ``crop_size`` is given.

    Args:
        crop_size: side of the centre crop; None keeps the full image.
    """

    def __init__(self, crop_size: int | None = None):
        self.crop_size = crop_size

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.crop_size is None:
            return image, label
        c = self.crop_size
        image, label = pad_to(image, label, c, c)
        top, left = (image.shape[1] - c) // 2, (image.shape[2] - c) // 2
        return image[:, top:top + c, left:left + c].contiguous(), label[top:top + c, left:left + c].contiguous()
