"""Predicting with a retrained network: any image size (padded to the network's stride, cropped back), a mask
per image as a palette PNG of class indices, a colour overlay, and a legend of the class colours.

Images are normalized by the evaluation transform of `orchestrator.data.transforms`, so a prediction sees what
validation saw. Colours follow the PASCAL VOC colour map (class 0 black; distinct colours for 256 classes;
exactly VOC's own palette on VOC), so a mask opened in any viewer shows the same colours as the overlay.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.nn import functional as F

from orchestrator.data.common import DataError, open_image
from orchestrator.data.formats import IMAGE_EXTS
from orchestrator.data.transforms import EvalTransform, to_tensors
from orchestrator.inference.run import InferenceError, LoadedRun
from orchestrator.io.atomic import write_bytes, write_json
from search_space import RATES

STRIDE = RATES[-1]
"""The network's largest downsample rate: inputs are padded to a multiple of it, so every level's feature map
has an exact size and `DiscreteNet`'s size relations are the same for every image."""

OVERLAY_ALPHA = 0.5
"""Weight of the mask colour in an overlay: enough to read the classes, and the image still shows through."""


class Padded(nn.Module):
    """``net`` on any image size: pads bottom and right to a multiple of ``stride`` with 0 (the mean colour
    after normalization, as training pads), runs it, and crops the logits back to the input's size.

    Both prediction and export run this module, so an exported network predicts what `predict_mask` predicts.
    It is written for `torch.export` too: the padded size is integer arithmetic on the input's size, and the
    crop selects rows and columns by index, because a slice ``[:height]`` makes export require a proof that
    ``height <= padded height`` which its symbolic solver cannot give.
    """

    def __init__(self, net: nn.Module, stride: int = STRIDE):
        super().__init__()
        self.net, self.stride = net, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width, s = x.shape[2], x.shape[3], self.stride
        padded = F.pad(x, (0, (width + s - 1) // s * s - width, 0, (height + s - 1) // s * s - height))
        logits = self.net(padded)
        rows, columns = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
        return logits.index_select(2, rows).index_select(3, columns)


def palette(num_classes: int) -> np.ndarray:
    """``num_classes`` x 3 uint8 colours of the PASCAL VOC colour map (bit ``k`` of the class index goes to bit
    ``7 - k // 3`` of red, green or blue in turn)."""
    if not 1 <= num_classes <= 256:
        raise InferenceError(f"{num_classes} classes: a palette PNG holds between 1 and 256")
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        c, value = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                value[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        colours[index] = value
    return colours


def normalize(image: Image.Image) -> torch.Tensor:
    """An RGB image as the normalized 1 x 3 x H x W tensor validation feeds the network."""
    pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only arrays
    tensor, label = to_tensors(pixels, np.zeros(pixels.shape[:2], dtype=np.uint8))
    return EvalTransform()(tensor, label)[0][None]


@torch.no_grad()
def predict_mask(model: nn.Module, image: Image.Image, device: str | torch.device = "cpu") -> np.ndarray:
    """Class indices (uint8 H x W, the image's size) predicted by ``model`` (a `Padded` network)."""
    logits = model(normalize(image).to(device))
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


def predict(run: LoadedRun, image: Image.Image | np.ndarray | str | os.PathLike) -> np.ndarray:
    """Class indices (uint8 H x W, the image's size) that ``run``'s network predicts for one RGB image: a PIL
    image, a uint8 H x W x 3 array, or an image file. Runs where the network is (`load_run`'s ``device``)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    elif not isinstance(image, Image.Image):
        image = open_image(Path(image).expanduser())
    device = next(run.net.parameters()).device
    return predict_mask(Padded(run.net).eval(), image.convert("RGB"), device)


def mask_image(mask: np.ndarray, colours: np.ndarray) -> Image.Image:
    """The mask as a palette ("P") PNG image: pixel values are class indices, the palette their colours."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    img.putpalette(colours.reshape(-1).tolist())
    return img


def overlay(image: Image.Image, mask: np.ndarray, colours: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The image blended with its mask's colours: ``(1 - alpha) * image + alpha * colour``."""
    pixels = np.asarray(image, dtype=np.float32)
    blended = (1.0 - alpha) * pixels + alpha * colours[mask].astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def legend_entries(classes: Sequence[str], colours: np.ndarray) -> list[dict[str, Any]]:
    return [{"index": i, "name": name, "rgb": [int(v) for v in colours[i]]} for i, name in enumerate(classes)]


def legend_image(classes: Sequence[str], colours: np.ndarray, row: int = 20) -> Image.Image:
    """One row per class: a colour swatch, the index and the name (PIL's built-in font)."""
    width = 60 + 8 * max((len(name) for name in classes), default=0) + 40
    img = Image.new("RGB", (width, row * len(classes) + 8), "white")
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(classes):
        top = 4 + i * row
        draw.rectangle((4, top, 4 + 2 * row - 4, top + row - 4), fill=tuple(int(v) for v in colours[i]),
                       outline="black")
        draw.text((2 * row + 8, top + 2), f"{i:>3}  {name}", fill="black")
    return img


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as a PNG through the project's atomic writes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())


def write_legend(out: Path, classes: Sequence[str], colours: np.ndarray) -> list[Path]:
    """``legend.json`` (index, name, RGB per class) and ``legend.png`` in ``out``."""
    paths = [out / "legend.json", out / "legend.png"]
    write_json(paths[0], {"classes": legend_entries(classes, colours)})
    save_png(legend_image(classes, colours), paths[1])
    return paths


def list_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files ``inputs`` name: files as given, folders' files with an image extension (sorted, not
    recursive). Each is checked to open as an image before anything is predicted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not inside:
                raise InferenceError(f"--images {path}: the folder holds no image ({', '.join(IMAGE_EXTS)})")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise InferenceError(f"--images {path} does not exist: expected image files or folders of images")
    for path in found:
        _check_image(path)
    return found


def _check_image(path: Path) -> None:
    """Read ``path``'s header only (cheap): a file that is not an image fails here, before any output."""
    try:
        with Image.open(path):
            pass
    except Exception as err:  # PIL raises several types for files it cannot identify
        raise DataError(f"cannot read image {path}: {err}; expected a PNG/JPEG image") from None


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct output name per image: its stem, or ``<stem>_<ext>`` when two images share a stem."""
    stems = [p.stem for p in paths]
    names = [p.stem if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in paths]
    for name in set(names):
        same = [str(p) for p, n in zip(paths, names, strict=True) if n == name]
        if len(same) > 1:
            raise InferenceError(f"--images: {' and '.join(same)} would write the same outputs ({name}.png): "
                                 "predict them into different --out folders")
    return names


def predict_files(run: LoadedRun, images: Sequence[Path], out: str | os.PathLike, alpha: float = OVERLAY_ALPHA,
                  device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Predict every image and write ``<name>.png`` (palette mask), ``<name>_overlay.png`` and the legend.

    Args:
        run: the loaded network (on ``device``).
        images: image files (see `list_images`).
        out: output folder, created when missing.
        alpha: weight of the mask colours in the overlays.
        device: where the network runs.

    Returns:
        One record per image: the image, its mask and overlay paths, size and class pixel counts.
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    colours = palette(len(run.classes))
    model = Padded(run.net).eval()
    records = []
    for path, name in zip(images, output_stems(images), strict=True):
        image = open_image(path)
        mask = predict_mask(model, image, device)
        mask_path, overlay_path = out / f"{name}.png", out / f"{name}_overlay.png"
        save_png(mask_image(mask, colours), mask_path)
        save_png(overlay(image, mask, colours, alpha), overlay_path)
        counts = np.bincount(mask.ravel(), minlength=len(run.classes))
        records.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                        "size": [image.height, image.width],
                        "pixels": {run.classes[i]: int(n) for i, n in enumerate(counts) if n}})
    write_legend(out, run.classes, colours)
    return records
