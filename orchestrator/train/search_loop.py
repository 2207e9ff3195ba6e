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

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict, search_space_of
from orchestrator.data import InfiniteLoader
from orchestrator.io import checkpointing as ckpt
from orchestrator.io import storage
from orchestrator.train.metrics import (
    alpha_entropy,
    beta_entropy,
    beta_entropy_per_layer,
    end_levels,
    iou_from_confusion,
    param_free_ops,
    pixel_accuracy,
)
from orchestrator.train.resume import check_search_state
from orchestrator.train.search_setup import (
    SearchData,
    build_data,
    build_model,
    class_weights,
    cosine_lr,
    make_optimizers,
)
from orchestrator.train.steps import StepOptions, arch_step, weight_step
from orchestrator.train.worker import (
    Progress,
    Resume,
    all_reduce,
    any_nonfinite,
    evaluate,
    gather,
    newest_checkpoint,
    place,
    record_epoch,
    report,
    run_tag,
    say,
    setup_process,
    sync_buffers,
)
from search_space import SuperNet

PREVIEW_IMAGES = 2
"""Validation images shown as overlays in TensorBoard each epoch."""

DIVERGENCE_CHECK_STEPS = 50
"""Steps between mid-epoch checks for non-finite losses (one tiny all-reduce each); the epoch end always checks."""



# ---------------------------------------------------------------------------------------------- distributed


def sync_error(net: SuperNet) -> float:
    """Largest difference between ranks in alpha, beta and a float64 checksum of the weights (should be 0)."""
    local = torch.cat([net.alpha.detach().double().cpu().flatten(), net.beta.detach().double().cpu().flatten(),
                       torch.stack([p.detach().double().sum().cpu() for p in net.weight_parameters()])])
    everyone = gather(local)
    return max(float((t - everyone[0]).abs().max()) for t in everyone)


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_state(net: SuperNet, weight_opt: torch.optim.Optimizer, arch_opt: torch.optim.Optimizer,
                     progress: dict[str, Any], data: SearchData, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The checkpoint dict on rank 0 (None elsewhere). Collective: every rank must call it."""
    rngs = gather(ckpt.rng_state())
    loaders = gather({"train_a": data.train_a.state_dict(), "train_b": data.train_b.state_dict()})
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


def load_resume_state(cfg: ExperimentConfig, num_classes: int, rank: int = 0) -> Resume:
    """The newest verified state of this run (`worker.newest_checkpoint`), checked against this config."""
    resume = newest_checkpoint(rank, "search")
    if resume.state is None:
        return resume
    state = resume.state
    check_search_state(state, search_space_of(cfg), num_classes, source=f"checkpoint {resume.path}")
    if state["split_seed"] != cfg.data.split_seed:
        raise ckpt.CheckpointError(
            f"checkpoint {resume.path} was made with data.split_seed={state['split_seed']}, the config has "
            f"{cfg.data.split_seed}: resuming would change the trainA/trainB halves mid-search")
    return resume


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


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class EpochFacts:
    """What an epoch's steps left, the same on every rank: the all-reduced loss sums (weight, arch), the global
    step after them, the learning rates (weights, alpha/beta) and the slowest rank's seconds (train, val)."""

    epoch: int  # finished epochs, 1-based
    step: int
    steps: int  # steps per epoch
    sums: torch.Tensor
    arch_on: bool
    lrs: tuple[float, float]
    seconds: tuple[float, float] = (0.0, 0.0)
    images: int = 0

    def losses(self) -> dict[str, float]:
        """Mean losses, and the mean norms of alpha's and beta's gradients over the arch steps (how hard the
        architecture is pushed: a search that does not learn shows tiny ones)."""
        nan = float("nan")
        sums = self.sums.tolist() + [nan] * (4 - len(self.sums))  # (weight loss, arch loss, |grad alpha|, |grad beta|)
        mean = [float(v) / self.steps if self.arch_on or i == 0 else nan for i, v in enumerate(sums)]
        return {"train_loss": mean[0], "arch_loss": mean[1], "alpha_grad_norm": mean[2], "beta_grad_norm": mean[3]}


def epoch_metrics(net: SuperNet, facts: EpochFacts, evaluation: dict[str, Any],
                  start: tuple[torch.Tensor, torch.Tensor], previous_genotype: str) -> dict[str, Any]:
    """What every rank reports for a finished epoch; built from all-reduced values, so identical on all."""
    per_class, miou = iou_from_confusion(evaluation["cm"])
    genotype = net.genotype()
    text = genotype.to_json(indent=None)
    alpha, beta = net.alpha.detach().cpu(), net.beta.detach().cpu()
    train_seconds, val_seconds = facts.seconds
    return {
        "epoch": facts.epoch,  # ASHA's time attribute
        "step": facts.step,
        "val_miou": miou,
        "val_loss": evaluation["loss"],
        "val_pixel_acc": pixel_accuracy(evaluation["cm"]),
        "per_class_iou": per_class,
        **facts.losses(),
        "arch_updates": facts.arch_on,
        "genotype": text,
        "genotype_changed": text != previous_genotype,
        "path": list(genotype.path),
        "alpha_entropy": alpha_entropy(alpha),
        "beta_entropy": beta_entropy(beta),
        "beta_entropy_per_layer": beta_entropy_per_layer(beta),  # entry l: the choice leaving layer l (0: stem)
        "end_level_probs": end_levels(beta),  # where beta's path ends, per level: moves when beta learns
        "param_free_ops": param_free_ops(genotype),  # pooling/skip ops in the decoded cell: collapse warning
        "path_depth": max(genotype.path),  # deepest level of the decoded path (3: rate 32)
        "alpha_delta": float((alpha - start[0]).abs().max()),
        "beta_delta": float((beta - start[1]).abs().max()),
        "lr": facts.lrs[0],
        "arch_lr": facts.lrs[1],
        "epoch_seconds": train_seconds + val_seconds,
        "train_seconds": train_seconds,
        "val_seconds": val_seconds,
        "images_per_second": facts.images / train_seconds if train_seconds > 0 else float("nan"),
        "alpha": alpha.tolist(),
        "beta": beta.tolist(),
    }


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


NUMERIC_METRICS = ("val_miou", "val_loss", "val_pixel_acc", "train_loss", "arch_loss", "alpha_grad_norm",
                   "beta_grad_norm", "alpha_entropy",
                   "beta_entropy", "param_free_ops", "path_depth", "alpha_delta", "beta_delta", "lr", "arch_lr",
                   "epoch_seconds", "train_seconds", "val_seconds", "images_per_second")
"""The scalar metrics of an epoch's report. A diverged epoch reports each of them (NaN where unknown), so a
scheduler that watches any of them finds it in the last report."""


def diverged_metrics(facts: EpochFacts, reason: str) -> dict[str, Any]:
    """The final report of a diverged search: what is known, NaN for the rest, the reason."""
    known = {"epoch": facts.epoch, "step": facts.step, **facts.losses(), "arch_updates": facts.arch_on,
             "lr": facts.lrs[0], "arch_lr": facts.lrs[1], "epoch_seconds": facts.seconds[0],
             "train_seconds": facts.seconds[0], "diverged": True, "stop_reason": reason}
    return {**dict.fromkeys(NUMERIC_METRICS, float("nan")), **known}


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


def run_steps(w: Worker, data: SearchData, s: Any, step: int, total: int, arch_on: bool,
              progress: Progress | None = None) -> tuple[torch.Tensor, int, float]:
    """One epoch of steps: a weight step, then (from the warmup epoch on) an arch step, per batch. Returns the
    summed losses (weight, arch), the global step after them, and the last weight learning rate."""
    sums = torch.zeros(4, dtype=torch.float64, device=w.device)  # weight loss, arch loss, |grad alpha|, |grad beta|
    lr = cosine_lr(step, total, s.lr, s.lr_min)
    for i in range(data.steps_per_epoch):
        lr = cosine_lr(step, total, s.lr, s.lr_min)
        for group in w.weight_opt.param_groups:
            group["lr"] = lr
        sums[0] += weight_step(w.model, w.net, data.train_a.next(), w.weight_opt, w.criterion, w.opts, w.device)
        if arch_on:
            sums[1] += arch_step(w.net, data.train_b.next(), w.arch_opt, w.criterion, w.opts, w.device)
            sums[2] += w.net.alpha.grad.norm().double()  # averaged over workers: the same on every rank
            sums[3] += w.net.beta.grad.norm().double()
        step += 1
        if progress is not None:
            progress.step(i + 1)
        if (i + 1) % DIVERGENCE_CHECK_STEPS == 0 and i + 1 < data.steps_per_epoch and any_nonfinite(sums[:2]):
            break  # every rank breaks at the same step: the flag is all-reduced
    return sums, step, lr


def open_board(rank: int, run_dir: str | None, data: SearchData) -> Any:
    """Rank 0's TensorBoard writer in ``<run_dir>/tensorboard``, or None elsewhere."""
    if rank != 0 or not run_dir:
        return None
    from orchestrator.train.tb_logging import SearchBoard  # matplotlib and tensorboardX on rank 0 only

    return SearchBoard(storage.join(run_dir, "tensorboard"), data.classes)


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Run (or resume) one search on this worker; see the module docstring for ``loop_config``."""
    cfg = config_from_dict(loop_config["config"], source="train_loop_config")
    stop_at, run_dir = loop_config.get("stop_at_epoch"), loop_config.get("run_dir")
    setup_process(cfg, ray.train.get_context().get_world_rank())
    where = place(use_gpu=cfg.scaling.use_gpu)
    data = build_data(cfg, where.rank, where.world)
    resume = load_resume_state(cfg, data.num_classes, where.rank)
    state = resume.state
    w = build_worker(cfg, data, state, where.rank, where.world, where.device)
    s = cfg.search
    steps, total = data.steps_per_epoch, s.epochs * data.steps_per_epoch
    start_epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    previous = state["genotype"] if state else w.net.genotype().to_json(indent=None)
    end_epoch = min(s.epochs, stop_at) if stop_at else s.epochs
    board = open_board(where.rank, run_dir, data)
    if where.rank == 0:
        say(f"epochs {start_epoch}..{end_epoch} of {s.epochs}, {steps} steps/epoch, {where.world} workers, "
            f"device {where.device}" + (f", resumed at epoch {start_epoch}" if state else ""))
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        arch_on = epoch >= s.warmup_epochs
        start = (w.net.alpha.detach().cpu().clone(), w.net.beta.detach().cpu().clone())
        progress = Progress(cfg.runtime.progress_seconds, run_tag(run_dir, "search"), epoch + 1, s.epochs, steps,
                            cfg.data.batch_size * where.world * (2 if arch_on else 1), where.rank)
        sums, step, lr = run_steps(w, data, s, step, total, arch_on, progress)
        t1 = time.perf_counter()
        facts = EpochFacts(epoch + 1, step, steps, all_reduce(sums.cpu()) / where.world, arch_on,
                           (lr, w.arch_opt.param_groups[0]["lr"]), (t1 - t0, 0.0))
        reason = divergence(facts.sums, arch_on, w.net, epoch + 1)
        if reason is not None:
            stop(diverged_metrics(facts, reason), resume, where.rank, run_dir)
            break
        sync_buffers(w.net)
        evaluation = evaluate(w.net, data.val, data.num_classes, data.ignore_index, w.opts, where.device,
                              keep=PREVIEW_IMAGES if board is not None and cfg.runtime.log_images else 0)
        timing = all_reduce(torch.tensor([t1 - t0, time.perf_counter() - t1]), dist.ReduceOp.MAX)
        facts.seconds = (float(timing[0]), float(timing[1]))
        facts.images = steps * cfg.data.batch_size * where.world * (2 if arch_on else 1)
        metrics = epoch_metrics(w.net, facts, evaluation, start, previous)
        metrics.update(sync_error=sync_error(w.net), resumed_from_epoch=start_epoch, diverged=False, stop_reason=None)
        previous = metrics["genotype"]
        finish_epoch(cfg, w, data, metrics, evaluation, board, where.rank, run_dir, resume,
                     last=epoch + 1 == end_epoch, total=total)
    if board is not None:
        board.close()


def finish_epoch(cfg: ExperimentConfig, w: Worker, data: SearchData, metrics: dict[str, Any],
                 evaluation: dict[str, Any], board: Any, rank: int, run_dir: str | None, resume: Resume, *,
                 last: bool, total: int) -> None:
    """Checkpoint (every ``runtime.checkpoint_every`` epochs and at the last), TensorBoard, rank 0's record,
    the progress line, and the report. Collective: every rank calls it."""
    epoch = metrics["epoch"]
    state_out = None
    if epoch % cfg.runtime.checkpoint_every == 0 or last:
        progress = {"epoch": epoch, "step": metrics["step"], "total_steps": total,
                    "steps_per_epoch": data.steps_per_epoch, "genotype": metrics["genotype"]}
        state_out = checkpoint_state(w.net, w.weight_opt, w.arch_opt, progress, data, cfg)
    if board is not None:
        log_epoch(board, metrics, w.net, evaluation, data, cfg)
        record_epoch(run_dir, metrics)
    if rank == 0:
        say(f"epoch {epoch}/{cfg.search.epochs} train_loss={metrics['train_loss']:.4f} "
            f"arch_loss={metrics['arch_loss']:.4f} val_loss={metrics['val_loss']:.4f} "
            f"val_miou={metrics['val_miou']:.4f} path={metrics['path']} "
            f"changed={metrics['genotype_changed']} {metrics['epoch_seconds']:.1f}s")
    report(metrics, state_out, epoch, resume.taken)


def stop(metrics: dict[str, Any], resume: Resume, rank: int, run_dir: str | None) -> None:
    """Record and report a diverged epoch (no checkpoint: the last healthy one stays the run's latest)."""
    metrics["resumed_from_epoch"] = resume.state["epoch"] if resume.state else 0
    if rank == 0:
        say(f"STOPPED: {metrics['stop_reason']}")
        record_epoch(run_dir, metrics)
    report(metrics, None, metrics["epoch"])


def log_epoch(board: Any, metrics: dict[str, Any], net: SuperNet, evaluation: dict[str, Any], data: SearchData,
              cfg: ExperimentConfig) -> None:
    epoch = metrics["epoch"]
    board.scalars(epoch, metrics)
    board.architecture(epoch, net.alpha, net.beta, net.genotype(), images=cfg.runtime.log_images)
    if evaluation["preview"] is not None:
        board.predictions(epoch, *evaluation["preview"], data.num_classes, data.ignore_index)
    board.flush()
