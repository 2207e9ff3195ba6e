"""The per-worker bilevel search loop (Liu et al. 2019, "Search procedure"), run by Ray Train on N DDP workers.

`train_fn_per_worker` knows nothing about Tune. Each step updates the supernet weights on a trainA batch (SGD,
cosine learning rate) and, from the warmup epoch on, alpha and beta on a trainB batch (Adam): the paper's
first-order alternation (`orchestrator.train.steps`). The weight step runs through the DDP-wrapped model, so DDP
averages the weight gradients across workers. The arch step computes alpha's and beta's gradients only, on the
unwrapped network outside DDP's reducer, and averages them with one explicit all-reduce: no weight gradient is
computed or sent for it. Identical gradients into identical optimizer states keep every worker identical.

The learning-rate schedule is per step: cosine from ``search.lr`` to ``search.lr_min`` over
``epochs x steps_per_epoch`` steps, computed in closed form from the global step (no accumulated rounding, and
nothing to restore beyond the step). alpha/beta use a constant ``search.arch_lr``, as in the paper.

Each epoch ends with validation of the supernet on every worker's shard of the validation set (confusion
matrices and loss sums all-reduced, so every rank reports the same metrics), a report to Ray Train on every
rank, and (every ``runtime.checkpoint_every`` epochs, and at the last) a checkpoint written by rank 0 holding
everything to continue bit-for-bit (`orchestrator.io.checkpointing`).

Failures. A worker group that Ray restarts (a lost node, a killed worker) resumes from the newest checkpoint that
passes its SHA-256 check; a corrupt latest one is skipped with a warning (`checkpointing.read_newest_valid`).
Every epoch reports ``resumed_from_epoch`` (0 for a fresh start), so records show where each attempt began. A
search whose losses (or alpha/beta) turn NaN or infinite has diverged: all ranks agree on it through an
all-reduce, report the epoch once more with ``diverged: True``, a ``stop_reason`` and NaN validation metrics,
write no checkpoint (the last healthy one stays the latest) and return normally. Raising instead would make Ray
retry a deterministic failure ``runtime.max_failures`` times.

Loop config (what `orchestrator.train.trainers.make_trainer` passes): ``{"config": <config dict>, "run_dir":
<local folder for TensorBoard>, "stop_at_epoch": <int or None>}``. ``stop_at_epoch`` ends this run after that
many finished epochs while the schedule still spans ``search.epochs``: a later run under the same name resumes
from the checkpoint and continues the same search.
"""

from __future__ import annotations

import contextlib
import math
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict, search_space_of
from orchestrator.data import DataError, InfiniteLoader, load_dataset, make_loader, search_splits
from orchestrator.io import checkpointing as ckpt
from orchestrator.io.atomic import write_json
from orchestrator.train.metrics import (
    alpha_entropy,
    beta_entropy,
    beta_entropy_per_layer,
    class_weights_from_counts,
    confusion_matrix,
    iou_from_confusion,
    param_free_ops,
    pixel_accuracy,
)
from orchestrator.train.steps import StepOptions, arch_step, autocast, inputs, weight_step
from search_space import SuperNet

PREVIEW_IMAGES = 2
"""Validation images shown as overlays in TensorBoard each epoch."""

DIVERGENCE_CHECK_STEPS = 50
"""Steps between mid-epoch checks for non-finite losses (one tiny all-reduce each); the epoch end always checks."""

EPOCHS_DIR = "epochs"
"""Rank 0's own per-epoch records, ``<run_dir>/epochs/epoch-<k>.json`` (Ray keeps metrics only with the
checkpoints it keeps; a re-run epoch after a restart replaces its file)."""


# ---------------------------------------------------------------------------------------------- setup


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


def setup_process(cfg: ExperimentConfig, rank: int) -> None:
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


@dataclass
class SearchData:
    """The search's three loaders and the facts about the dataset the loop needs."""

    train_a: InfiniteLoader  # weights
    train_b: InfiniteLoader  # alpha and beta
    val: Any  # this worker's shard of the validation set, moved to the device by prepare_data_loader
    steps_per_epoch: int
    classes: list[str]
    num_classes: int
    ignore_index: int
    train_ds: Any


def build_data(cfg: ExperimentConfig, rank: int, world: int) -> SearchData:
    """Datasets, the trainA/trainB halves and loaders; sharding and devices via ``prepare_data_loader``."""
    d = cfg.data
    train = load_dataset(d.dataset, d.root, "train", train=True, crop_size=d.crop_size, **d.options)
    val = load_dataset(d.dataset, d.root, "val", train=False, crop_size=d.crop_size, **d.val_options)
    train_a, train_b = search_splits(train, d.split_seed)
    if min(len(train_a), len(train_b)) < d.batch_size * world:
        raise DataError(f"data: trainA/trainB have {len(train_a)}/{len(train_b)} images, fewer than "
                         f"data.batch_size ({d.batch_size}) x scaling.num_workers ({world}): no full batch")

    def infinite(ds: Any, seed: int) -> InfiniteLoader:
        loader = make_loader(ds, d.batch_size, shuffle=True, num_workers=d.loader_workers, seed=seed,
                             drop_last=True,  # drop_last: a 1-image batch breaks batch norm at rate 32
                             pin_memory=cfg.scaling.use_gpu)  # page-locked: Ray's copy to the GPU overlaps
        return InfiniteLoader(ray.train.torch.prepare_data_loader(loader))

    loader_a = infinite(train_a, cfg.runtime.seed)
    loader_b = infinite(train_b, cfg.runtime.seed + 1)
    steps = len(loader_a.loader)
    if cfg.search.max_steps_per_epoch:
        steps = min(steps, cfg.search.max_steps_per_epoch)
    # Every rank must run the same number of DDP steps; DistributedSampler already pads shards to equal size.
    steps = int(_all_reduce(torch.tensor(float(steps)), dist.ReduceOp.MIN)) if _distributed() else steps
    # Validation: a plain strided shard (no padding, so no image counts twice), evaluated without DDP.
    shard = Subset(val, list(range(rank, len(val), world)))
    val_loader = DataLoader(shard, batch_size=d.val_batch_size, shuffle=False, num_workers=d.loader_workers)
    val_loader = ray.train.torch.prepare_data_loader(val_loader, add_dist_sampler=False)
    return SearchData(loader_a, loader_b, val_loader, steps, list(train.classes), train.num_classes,
                      train.ignore_index, train_a)


def build_model(cfg: ExperimentConfig, num_classes: int) -> SuperNet:
    s = cfg.search_space
    return SuperNet(num_classes, layers=s.layers, blocks=s.blocks, filter_multiplier=s.filter_multiplier,
                    ops=s.ops, stem_channels=tuple(s.stem_channels), checkpoint_cells=cfg.runtime.checkpoint_levels,
                    recompute_units=cfg.runtime.recompute_units, head=s.head)


def make_optimizers(net: SuperNet, cfg: ExperimentConfig) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """SGD for the weights, Adam for alpha and beta (the paper's optimizers; values from the config)."""
    s = cfg.search
    weights = torch.optim.SGD(net.weight_parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    arch = torch.optim.Adam(net.arch_parameters(), lr=s.arch_lr, betas=tuple(s.arch_betas),
                            weight_decay=s.arch_weight_decay)
    return weights, arch


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """The weight learning rate at ``step`` of ``total``: cosine from ``lr`` (step 0) towards ``lr_min``."""
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def class_weights(ds: Any, num_classes: int, ignore_index: int, samples: int = 64) -> torch.Tensor:
    """Loss weights from the label frequencies of up to ``samples`` trainA images (same on every rank).

    Augmentation draws from the global RNG, so the count runs inside ``fork_rng``: it must not shift the
    random stream the search itself uses.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i in range(min(samples, len(ds))):
            label = ds[i][1]
            label = label[label != ignore_index]
            counts += torch.bincount(label.flatten(), minlength=num_classes).double()
    return class_weights_from_counts(counts)


# ---------------------------------------------------------------------------------------------- distributed


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    """All-reduce a small tensor (on the backend's device for NCCL); returns it on the CPU."""
    if not _distributed():
        return t
    out = t.to(ray.train.torch.get_device()) if dist.get_backend() == "nccl" else t
    dist.all_reduce(out, op=op or dist.ReduceOp.SUM)
    return out.cpu()


def _gather(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(net: nn.Module) -> None:
    """Broadcast rank 0's batch-norm statistics: each rank's last forward updated its own, and validation
    and checkpoints must see one model."""
    if _distributed():
        for buf in net.buffers():
            dist.broadcast(buf, src=0)


def sync_error(net: SuperNet) -> float:
    """Largest difference between ranks in alpha, beta and a float64 checksum of the weights (should be 0)."""
    local = torch.cat([net.alpha.detach().double().cpu().flatten(), net.beta.detach().double().cpu().flatten(),
                       torch.stack([p.detach().double().sum().cpu() for p in net.weight_parameters()])])
    everyone = _gather(local)
    return max(float((t - everyone[0]).abs().max()) for t in everyone)


# ---------------------------------------------------------------------------------------------- steps


@torch.no_grad()
def evaluate(net: SuperNet, loader: Any, num_classes: int, ignore_index: int, cfg: ExperimentConfig,
             device: torch.device, keep: int = 0) -> dict[str, Any]:
    """Confusion matrix and loss sum over this rank's validation shard (summed across ranks), plus the first
    ``keep`` images with their labels and predictions for TensorBoard."""
    net.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, pixels = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    preview = None
    opts = StepOptions.from_config(cfg)
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction="sum")
    for x, y in loader:
        with autocast(opts, device):
            logits = net(inputs(x, opts)).float()
        pred = logits.argmax(1)
        cm += confusion_matrix(pred, y, num_classes, ignore_index)
        loss_sum += float(criterion(logits, y))
        pixels += float((y != ignore_index).sum())
        if preview is None and keep:
            preview = (x[:keep].cpu(), y[:keep].cpu(), pred[:keep].cpu())
    net.train()
    totals = _all_reduce(torch.cat([cm.flatten().double(), loss_sum[None], pixels[None]]))
    cm = totals[:-2].round().long().reshape(num_classes, num_classes)
    return {"cm": cm, "loss": float(totals[-2] / totals[-1]) if totals[-1] > 0 else float("nan"),
            "preview": preview}


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_state(net: SuperNet, weight_opt: torch.optim.Optimizer, arch_opt: torch.optim.Optimizer,
                     progress: dict[str, Any], data: SearchData, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The checkpoint dict on rank 0 (None elsewhere). Collective: every rank must call it."""
    rngs = _gather(ckpt.rng_state())
    loaders = _gather({"train_a": data.train_a.state_dict(), "train_b": data.train_b.state_dict()})
    if ray.train.get_context().get_world_rank() != 0:
        return None
    return {
        "format_version": ckpt.FORMAT_VERSION,
        **progress,  # epoch, step, total_steps, steps_per_epoch, genotype
        "model": net.state_dict(),
        "weight_optimizer": weight_opt.state_dict(),
        "arch_optimizer": arch_opt.state_dict(),
        "lr_schedule": {"kind": "cosine_per_step", "step": progress["step"], "total_steps": progress["total_steps"],
                        "lr": cfg.search.lr, "lr_min": cfg.search.lr_min},
        "rng": rngs,  # one entry per rank
        "loaders": loaders,  # one entry per rank
        "world_size": len(rngs),
        "split_seed": cfg.data.split_seed,
        "config": config_to_dict(cfg),
        "search_space": {**search_space_of(cfg), "num_classes": data.num_classes},
    }


@dataclass
class Resume:
    """What a (re)started worker group begins from."""

    state: dict[str, Any] | None  # None: a fresh search
    taken: frozenset[str] = frozenset()  # checkpoint folder names not to report into (after a fallback)


def load_resume_state(cfg: ExperimentConfig, num_classes: int, rank: int = 0) -> Resume:
    """The newest verified state of this run (``ray.train.get_checkpoint()``, else an older checkpoint when that
    one is corrupt), checked against this config."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resume(None)
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        if rank == 0:
            warnings.warn(message, stacklevel=2)
            say(f"WARNING: {message}")

    state, used = ckpt.read_newest_valid(checkpoint, warn)
    ckpt.check_compatible(state, search_space_of(cfg), num_classes, source=f"checkpoint {used.path}")
    if state["split_seed"] != cfg.data.split_seed:
        raise ckpt.CheckpointError(
            f"checkpoint {used.path} was made with data.split_seed={state['split_seed']}, the config has "
            f"{cfg.data.split_seed}: resuming would change the trainA/trainB halves mid-search")
    if not skipped:
        return Resume(state)
    if rank == 0:
        say(f"resuming from {used.path} (epoch {state['epoch']}) instead of {checkpoint.path}")
    taken = {os.path.basename(c.path) for c in ckpt.sibling_checkpoints(used)} | {os.path.basename(used.path)}
    return Resume(state, frozenset(taken))


def resume_loader(loader: InfiniteLoader, state: dict[str, int]) -> None:
    """Position ``loader`` as recorded, now. `InfiniteLoader` skips to its position lazily, at the next
    ``next()``; with in-process loading the skipped batches' augmentation would draw from the global RNG that
    is about to be restored. So skip now, inside ``fork_rng``, by replaying the last drawn batch."""
    if state["batch"] == 0:
        loader.load_state_dict(state)
        return
    with torch.random.fork_rng(devices=[]):
        loader.load_state_dict({**state, "batch": state["batch"] - 1})
        loader.next()


def restore(state: dict[str, Any], net: SuperNet, weight_opt: torch.optim.Optimizer,
            arch_opt: torch.optim.Optimizer, data: SearchData, rank: int, world: int) -> None:
    """Load model, optimizers, loader positions and this rank's RNG state from a checkpoint dict."""
    net.load_state_dict(state["model"])
    weight_opt.load_state_dict(state["weight_optimizer"])
    arch_opt.load_state_dict(state["arch_optimizer"])
    mine = rank if rank < state["world_size"] else 0
    if state["world_size"] != world:
        warnings.warn(f"checkpoint was made by {state['world_size']} workers, resuming on {world}: data order "
                      "and random streams differ from an uninterrupted run", stacklevel=2)
    resume_loader(data.train_a, state["loaders"][mine]["train_a"])
    resume_loader(data.train_b, state["loaders"][mine]["train_b"])
    ckpt.set_rng_state(state["rng"][mine])


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
    `report_listener` functions, if any. Also used by the retrain loop."""
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


# ---------------------------------------------------------------------------------------------- the loop


def epoch_metrics(net: SuperNet, epoch: int, step: int, sums: torch.Tensor, evaluation: dict[str, Any],
                  timing: torch.Tensor, images: int, arch_on: bool, start: tuple[torch.Tensor, torch.Tensor],
                  previous_genotype: str, lrs: tuple[float, float], steps: int) -> dict[str, Any]:
    """What every rank reports for a finished epoch; built from all-reduced values, so identical on all."""
    per_class, miou = iou_from_confusion(evaluation["cm"])
    genotype = net.genotype()
    text = genotype.to_json(indent=None)
    alpha, beta = net.alpha.detach().cpu(), net.beta.detach().cpu()
    train_seconds, val_seconds = float(timing[0]), float(timing[1])
    return {
        "epoch": epoch,  # finished epochs, 1-based: ASHA's time attribute
        "step": step,
        "val_miou": miou,
        "val_loss": evaluation["loss"],
        "val_pixel_acc": pixel_accuracy(evaluation["cm"]),
        "per_class_iou": per_class,
        "train_loss": float(sums[0]) / steps,
        "arch_loss": float(sums[1]) / steps if arch_on else float("nan"),
        "arch_updates": arch_on,
        "genotype": text,
        "genotype_changed": text != previous_genotype,
        "path": list(genotype.path),
        "alpha_entropy": alpha_entropy(alpha),
        "beta_entropy": beta_entropy(beta),
        "beta_entropy_per_layer": beta_entropy_per_layer(beta),  # entry l: the choice leaving layer l (0: stem)
        "param_free_ops": param_free_ops(genotype),  # pooling/skip ops in the decoded cell: collapse warning
        "path_depth": max(genotype.path),  # deepest level of the decoded path (3: rate 32)
        "alpha_delta": float((alpha - start[0]).abs().max()),
        "beta_delta": float((beta - start[1]).abs().max()),
        "lr": lrs[0],
        "arch_lr": lrs[1],
        "epoch_seconds": train_seconds + val_seconds,
        "train_seconds": train_seconds,
        "val_seconds": val_seconds,
        "images_per_second": images / train_seconds if train_seconds > 0 else float("nan"),
        "alpha": alpha.tolist(),
        "beta": beta.tolist(),
    }


def _nonfinite(values: torch.Tensor) -> bool:
    """True on every rank when any rank's ``values`` hold a NaN or infinity. Collective."""
    flag = torch.tensor([0.0 if bool(torch.isfinite(values).all()) else 1.0])
    return bool(_all_reduce(flag, dist.ReduceOp.MAX)[0] > 0)


def divergence(sums: torch.Tensor, arch_on: bool, net: SuperNet, epoch: int) -> str | None:
    """Why the search has diverged in ``epoch`` (1-based), or None. ``sums`` are the all-reduced loss sums, the
    same on every rank; alpha and beta are identical on every rank, so every rank returns the same answer."""
    what = []
    if not math.isfinite(float(sums[0])):
        what.append(f"train_loss={float(sums[0]):g}")
    if arch_on and not math.isfinite(float(sums[1])):
        what.append(f"arch_loss={float(sums[1]):g}")
    for name in ("alpha", "beta"):
        if not bool(torch.isfinite(getattr(net, name).detach()).all()):
            what.append(f"{name} has non-finite values")
    if not what:
        return None
    return (f"diverged in epoch {epoch}: {', '.join(what)}. Lower search.lr or search.arch_lr, or set "
            "search.grad_clip; the run's last checkpoint is from before this epoch")


def diverged_metrics(cfg: ExperimentConfig, epoch: int, step: int, sums: torch.Tensor, steps: int, arch_on: bool,
                     lrs: tuple[float, float], seconds: float, reason: str) -> dict[str, Any]:
    """The final report of a diverged search: what is known, NaN validation metrics, the reason."""
    nan = float("nan")
    metrics = {"epoch": epoch, "step": step, "val_miou": nan, "val_loss": nan, "val_pixel_acc": nan,
               "train_loss": float(sums[0]) / steps, "arch_loss": float(sums[1]) / steps if arch_on else nan,
               "arch_updates": arch_on, "lr": lrs[0], "arch_lr": lrs[1], "epoch_seconds": seconds,
               "train_seconds": seconds, "diverged": True, "stop_reason": reason}
    metrics.setdefault(cfg.tune.metric, nan)  # Tune and ASHA expect the metric in every report
    return metrics


def say(message: str, tag: str = "search") -> None:
    """One progress line on stdout. Not print(): Train V2 patches print to both print and log, so every line
    reached the driver twice."""
    sys.stdout.write(f"[{tag}] {message}\n")
    sys.stdout.flush()


@dataclass
class Worker:
    """One worker's search: the supernet (bare and as wrapped for DDP), its two optimizers, loss, step options."""

    net: SuperNet
    model: nn.Module
    weight_opt: torch.optim.Optimizer
    arch_opt: torch.optim.Optimizer
    criterion: nn.Module
    opts: StepOptions
    device: torch.device


def build_worker(cfg: ExperimentConfig, data: SearchData, state: dict[str, Any] | None, rank: int, world: int,
                 device: torch.device) -> Worker:
    """The supernet on the device (DDP when world > 1), its optimizers (restored from ``state``) and loss."""
    net = build_model(cfg, data.num_classes)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(net)  # moves to the device; DDP when world > 1
    net = model.module if isinstance(model, DistributedDataParallel) else model
    weight_opt, arch_opt = make_optimizers(net, cfg)
    if state is not None:
        restore(state, net, weight_opt, arch_opt, data, rank, world)
    weight = (class_weights(data.train_ds, data.num_classes, data.ignore_index).to(device)
              if cfg.search.class_weights else None)
    criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=data.ignore_index)
    return Worker(net, model, weight_opt, arch_opt, criterion, StepOptions.from_config(cfg), device)


def run_steps(w: Worker, data: SearchData, s: Any, step: int, total: int, arch_on: bool
              ) -> tuple[torch.Tensor, int, float]:
    """One epoch of steps: a weight step, then (from the warmup epoch on) an arch step, per batch. Returns the
    summed losses (weight, arch), the global step after them, and the last weight learning rate."""
    sums = torch.zeros(2, dtype=torch.float64, device=w.device)
    lr = cosine_lr(step, total, s.lr, s.lr_min)
    for i in range(data.steps_per_epoch):
        lr = cosine_lr(step, total, s.lr, s.lr_min)
        for group in w.weight_opt.param_groups:
            group["lr"] = lr
        sums[0] += weight_step(w.model, w.net, data.train_a.next(), w.weight_opt, w.criterion, w.opts, w.device)
        if arch_on:
            sums[1] += arch_step(w.net, data.train_b.next(), w.arch_opt, w.criterion, w.opts, w.device)
        step += 1
        if (i + 1) % DIVERGENCE_CHECK_STEPS == 0 and i + 1 < data.steps_per_epoch and _nonfinite(sums):
            break  # every rank breaks at the same step: the flag is all-reduced
    return sums, step, lr


def open_board(rank: int, run_dir: str | None, data: SearchData) -> Any:
    """Rank 0's TensorBoard writer in ``<run_dir>/tensorboard``, or None elsewhere."""
    if rank != 0 or not run_dir:
        return None
    from orchestrator.train.tb_logging import SearchBoard  # matplotlib and tensorboardX on rank 0 only

    return SearchBoard(os.path.join(run_dir, "tensorboard"), data.classes)


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Run (or resume) one search on this worker; see the module docstring for ``loop_config``."""
    cfg = config_from_dict(loop_config["config"], source="train_loop_config")
    stop_at, run_dir = loop_config.get("stop_at_epoch"), loop_config.get("run_dir")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    setup_process(cfg, rank)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any collective: NCCL and all_gather_object use the current device
    data = build_data(cfg, rank, world)
    resume = load_resume_state(cfg, data.num_classes, rank)
    state = resume.state
    w = build_worker(cfg, data, state, rank, world, device)
    net, weight_opt, arch_opt = w.net, w.weight_opt, w.arch_opt

    s = cfg.search
    steps, total = data.steps_per_epoch, s.epochs * data.steps_per_epoch
    start_epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    previous = state["genotype"] if state else net.genotype().to_json(indent=None)
    end_epoch = min(s.epochs, stop_at) if stop_at else s.epochs
    board = open_board(rank, run_dir, data)
    if rank == 0:
        say(f"epochs {start_epoch}..{end_epoch} of {s.epochs}, {steps} steps/epoch, {world} workers, device {device}"
            + (f", resumed at epoch {start_epoch}" if state else ""))

    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        arch_on = epoch >= s.warmup_epochs
        start = (net.alpha.detach().cpu().clone(), net.beta.detach().cpu().clone())
        sums, step, lr = run_steps(w, data, s, step, total, arch_on)
        t1 = time.perf_counter()
        sums = _all_reduce(sums.cpu()) / world
        reason = divergence(sums, arch_on, net, epoch + 1)
        if reason is not None:
            stop(cfg, diverged_metrics(cfg, epoch + 1, step, sums, steps, arch_on,
                                       (lr, arch_opt.param_groups[0]["lr"]), t1 - t0, reason),
                 resume, rank, run_dir)
            break
        sync_buffers(net)
        evaluation = evaluate(net, data.val, data.num_classes, data.ignore_index, cfg, device,
                              keep=PREVIEW_IMAGES if board is not None and cfg.runtime.log_images else 0)
        t2 = time.perf_counter()
        timing = _all_reduce(torch.tensor([t1 - t0, t2 - t1]), dist.ReduceOp.MAX)
        images = steps * cfg.data.batch_size * world * (2 if arch_on else 1)
        metrics = epoch_metrics(net, epoch + 1, step, sums, evaluation, timing, images, arch_on, start, previous,
                                (lr, arch_opt.param_groups[0]["lr"]), steps)
        metrics.update(sync_error=sync_error(net), resumed_from_epoch=start_epoch, diverged=False, stop_reason=None)
        previous = metrics["genotype"]
        last = epoch + 1 == end_epoch
        state_out = None
        if (epoch + 1) % cfg.runtime.checkpoint_every == 0 or last:
            progress = {"epoch": epoch + 1, "step": step, "total_steps": total, "steps_per_epoch": steps,
                        "genotype": metrics["genotype"]}
            state_out = checkpoint_state(net, weight_opt, arch_opt, progress, data, cfg)
        if board is not None:
            log_epoch(board, metrics, net, evaluation, data, cfg)
            write_json(os.path.join(run_dir, EPOCHS_DIR, f"epoch-{epoch + 1:04d}.json"), metrics)
        if rank == 0:
            say(f"epoch {epoch + 1}/{s.epochs} train_loss={metrics['train_loss']:.4f} "
                f"arch_loss={metrics['arch_loss']:.4f} val_loss={metrics['val_loss']:.4f} "
                f"val_miou={metrics['val_miou']:.4f} path={metrics['path']} "
                f"changed={metrics['genotype_changed']} {metrics['epoch_seconds']:.1f}s")
        report(metrics, state_out, epoch + 1, resume.taken)
    if board is not None:
        board.close()


def stop(cfg: ExperimentConfig, metrics: dict[str, Any], resume: Resume, rank: int, run_dir: str | None) -> None:
    """Record and report a diverged epoch (no checkpoint: the last healthy one stays the run's latest)."""
    metrics["resumed_from_epoch"] = resume.state["epoch"] if resume.state else 0
    if rank == 0:
        say(f"STOPPED: {metrics['stop_reason']}")
        if run_dir:
            write_json(os.path.join(run_dir, EPOCHS_DIR, f"epoch-{metrics['epoch']:04d}.json"), metrics)
    report(metrics, None, metrics["epoch"])


def log_epoch(board: Any, metrics: dict[str, Any], net: SuperNet, evaluation: dict[str, Any], data: SearchData,
              cfg: ExperimentConfig) -> None:
    epoch = metrics["epoch"]
    board.scalars(epoch, metrics)
    board.architecture(epoch, net.alpha, net.beta, net.genotype(), images=cfg.runtime.log_images)
    if evaluation["preview"] is not None:
        board.predictions(epoch, *evaluation["preview"], data.num_classes, data.ignore_index)
    board.writer.flush()
