"""Plain helpers shared by the test modules (fixtures live in conftest.py): the repository root, the PNG
signature, a free local port, a small matplotlib figure, a run folder's epoch records, the ``experiments/`` CLIs
run in this process, a module run as a new process, and TensorBoard event files read back."""

from __future__ import annotations

import importlib.util
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG file starts with."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the operating system's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def figure():
    """A small matplotlib figure (Agg backend, no display needed), for the writers that save one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    return fig


def epochs_of(run: Path) -> list[dict[str, Any]]:
    """The epoch records of a search run folder, in order (`orchestrator.train.trainers.read_epochs`)."""
    from orchestrator.train.trainers import read_epochs

    return read_epochs(run)


# ---------------------------------------------------------------------------------------------- CLIs


def load_cli(script: str) -> ModuleType:
    """``experiments/<script>.py`` loaded as the module ``<script>_cli``, its ``main`` not called yet."""
    spec = importlib.util.spec_from_file_location(f"{script}_cli", ROOT / "experiments" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit_status(module: ModuleType, args: list[str]) -> int:
    try:
        return module.main(args)
    except SystemExit as exit_:
        return exit_.code


def run_cli(script: str, args: list[str]) -> int:
    """``experiments/<script>.py`` in this process (so it uses this process's Ray, if any); its exit status."""
    return _exit_status(load_cli(script), args)


class CliRun(NamedTuple):
    code: int  # the exit status
    out: str  # stdout as printed
    err: str  # stderr with line wrapping undone (runs of whitespace made one space)


def run_cli_captured(script: str, args: list[str], capsys) -> CliRun:
    """`run_cli` with what ``main`` prints captured (pytest's ``capsys``; output from before it is dropped)."""
    module = load_cli(script)
    capsys.readouterr()
    code = _exit_status(module, args)
    captured = capsys.readouterr()
    return CliRun(code, captured.out, " ".join(captured.err.split()))


def run_module(module: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a new process (at most 300 s), its output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


# ---------------------------------------------------------------------------------------------- TensorBoard


def tfevents(path: Path) -> Iterator[Any]:
    """Every event of a TensorBoard event file (TFRecord framing: length, crc, payload, crc), as tensorboardX's
    ``Event`` protobuf messages (tensorboardX is what the project writes with; TensorBoard itself is not
    installed)."""
    from tensorboardX.proto import event_pb2

    data, i = path.read_bytes(), 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        yield event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += n + 16


def summary_values(path: Path) -> Iterator[Any]:
    """The summary values (scalars, images, texts, hparams) of every event in an event file."""
    for event in tfevents(path):
        yield from event.summary.value


def tf_scalars(*paths: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the event files (float32, as TensorBoard stores them)."""
    found: dict[str, dict[int, float]] = {}
    for path in paths:
        for event in tfevents(path):
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def constant_predictor_miou(config: Any, role: str = "select") -> float:
    """The mIoU on a role's split (``select``: val_*, ``report``: test_*) of the best trivial predictor: one class
    everywhere, whichever class scores best. A trained network's mIoU must beat it: a check that ``0 <= m <= 1``
    would pass for a network that learned nothing."""
    import numpy as np

    from orchestrator.config import ExperimentConfig, config_from_dict
    from orchestrator.data import role_dataset

    cfg = config if isinstance(config, ExperimentConfig) else config_from_dict(config)
    ds = role_dataset(cfg.data, role, train=False, crop_size=cfg.retrain.crop_size,
                      extra=cfg.retrain.val_options if role == "select" else None)
    counts = np.zeros(ds.num_classes)
    for i in range(len(ds)):
        label = ds[i][1].numpy().ravel()
        counts += np.bincount(label[label != ds.ignore_index], minlength=ds.num_classes)[:ds.num_classes]
    present = int((counts > 0).sum())
    return float(counts.max() / counts.sum() / present)  # IoU of the constant class; 0 for the other present ones
