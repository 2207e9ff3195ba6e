"""The worker toolkit both loops (search and retrain) share: process setup, collectives, evaluation, reports to
Ray Train (or to a listener when a loop runs standalone), per-epoch records, resume from the newest verified
checkpoint, and the progress line. No Tune here: a loop knows nothing about the sweep that may run it.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from orchestrator.io import checkpointing as ckpt
from orchestrator.io import storage
from orchestrator.io.atomic import write_json
from orchestrator.train.metrics import confusion_matrix
from orchestrator.train.steps import StepOptions, autocast, distributed, inputs

EPOCHS_DIR = "epochs"
"""Rank 0's own per-epoch records, ``<run_dir>/epochs/epoch-<k>.json`` (Ray keeps metrics only with the
checkpoints it keeps; a re-run epoch after a restart replaces its file)."""


# ---------------------------------------------------------------------------------------------- process


def say(message: str, tag: str = "search") -> None:
    """One progress line on stdout. Not print(): Train V2 patches print to both print and log, so every line
    reached the driver twice."""
    sys.stdout.write(f"[{tag}] {message}\n")
    sys.stdout.flush()


def quiet_report_logs() -> None:
    """Ray Train 2.x logs every ``ray.train.report`` at INFO with its whole metrics dict (here the full alpha
    and beta, twice per epoch per worker), which buries the progress lines; keep its warnings only. The logger
    is named after its file; a Ray without it is left as it is."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def setup_process(cfg: Any, rank: int) -> None:
    """Threads, seeds (``runtime.seed + rank``), determinism and log levels for this worker process."""
    quiet_report_logs()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    seed = cfg.runtime.seed + rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif cfg.scaling.use_gpu:
        torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class Place:
    """Where this worker runs: its rank, the number of workers, its device, and whether it runs standalone (in
    the caller's process, as the only worker, without any `ray.train` API)."""

    rank: int
    world: int
    device: torch.device
    standalone: bool = False


def place(standalone: bool = False, use_gpu: bool = False) -> Place:
    """This worker's place: from Ray Train's context, or rank 0 of 1 when standalone. Sets the current CUDA device
    before any collective (NCCL and all_gather_object use it)."""
    if standalone:
        return Place(0, 1, torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu"), True)
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Place(context.get_world_rank(), context.get_world_size(), device)


def duration(seconds: float) -> str:
    """``3m10s``, ``1h02m``, ``45s``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_tag(run_dir: str | None, default: str) -> str:
    """The tag of a loop's progress lines: its run's name (``train-<trial>``, ``retrain``), else ``default``."""
    return storage.basename(run_dir) if run_dir else default


@dataclass
class Progress:
    """Progress lines inside a long epoch, at most one per ``every`` seconds (0: none), on rank 0 only:
    ``epoch 3/40 step 700/1488 4.1 img/s eta 3m10s`` (eta: the rest of the run at this epoch's pace)."""

    every: float
    tag: str
    epoch: int  # 1-based
    epochs: int
    steps: int
    images_per_step: int
    rank: int = 0
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        self.start = self.last = self.clock()

    def step(self, done: int) -> str | None:
        """Call after ``done`` steps of this epoch; returns the line it printed, if any."""
        now = self.clock()
        if self.rank != 0 or self.every <= 0 or now - self.last < self.every or done >= self.steps:
            return None
        self.last = now
        per_step = (now - self.start) / max(done, 1)
        left = (self.steps - done) + (self.epochs - self.epoch) * self.steps
        line = (f"epoch {self.epoch}/{self.epochs} step {done}/{self.steps} "
                f"{self.images_per_step / per_step:.1f} img/s eta {duration(left * per_step)}")
        say(line, self.tag)
        return line


# ---------------------------------------------------------------------------------------------- collectives


def all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    """All-reduce a small tensor (on the backend's device for NCCL); returns it on the CPU."""
    if not distributed():
        return t
    out = t.to(ray.train.torch.get_device()) if dist.get_backend() == "nccl" else t
    dist.all_reduce(out, op=op or dist.ReduceOp.SUM)
    return out.cpu()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(net: nn.Module) -> None:
    """Broadcast rank 0's batch-norm statistics: each rank's last forward updated its own, and validation
    and checkpoints must see one model."""
    if distributed():
        for buf in net.buffers():
            dist.broadcast(buf, src=0)


def any_nonfinite(values: torch.Tensor) -> bool:
    """True on every rank when any rank's ``values`` hold a NaN or infinity. Collective."""
    flag = torch.tensor([0.0 if bool(torch.isfinite(values).all()) else 1.0])
    return bool(all_reduce(flag, dist.ReduceOp.MAX)[0] > 0)


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(net: nn.Module, loader: Any, num_classes: int, ignore_index: int, opts: StepOptions,
             device: torch.device, keep: int = 0) -> dict[str, Any]:
    """Confusion matrix and mean loss over this rank's validation shard (summed across ranks), plus the first
    ``keep`` images with their labels and predictions for TensorBoard."""
    net.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, pixels = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    preview = None
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction="sum")
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(opts, device):
            logits = net(inputs(x, opts)).float()
        pred = logits.argmax(1)
        cm += confusion_matrix(pred, y, num_classes, ignore_index)
        loss_sum += float(criterion(logits, y))
        pixels += float((y != ignore_index).sum())
        if preview is None and keep:
            preview = (x[:keep].cpu(), y[:keep].cpu(), pred[:keep].cpu())
    net.train()
    totals = all_reduce(torch.cat([cm.flatten().double(), loss_sum[None], pixels[None]]))
    cm = totals[:-2].round().long().reshape(num_classes, num_classes)
    return {"cm": cm, "loss": float(totals[-2] / totals[-1]) if totals[-1] > 0 else float("nan"),
            "preview": preview}


# ---------------------------------------------------------------------------------------------- reports


_REPORT_LISTENERS: list[Callable[[dict[str, Any]], None]] = []


@contextlib.contextmanager
def report_listener(listener: Callable[[dict[str, Any]], None]):
    """Within the block, every `report` of this process also calls ``listener(metrics)``. For a loop run
    standalone in the caller's process, whose reports go nowhere else: a Tune trial passes its own report
    function, so its scheduler sees every epoch. The loop never imports Tune."""
    _REPORT_LISTENERS.append(listener)
    try:
        yield
    finally:
        _REPORT_LISTENERS.remove(listener)


def report(metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int,
           taken: frozenset[str] = frozenset(), to_ray: bool = True) -> None:
    """`ray.train.report` on every rank (unless not ``to_ray``: a loop run standalone); rank 0 attaches the
    checkpoint when it has one, written to a temporary folder that Ray persists as ``checkpoint_epoch<epoch>``
    (suffixed when that name is in ``taken``, see `checkpointing.checkpoint_dir_name`). Then the
    `report_listener` functions, if any."""
    if to_ray:
        _report(metrics, state, epoch, taken)
    for listener in list(_REPORT_LISTENERS):
        listener(metrics)


def _report(metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int, taken: frozenset[str]) -> None:
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="adl-ckpt-") as directory:
        meta = {key: state[key] for key in ("step", "genotype", "search_space") if key in state}
        ckpt.write_checkpoint_dir(directory, state, {"epoch": epoch, **meta, "val_miou": metrics.get("val_miou")})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=ckpt.checkpoint_dir_name(epoch, taken))


def record_epoch(run_dir: str | None, metrics: dict[str, Any]) -> None:
    """Rank 0's own record of an epoch, ``<run_dir>/epochs/epoch-<k>.json`` (Ray keeps the metrics of
    checkpointed reports only, so a diverged epoch is known from here). Call on rank 0 only."""
    if run_dir:
        write_json(storage.join(run_dir, EPOCHS_DIR, f"epoch-{metrics['epoch']:04d}.json"), metrics)


# ---------------------------------------------------------------------------------------------- resume


@dataclass
class Resume:
    """What a (re)started worker group begins from."""

    state: dict[str, Any] | None  # None: a fresh start
    path: str | None = None  # the checkpoint it came from
    taken: frozenset[str] = frozenset()  # checkpoint folder names not to report into (after a fallback)


def newest_checkpoint(rank: int, tag: str) -> Resume:
    """The newest state of this run that verifies (``ray.train.get_checkpoint()``, else an older checkpoint when
    that one is corrupt, with a warning). After such a fallback, the names of the newer checkpoints are
    ``taken``: reporting into them would mix two histories."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resume(None)
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        if rank == 0:
            warnings.warn(message, stacklevel=2)
            say(f"WARNING: {message}", tag)

    state, used = ckpt.read_newest_valid(checkpoint, warn)
    if not skipped:
        return Resume(state, used.path)
    if rank == 0:
        say(f"resuming from {used.path} (epoch {state['epoch']}) instead of {checkpoint.path}", tag)
    taken = {os.path.basename(c.path) for c in ckpt.sibling_checkpoints(used)} | {os.path.basename(used.path)}
    return Resume(state, used.path, frozenset(taken))


def open_writer(rank: int, run_dir: str | None) -> Any:
    """Rank 0's TensorBoard writer in ``<run_dir>/tensorboard`` (a local folder or a URI); None elsewhere or
    without a run folder."""
    if rank != 0 or not run_dir:
        return None
    from orchestrator.train.tb_logging import MirroredWriter

    return MirroredWriter(storage.join(run_dir, "tensorboard"))
