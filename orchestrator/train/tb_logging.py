"""TensorBoard logging of a search (tensorboardX, rank 0 only): scalars, alpha/beta heatmaps, the decoded
architecture as text and pictures, and validation predictions as colour overlays.

The writer lives in ``<storage_path>/<run name>/tensorboard/``. On one machine that is the local file system;
a multi-node cluster needs ``storage_path`` on storage every node mounts (NFS), or rank 0's events stay on its
node.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from skimage.color import label2rgb  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

from orchestrator.io.mirror import LocalMirror  # noqa: E402
from search_space.genotypes import RATES, Genotype  # noqa: E402
from search_space.operations import PRIMITIVES  # noqa: E402
from search_space.trellis import DIRECTIONS, transition_probs  # noqa: E402


def _render(fig: Figure) -> np.ndarray:
    """An Agg-rendered figure as an H x W x 3 uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def alpha_heatmap(alpha: torch.Tensor) -> np.ndarray:
    """softmax(alpha) per cell edge (rows) over the ops (columns) as an image."""
    probs = torch.softmax(alpha.detach().float().cpu(), dim=-1).numpy()
    fig = Figure(figsize=(5.0, 1.2 + 0.22 * probs.shape[0]), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(probs.shape[0]), [str(e) for e in range(probs.shape[0])], fontsize=6)
    ax.set_ylabel("cell edge")
    ax.set_title("softmax(alpha)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _render(fig)


def beta_heatmap(beta: torch.Tensor) -> np.ndarray:
    """The transition probabilities out of every (layer, rate) node, one panel per direction."""
    probs = transition_probs(beta.detach().float().cpu()).numpy()  # [L, 4, 3]
    names = {-1: "to rate / 2", 0: "same rate", 1: "to rate x 2"}
    fig = Figure(figsize=(2.2 * len(DIRECTIONS) + 1.0, 1.5 + 0.12 * probs.shape[0]), dpi=100)
    axes = fig.subplots(1, len(DIRECTIONS), sharey=True)
    for d, (ax, step) in enumerate(zip(axes, DIRECTIONS, strict=True)):
        im = ax.imshow(probs[:, :, d].T, aspect="auto", cmap="magma", vmin=0.0, vmax=1.0)
        ax.set_title(names[step], fontsize=8)
        ax.set_xlabel("layer", fontsize=7)
        ax.set_yticks(range(len(RATES)), [f"1/{r}" for r in RATES], fontsize=7)
    fig.colorbar(im, ax=list(axes))
    return _render(fig)


def genotype_markdown(genotype: Genotype) -> str:
    """The decoded path and cell as Markdown (TensorBoard's text tab renders it)."""
    names = ["H(l-2)", "H(l-1)"] + [f"B{b + 1}" for b in range(genotype.blocks)]
    lines = ["**path** (downsample rate per layer): " + " ".join(str(r) for r in genotype.rates), "",
             "**cell**:", ""]
    for b, block in enumerate(genotype.cell):
        terms = " + ".join(f"{op}({names[inp]})" for op, inp in block)
        lines.append(f"- B{b + 1} = {terms}")
    lines += ["", f"`{genotype.to_json(indent=None)}`"]
    return "\n".join(lines)


def overlay(image: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """A label map blended over its image with scikit-image's `label2rgb`; ignored pixels stay uncoloured.

    Args:
        image: a normalized 3 x H x W image (min-max scaled to [0, 1] for display).
        label: H x W class ids (prediction or ground truth).
        num_classes: fixes each class's colour across images.
        ignore_index: label value drawn as bare image.
    """
    img = image.detach().float().cpu().permute(1, 2, 0).numpy()
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    lab = label.detach().cpu().numpy().astype(np.int64) + 1  # 0 is label2rgb's uncoloured background
    lab[label.cpu().numpy() == ignore_index] = 0
    colors = [matplotlib.colormaps["tab20"](i % 20)[:3] for i in range(num_classes)]
    out = label2rgb(lab, image=img, colors=colors, alpha=0.45, bg_label=0, bg_color=None, image_alpha=1.0)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


class MirroredWriter(SummaryWriter):
    """A TensorBoard writer for a ``tensorboard/`` folder that may be a URI. Local: a plain `SummaryWriter`. URI:
    it writes into a local folder (`orchestrator.io.mirror.LocalMirror`), and each `flush` closes the events file
    (tensorboardX writes from a thread, and only `close` waits for it) and copies it there whole; the next
    event opens a new file, numbered so that the files sort in the order they were written."""

    def __init__(self, target: str | os.PathLike, **kwargs):
        self.mirror = LocalMirror(str(target))
        self._part = 0
        if self.mirror.remote:
            kwargs["filename_suffix"] = f"{kwargs.get('filename_suffix', '')}.{self._part:04d}"
        super().__init__(logdir=self.mirror.path, **kwargs)

    def flush(self) -> None:
        if not self.mirror.remote:
            super().flush()
            return
        super().close()
        self.mirror.sync()
        base = self._filename_suffix.rpartition(".")[0]
        self._part += 1
        self._filename_suffix = f"{base}.{self._part:04d}"

    def close(self) -> None:
        super().close()
        self.mirror.close()


class SearchBoard:
    """The search's TensorBoard writer; create it on rank 0 only.

    Args:
        logdir: the run's ``tensorboard/`` folder (a local path or a URI).
        class_names: names for the per-class IoU scalars.
    """

    def __init__(self, logdir: str | os.PathLike, class_names: list[str]):
        self.writer = MirroredWriter(logdir, flush_secs=30)
        self.class_names = list(class_names)

    def scalars(self, epoch: int, metrics: dict) -> None:
        groups = {
            "loss/train": "train_loss", "loss/arch": "arch_loss", "loss/val": "val_loss",
            "val/miou": "val_miou", "val/pixel_acc": "val_pixel_acc",
            "lr/weights": "lr", "lr/arch": "arch_lr",
            "arch/alpha_entropy": "alpha_entropy", "arch/beta_entropy": "beta_entropy",
            "arch/param_free_ops": "param_free_ops", "arch/path_depth": "path_depth",
            "arch/alpha_delta": "alpha_delta", "arch/beta_delta": "beta_delta",
            "arch/genotype_changed": "genotype_changed",
            "perf/epoch_seconds": "epoch_seconds", "perf/images_per_second": "images_per_second",
        }
        for tag, key in groups.items():
            value = metrics.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, float(value), epoch)
        for layer, entropy in enumerate(metrics.get("beta_entropy_per_layer", [])):
            if entropy is not None and not math.isnan(entropy):
                self.writer.add_scalar(f"arch/beta_entropy_layer{layer}", entropy, epoch)
        for level, prob in enumerate(metrics.get("end_level_probs", [])):
            self.writer.add_scalar(f"arch/end_level{level}", prob, epoch)
        for name, iou in zip(self.class_names, metrics.get("per_class_iou", []), strict=False):
            if not math.isnan(iou):
                self.writer.add_scalar(f"iou/{name}", iou, epoch)

    def architecture(self, epoch: int, alpha: torch.Tensor, beta: torch.Tensor, genotype: Genotype,
                     images: bool = True) -> None:
        self.writer.add_text("genotype", genotype_markdown(genotype), epoch)
        if images:
            self.writer.add_image("arch/alpha", alpha_heatmap(alpha), epoch, dataformats="HWC")
            self.writer.add_image("arch/beta", beta_heatmap(beta), epoch, dataformats="HWC")

    def predictions(self, epoch: int, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                    num_classes: int, ignore_index: int = 255) -> None:
        """One row per image: ground truth overlay | prediction overlay."""
        for i in range(images.shape[0]):
            truth = overlay(images[i], labels[i], num_classes, ignore_index)
            pred = overlay(images[i], preds[i], num_classes, ignore_index)
            self.writer.add_image(f"val/prediction_{i}", np.concatenate([truth, pred], axis=1), epoch,
                                  dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
