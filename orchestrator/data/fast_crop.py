"""The training transform of a file-backed sample, done on the crop only: the fast path beside
`transforms.TrainTransform`, tested equal to it (labels exactly, images within uint8 rounding).

The reference normalizes the whole decoded image to float (a 2048x1024 Cityscapes image is 25 MB of float32),
resizes all of it and then keeps a 321x321 crop. Here, with the same random draws (`TrainTransform.draw`):

- the image stays uint8 in PIL and only the crop's source box is resampled (`Image.resize(box=...)`,
  bilinear, antialiased when shrinking, as torch's ``antialias=True`` which was written to match PIL);
- the label is gathered at the crop's nearest-exact source rows and columns (torch's float32 index formula),
  then mapped through the dataset's lookup table; never interpolated;
- normalization, padding (image 0 = the mean colour, label ignore) and the flip touch the crop alone.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from orchestrator.data.common import IGNORE_INDEX
from orchestrator.data.transforms import MEAN, STD, TrainTransform

_MEAN = torch.tensor(MEAN).view(3, 1, 1)
_STD = torch.tensor(STD).view(3, 1, 1)


def nearest_exact(start: int, stop: int, size_in: int, size_out: int) -> np.ndarray:
    """Source indices of output pixels ``start..stop-1`` when ``size_in`` is resized to ``size_out``
    (torch's ``nearest-exact``: floor((i + 0.5) * in / out) in float32, clamped)."""
    scale = np.float32(size_in) / np.float32(size_out)
    idx = np.floor((np.arange(start, stop, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.minimum(idx, size_in - 1)


def train_crop(image: Image.Image, raw: np.ndarray, lut: np.ndarray,
               transform: TrainTransform) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized float 3 x c x c crop and its int64 c x c training ids, as ``transform`` would give
    from the full ``image`` (RGB) and its raw label ``raw`` mapped through ``lut``."""
    h, w = raw.shape
    d, c = transform.draw(h, w), transform.crop_size
    (sh, sw), r0, c0 = d.size, d.top, d.left
    r1, c1 = min(r0 + c, sh), min(c0 + c, sw)
    if (sh, sw) == (h, w):
        region = image.crop((c0, r0, c1, r1))
    else:
        sy, sx = h / sh, w / sw
        region = image.resize((c1 - c0, r1 - r0), Image.BILINEAR, box=(c0 * sx, r0 * sy, c1 * sx, r1 * sy))
    img = torch.from_numpy(np.array(region, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    img = (img - _MEAN) / _STD
    rows, cols = nearest_exact(r0, r1, h, sh), nearest_exact(c0, c1, w, sw)
    lab = torch.from_numpy(lut[raw[rows[:, None], cols[None, :]]].astype(np.int64))
    dh, dw = c - img.shape[1], c - img.shape[2]
    if dh or dw:
        img, lab = F.pad(img, (0, dw, 0, dh), value=0.0), F.pad(lab, (0, dw, 0, dh), value=IGNORE_INDEX)
    if d.flip:
        img, lab = img.flip(-1), lab.flip(-1)
    return img.contiguous(), lab.contiguous()
