"""Exporting a retrained network to ONNX or TorchScript with dynamic batch, height and width, each export
checked against PyTorch on random images of several sizes before it is kept.

What is exported is the `Padded` network: input a normalized N x 3 x H x W float image (``MEAN``/``STD`` of
`orchestrator.data.transforms`), H and W at least `MIN_SIZE`; output N x C x H x W class logits. A JSON sidecar
(``<file>.json``) records the classes, their colours, the normalization and the checks.

- ONNX: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``) with symbolic
  batch, height and width, run back with ``onnxruntime``. Needs the ``export`` extra.
- TorchScript: ``torch.jit.trace``, saved, loaded back and run.

Both capture shapes symbolically; `search_space.stem.level_sizes` rounds in integer arithmetic
(``(h + 1) // 2``), which both follow (``math.ceil`` would be recorded as a constant). The remaining shape
tests in `DiscreteNet` (does a tensor already have a size) have the same answer for every input padded to a
multiple of the stride, so the trace holds for every size; the checks at sizes other than the traced one
verify it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from orchestrator.data.transforms import MEAN, STD
from orchestrator.inference.predict import STRIDE, Padded, legend_entries, palette
from orchestrator.inference.run import InferenceError, LoadedRun
from orchestrator.io.atomic import write_json
from orchestrator.io.paths import is_remote
from orchestrator.io.storage import check_writable

FORMATS = ("onnx", "torchscript")
CHECK_SIZES: tuple[tuple[int, int], ...] = ((61, 45), (100, 77))
"""(H, W) of the random images an export is checked on: odd, not multiples of the stride, and different, so
padding and dynamic shapes are both exercised."""

TOLERANCE = 1e-3
"""Largest absolute logit difference accepted: float32 kernels of two runtimes differ by ~1e-5 here; a wrong
graph (a shape baked in) differs by whole units."""

INPUT_NAME, OUTPUT_NAME = "image", "logits"

MIN_SIZE = STRIDE + 1
"""Smallest exported H and W: the rate-32 feature map then has at least 2 x 2 pixels. Export specializes
sizes of 1 (broadcasting differs), so a graph for both cases cannot be captured at once."""
MAX_SIZE = 16384


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter (deprecation notices, torchvision not installed, the trace's notes on
    the size tests explained in the module docstring); real failures still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _example(size: tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random normalized images; a batch of 2, as export would fix a batch of 1 as a constant."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


def check_export(model: torch.nn.Module, run_exported: Callable[[torch.Tensor], np.ndarray], what: str,
                 sizes: Sequence[tuple[int, int]] = CHECK_SIZES, tolerance: float = TOLERANCE) -> list[dict]:
    """Compare the exported network with ``model`` on random images of each size (2, then 1 per batch).

    Returns:
        ``{"size": [h, w], "max_abs_diff": d}`` per size.

    Raises:
        InferenceError: a difference over ``tolerance``, or an output of the wrong shape.
    """
    results = []
    for i, size in enumerate(sizes):
        x = _example(size, batch=2 if i == 0 else 1, seed=i + 1)  # the batch is dynamic too
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_exported(x)
        if got.shape != expected.shape:
            raise InferenceError(f"{what} gives logits of shape {got.shape} for a {size[0]}x{size[1]} input, "
                                 f"PyTorch {expected.shape}: the export is wrong for this size")
        diff = float(np.abs(got - expected).max())
        results.append({"size": list(size), "max_abs_diff": diff})
        if not diff <= tolerance:
            raise InferenceError(f"{what} differs from PyTorch by {diff:.3g} (max abs logit) on a {size[0]}x{size[1]} "
                                 f"input, over the tolerance {tolerance:g}: do not use this export")
    return results


def _onnx_modules():
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as err:
        raise InferenceError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err}): pip install "
                             "'autodeeplab-ray[export]'") from None
    return onnxruntime


def export_onnx(model: torch.nn.Module, path: Path, sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
                tolerance: float = TOLERANCE) -> list[dict]:
    """Write ``model`` to ``path`` as one ONNX file with dynamic batch, height and width; check it with
    onnxruntime (see `check_export`)."""
    onnxruntime = _onnx_modules()
    dim = torch.export.Dim
    shapes = {"x": {0: dim("batch", min=1, max=1024), 2: dim("height", min=MIN_SIZE, max=MAX_SIZE),
                    3: dim("width", min=MIN_SIZE, max=MAX_SIZE)}}
    with _quiet():
        torch.onnx.export(model, (_example(sizes[0]),), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return check_export(model, lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0], f"ONNX export {path}",
                        sizes, tolerance)


def export_torchscript(model: torch.nn.Module, path: Path, sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
                       tolerance: float = TOLERANCE) -> list[dict]:
    """Trace ``model``, save it to ``path``, load it back and check it (see `check_export`) at ``sizes``, which
    should include sizes other than the traced one (``sizes[0]``)."""
    with _quiet():
        traced = torch.jit.trace(model, (_example(sizes[0]),), check_trace=False)
    with _quiet():
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return check_export(model, run, f"TorchScript export {path}", sizes, tolerance)


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}


def describe(run: LoadedRun, fmt: str, path: Path, checks: list[dict], tolerance: float) -> dict:
    """The sidecar's content: what goes in and out, the classes and colours, where it came from, the checks."""
    normalization = {"mean": list(MEAN), "std": list(STD), "scale": "pixel / 255, then (x - mean) / std"}
    return {"format": fmt, "file": str(path),
            "input": {"name": INPUT_NAME, "shape": ["N", 3, "H", "W"], "min_size": MIN_SIZE,
                      "normalization": normalization},
            "output": {"name": OUTPUT_NAME, "shape": ["N", len(run.classes), "H", "W"]},
            "classes": legend_entries(run.classes, palette(len(run.classes))), "genotype": run.genotype.to_dict(),
            "checkpoint": str(run.checkpoint), "epoch": run.epoch, "checks": checks, "tolerance": tolerance}


def export_run(run: LoadedRun, fmt: str, out: str | os.PathLike, sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
               tolerance: float = TOLERANCE) -> dict:
    """Export ``run``'s network (on the CPU) to ``out`` in format ``fmt``, check it, and write the sidecar
    ``<out>.json``; returns the sidecar's content, checks included. A failed check removes the file."""
    if fmt not in EXPORTERS:
        raise InferenceError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    small = [f"{h}x{w}" for h, w in sizes if min(h, w) < MIN_SIZE]
    if not sizes or small:
        raise InferenceError(f"check sizes {', '.join(small) or '(none)'}: expected at least one HxW, each side at "
                             f"least {MIN_SIZE} (the smallest size the export supports)")
    if is_remote(os.fspath(out)):
        raise InferenceError(f"export file {out}: expected a local path (copy the file to storage afterwards)")
    check_writable(out, "export file", file=True)  # a folder, or a folder that cannot be made, fails here
    path = Path(out).expanduser()
    model = Padded(run.net.cpu()).eval()
    try:
        checks = EXPORTERS[fmt](model, path, sizes, tolerance)
    except InferenceError:
        path.unlink(missing_ok=True)
        raise
    info = describe(run, fmt, path, checks, tolerance)
    write_json(Path(f"{path}.json"), info)
    return info
