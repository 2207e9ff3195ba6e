"""Scoring a retrained network on a split of its run's dataset: mIoU and per-class IoU, single-scale and with the
multi-scale protocol, and the files the Cityscapes test server takes. No Ray.

- Single-scale: each image whole, at its size (padded to the stride by `Padded` and cropped back), as the
  retrain's own evaluation scores it (its ``test_miou`` on the report split).
- Multi-scale, the protocol of the paper's test-set results (after DeepLabv3+): the image resized to each of
  `SCALES`, each also flipped left-right; every view's logits resized back to the image's size and averaged; the
  argmax of the average. With the scales ``(1.0,)`` and no flip it is the single-scale prediction exactly.
- IoU from the confusion matrix over every pixel of the split (rows: true class, columns: prediction; 255 is
  ignored), as `orchestrator.train.metrics` computes it: a class absent from both labels and predictions has no
  IoU (NaN, null in JSON) and is left out of the mean.
- The split: by default the run config's report split (`orchestrator.data.roles`: the split no search, sweep or
  selection read); ``role="select"`` the selection split; ``split`` any split of the dataset by name.
- Test server: one 8-bit PNG of Cityscapes labelIds per image (trainIds mapped back through
  `CITYSCAPES_TRAIN_IDS`), named as its image, ``<city>_<seq>_<frame>_leftImg8bit.png``: the server matches
  results to images by the ``<city>_<seq>_<frame>`` in the name.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from orchestrator.data import DataError, load_dataset
from orchestrator.data.common import IGNORE_INDEX, open_image
from orchestrator.data.formats import CITYSCAPES_TRAIN_IDS
from orchestrator.data.roles import ROLES, SHARED_OPTIONS, describe, role_dataset, split_name
from orchestrator.inference.predict import Padded, normalize, save_png
from orchestrator.inference.run import InferenceError, LoadedRun
from orchestrator.io import storage

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
"""Input scales of the multi-scale protocol (with left-right flips: 12 views per image)."""

EVALUATION_FILE = "evaluation.json"
EVAL_ROLES = tuple(r for r in ROLES if r != "train")
"""Roles an evaluation may read: ``report`` (the default) and ``select``."""

View = tuple[float, bool]


# ---------------------------------------------------------------------------------------------- metrics


def confusion(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``[C, C]`` int64 counts of (true class, predicted class) over the pixels not labelled ``ignore_index``."""
    valid = label != ignore_index
    t, p = label[valid].astype(np.int64), pred[valid].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise InferenceError(f"the labels hold class ids outside 0..{num_classes - 1} (and not {ignore_index}): "
                             "the dataset has more classes than the network")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou(cm: np.ndarray) -> tuple[list[float], float]:
    """Per-class IoU and their mean; a class absent from labels and predictions is NaN and left out of the mean."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    values = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = ~np.isnan(values)
    return [float(v) for v in values], float(values[present].mean()) if present.any() else float("nan")


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def scores(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-class IoU (by class name; null: absent) and the confusion matrix itself."""
    per_class, miou = iou(cm)
    total = int(cm.sum())
    return {"miou": _number(miou), "pixel_accuracy": _number(float(np.trace(cm)) / total if total else math.nan),
            "per_class_iou": {name: _number(v) for name, v in zip(classes, per_class, strict=True)},
            "confusion_matrix": cm.tolist()}


# ---------------------------------------------------------------------------------------------- predictions


@torch.no_grad()
def view_logits(model: nn.Module, x: torch.Tensor, scale: float = 1.0, flip: bool = False) -> torch.Tensor:
    """Logits at ``x``'s size (N x C x H x W) of one view: ``x`` resized by ``scale`` (bilinear), flipped
    left-right with ``flip``; the logits flipped back and resized to ``x``'s size."""
    size = tuple(x.shape[2:])
    scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    view = x if scaled == size else F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)
    logits = model(view.flip(-1) if flip else view)
    logits = logits.flip(-1) if flip else logits
    return logits if scaled == size else F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def views(scales: Sequence[float] = SCALES, flip: bool = True) -> list[View]:
    """The (scale, flipped) views of the multi-scale protocol."""
    bad = [s for s in scales if not (isinstance(s, int | float) and 0 < s <= 8)]
    if not scales or bad:
        raise InferenceError(f"scales {list(scales)}: expected one or more factors in (0, 8], e.g. 0.5,1.0,1.5")
    return [(float(s), f) for s in scales for f in ((False, True) if flip else (False,))]


@torch.no_grad()
def multi_scale_logits(model: nn.Module, x: torch.Tensor, scales: Sequence[float] = SCALES, flip: bool = True,
                       known: dict[View, torch.Tensor] | None = None) -> torch.Tensor:
    """The mean of `view_logits` over the protocol's views (``known``: views already computed)."""
    chosen, known = views(scales, flip), known or {}
    total = sum(known[v] if v in known else view_logits(model, x, *v) for v in chosen)
    return total / len(chosen)


# ---------------------------------------------------------------------------------------------- evaluation


def evaluation_dataset(run: LoadedRun, role: str = "report", split: str | None = None,
                       data_root: str | os.PathLike | None = None) -> tuple[Dataset, str, str]:
    """The dataset to score (evaluation transform: whole images), a description, and the split's name.

    Args:
        run: the loaded run; its config names the dataset, its root and the roles' splits.
        role: ``report`` or ``select``: the split that plays it under the run's config.
        split: a split of the dataset by name instead (``val``, ``test``...); the role's options when it is
            that role's split.
        data_root: the dataset's folder on this machine, when not the run config's ``data.root``.
    """
    if role not in EVAL_ROLES:
        raise InferenceError(f"role {role!r}: expected one of {', '.join(EVAL_ROLES)}")
    d, crop = run.config.data, run.config.retrain.crop_size
    if data_root is not None:
        d = dataclasses.replace(d, root=os.fspath(data_root))
    if split is None or split == split_name(d, role):
        where = describe(d, role)
        if where is None:
            raise DataError(f"data.report_split is null: the {d.dataset} run has no report split; name one with "
                            "--split")
        return role_dataset(d, role, train=False, crop_size=crop), where, split_name(d, role)
    shared = {k: d.options[k] for k in SHARED_OPTIONS if k in d.options}
    return load_dataset(d.dataset, d.root, split, train=False, crop_size=crop, **shared), f"{d.dataset} {split}", split


def _check_classes(dataset: Dataset, run: LoadedRun) -> None:
    theirs = getattr(dataset, "num_classes", None)
    if theirs is not None and theirs != len(run.classes):
        raise InferenceError(f"the dataset has {theirs} classes, the network {len(run.classes)}: evaluate a run on "
                             "the dataset it was trained on")


def _progress(log: Callable[[str], None] | None, done: int, count: int, start: float) -> None:
    if log is not None and (done == count or done % 25 == 0):
        log(f"evaluated {done}/{count} images ({time.time() - start:.0f} s)")


def evaluate_run(run: LoadedRun, *, role: str = "report", split: str | None = None, multi_scale: bool = True,
                 scales: Sequence[float] = SCALES, flip: bool = True, data_root: str | os.PathLike | None = None,
                 limit: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """mIoU and per-class IoU of ``run``'s network on a split, single-scale and (``multi_scale``) over the views
    of ``scales`` and ``flip``; what ``evaluation.json`` holds. Runs where the network is.

    Args:
        run: a loaded run (`load_run`).
        role, split, data_root: which images (`evaluation_dataset`).
        multi_scale: also score the multi-scale prediction (12 views per image by default).
        scales, flip: the multi-scale views.
        limit: score only the first ``limit`` images (a quick look).
        log: called with a progress line every 25 images.
    """
    chosen = views(scales, flip) if multi_scale else []
    dataset, where, split_used = evaluation_dataset(run, role, split, data_root)
    _check_classes(dataset, run)
    if limit is not None and limit < 1:
        raise InferenceError(f"limit {limit}: expected at least 1 image")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    n, device = len(run.classes), next(run.net.parameters()).device
    model, start = Padded(run.net).eval(), time.time()
    single, multi = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
    for i in range(count):
        x, label = dataset[i]
        x, label = x[None].to(device), label.numpy()
        plain = view_logits(model, x)
        single += confusion(plain[0].argmax(0).cpu().numpy(), label, n)
        if multi_scale:
            logits = multi_scale_logits(model, x, scales, flip, known={(1.0, False): plain})
            multi += confusion(logits[0].argmax(0).cpu().numpy(), label, n)
        _progress(log, i + 1, count, start)
    result = {"checkpoint": str(run.checkpoint), "epoch": run.epoch, "dataset": where,
              "role": role if split is None or split == split_name(run.config.data, role) else None,
              "split": split_used, "images": count, "classes": list(run.classes),
              "single_scale": scores(single, run.classes)}
    if multi_scale:
        result["multi_scale"] = {"scales": sorted({s for s, _ in chosen}), "flip": flip, **scores(multi, run.classes)}
    return result


def write_evaluation(result: dict[str, Any], out: str | os.PathLike) -> Path | str:
    """``<out>/evaluation.json`` (a local folder or a URI)."""
    return storage.write_json(storage.join(out, EVALUATION_FILE), result)


def evaluation_text(result: dict[str, Any]) -> str:
    """Per-class IoU and mIoU, single- and multi-scale side by side."""
    columns = [("single-scale", result["single_scale"])]
    if "multi_scale" in result:
        columns.append(("multi-scale", result["multi_scale"]))
    width = max(len(name) for name in [*result["classes"], "mIoU"])

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{result['dataset']}: {result['images']} image(s), {result['checkpoint']} (epoch {result['epoch']})",
             "class".ljust(width) + "".join(f"  {name:>12}" for name, _ in columns)]
    lines += [name.ljust(width) + "".join(f"  {cell(s['per_class_iou'][name]):>12}" for _, s in columns)
              for name in result["classes"]]
    lines.append("mIoU".ljust(width) + "".join(f"  {cell(s['miou']):>12}" for _, s in columns))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- test server


def cityscapes_images(root: str | os.PathLike, split: str) -> list[Path]:
    """The images of a Cityscapes split, ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` (labels not needed)."""
    folder = Path(root).expanduser() / "leftImg8bit" / split
    images = sorted(folder.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"{folder} holds no <city>/*_leftImg8bit.png images: expected the Cityscapes {split} split "
                        "there (pass the dataset's folder with --data-root)")
    return images


def write_test_server(run: LoadedRun, out: str | os.PathLike, *, split: str = "test", multi_scale: bool = False,
                      scales: Sequence[float] = SCALES, flip: bool = True, data_root: str | os.PathLike | None = None,
                      limit: int | None = None, log: Callable[[str], None] | None = None) -> list[Path | str]:
    """Predict every image of a Cityscapes split and write ``<out>/<image name>``: labelIds as an 8-bit PNG at the
    image's size, what the Cityscapes test server takes (zip the folder). Returns the files written."""
    if run.config.data.dataset != "cityscapes" or len(run.classes) != len(CITYSCAPES_TRAIN_IDS):
        raise InferenceError(f"test-server files are Cityscapes labelIds: this run trained on "
                             f"{run.config.data.dataset} with {len(run.classes)} classes, not on cityscapes with 19")
    root = data_root if data_root is not None else run.config.data.root
    if not root:
        raise DataError("the run's config has no data.root: pass the Cityscapes folder with --data-root")
    images = cityscapes_images(root, split)[:limit]
    chosen = views(scales, flip) if multi_scale else [(1.0, False)]
    model, device = Padded(run.net).eval(), next(run.net.parameters()).device
    label_ids, written, start = np.array(CITYSCAPES_TRAIN_IDS, dtype=np.uint8), [], time.time()
    for i, path in enumerate(images):
        x = normalize(open_image(path)).to(device)
        logits = multi_scale_logits(model, x, sorted({s for s, _ in chosen}), flip and multi_scale)
        mask = label_ids[logits[0].argmax(0).cpu().numpy()]
        written.append(save_png(Image.fromarray(mask), storage.join(out, path.name)))
        _progress(log, i + 1, len(images), start)
    return written
