"""Retraining a decoded architecture (paper Sec. 4.2): the `DiscreteNet` of a genotype, trained from scratch
with SGD and a poly learning rate from ``retrain.lr`` (0.05), on Ray Train with DDP.

`retrain_fn_per_worker` knows nothing about Tune; `orchestrator.train.trainers.make_retrain_trainer` builds its
TorchTrainer. It uses the search's worker toolkit (`orchestrator.train.worker`) and metric names. Each epoch
reports the validation mIoU and per-class IoU on every rank; rank 0 attaches a checkpoint (model, optimizer,
epoch, RNG) and the loop resumes from the newest verified checkpoint.

Loop config: ``{"config": <config dict>, "genotype": <genotype dict>, "run_dir": <folder for TensorBoard>,
"standalone": <bool>}``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray.train.torch
import torch
from torch import nn

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.data import load_dataset, make_loader
from orchestrator.io import checkpointing as ckpt
from orchestrator.train.metrics import iou_from_confusion, nan_to_none, pixel_accuracy
from orchestrator.train.steps import StepOptions, weight_step
from orchestrator.train.worker import (
    Place,
    Progress,
    all_reduce,
    evaluate,
    newest_checkpoint,
    open_writer,
    place,
    record_epoch,
    report,
    run_tag,
    say,
    setup_process,
    sync_buffers,
)
from search_space import DiscreteNet, Genotype


def poly_lr(step: int, total: int, lr: float, power: float) -> float:
    """DeepLab's poly schedule: ``lr * (1 - step / total) ** power``."""
    return lr * (1.0 - min(step, total) / max(total, 1)) ** power


def build_retrain_model(cfg: ExperimentConfig, genotype: Genotype, num_classes: int) -> DiscreteNet:
    return DiscreteNet(genotype, num_classes, filter_multiplier=cfg.retrain.filter_multiplier,
                       ops=cfg.search_space.ops, stem_channels=tuple(cfg.search_space.stem_channels))


def _loaders(cfg: ExperimentConfig, rank: int, world: int, standalone: bool = False):
    d, r = cfg.data, cfg.retrain
    train = load_dataset(d.dataset, d.root, "train", train=True, crop_size=r.crop_size,
                         **{**d.options, **r.data_options})
    val = load_dataset(d.dataset, d.root, "val", train=False, crop_size=r.crop_size,
                       **{**d.val_options, **r.val_options})
    if len(train) < r.batch_size * world:
        raise ValueError(f"data: the training split has {len(train)} images, fewer than retrain.batch_size "
                         f"({r.batch_size}) x retrain.num_workers ({world})")
    loader = make_loader(train, r.batch_size, shuffle=True, num_workers=d.loader_workers, seed=cfg.runtime.seed,
                         drop_last=True, pin_memory=cfg.scaling.use_gpu)
    shard = torch.utils.data.Subset(val, list(range(rank, len(val), world)))
    val_loader = torch.utils.data.DataLoader(shard, batch_size=d.val_batch_size, num_workers=d.loader_workers)
    if standalone:
        return loader, val_loader, train
    return (ray.train.torch.prepare_data_loader(loader),
            ray.train.torch.prepare_data_loader(val_loader, add_dist_sampler=False), train)


def _resume(net: nn.Module, optimizer: torch.optim.Optimizer, genotype: Genotype, rank: int) -> tuple[int, frozenset]:
    """Load the newest checkpoint that verifies (a corrupt latest one is skipped with a warning, as in the
    search); returns the epoch to start from and the checkpoint names not to report into after a fallback."""
    resume = newest_checkpoint(rank, "retrain")
    if resume.state is None:
        return 0, frozenset()
    state = resume.state
    if state.get("genotype") != genotype.to_dict():
        raise ckpt.CheckpointError(f"checkpoint {resume.path} retrains another genotype")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ckpt.set_rng_state(state["rng"])
    return int(state["epoch"]), resume.taken


def train_epoch(model: nn.Module, net: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                criterion: nn.Module, opts: StepOptions, where: Place, epoch: int, cfg: ExperimentConfig,
                tag: str = "retrain") -> tuple[float, float, int]:
    """One epoch of SGD steps under the poly schedule; returns the mean training loss over all workers, the last
    learning rate and this worker's images."""
    r = cfg.retrain
    total = r.epochs * len(loader)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    loss_sum, images, lr = torch.zeros(1, dtype=torch.float64), 0, r.lr
    progress = Progress(cfg.runtime.progress_seconds, tag, epoch + 1, r.epochs, len(loader),
                        r.batch_size * where.world, where.rank)
    for i, (x, y) in enumerate(loader):
        x, y = x.to(where.device, non_blocking=True), y.to(where.device, non_blocking=True)  # standalone: not yet
        lr = poly_lr(epoch * len(loader) + i, total, r.lr, r.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = weight_step(model, net, (x, y), optimizer, criterion, opts, where.device)
        loss_sum, images = loss_sum + loss.double().cpu(), images + x.shape[0]
        progress.step(i + 1)
    train_loss = float(all_reduce(loss_sum)[0]) / where.world / max(len(loader), 1)
    return train_loss, lr, images


def retrain_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Retrain ``loop_config["genotype"]`` on this Ray Train worker. With ``loop_config["standalone"]`` it runs in
    the calling process instead, as the only worker, without any `ray.train` API (which refuses to run inside a
    Tune trial): no DDP, no checkpoint, reports only to `report_listener` functions (a Tune trial's)."""
    cfg = config_from_dict(loop_config["config"], "retrain loop config")
    genotype = Genotype.from_dict(loop_config["genotype"], "retrain genotype")
    where = place(bool(loop_config.get("standalone")), cfg.scaling.use_gpu)
    setup_process(cfg, where.rank)
    train_loader, val_loader, train_ds = _loaders(cfg, where.rank, where.world, where.standalone)
    net = build_retrain_model(cfg, genotype, train_ds.num_classes)
    r = cfg.retrain
    optimizer = torch.optim.SGD(net.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    if where.standalone:
        start_epoch, taken, model = 0, frozenset(), net.to(where.device)
    else:
        start_epoch, taken = _resume(net, optimizer, genotype, where.rank)
        model = ray.train.torch.prepare_model(net)
    criterion = nn.CrossEntropyLoss(ignore_index=train_ds.ignore_index)
    opts = StepOptions(bf16=cfg.runtime.bf16, channels_last=cfg.runtime.channels_last)  # no clip: the paper's SGD
    run_dir = loop_config.get("run_dir") if where.rank == 0 else None
    writer = open_writer(where.rank, run_dir)
    for epoch in range(start_epoch, r.epochs):
        t0 = time.perf_counter()
        train_loss, lr, images = train_epoch(model, net, train_loader, optimizer, criterion, opts, where, epoch, cfg,
                                             run_tag(loop_config.get("run_dir"), "retrain"))
        seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            _stop_diverged(run_dir, epoch + 1, train_loss, lr, seconds, where)
            break
        sync_buffers(net)
        ev = evaluate(net, val_loader, train_ds.num_classes, train_ds.ignore_index, opts, where.device)
        per_class, miou = iou_from_confusion(ev["cm"])
        metrics = {"epoch": epoch + 1, "val_miou": miou, "val_loss": ev["loss"], "val_pixel_acc":
                   pixel_accuracy(ev["cm"]), "per_class_iou": nan_to_none(per_class),
                   "classes": list(train_ds.classes), "train_loss": train_loss, "lr": lr, "epoch_seconds": seconds,
                   "images_per_second": images * where.world / max(seconds, 1e-9), "diverged": False,
                   "stop_reason": None}
        _log(writer, metrics, list(train_ds.classes))
        if where.rank == 0:
            record_epoch(run_dir, metrics)
            say(f"epoch {epoch + 1}/{r.epochs} train_loss={train_loss:.4f} val_loss={ev['loss']:.4f} "
                f"val_miou={miou:.4f} {seconds:.1f}s", "retrain")
        state = None
        if where.rank == 0 and not where.standalone:
            state = {"format_version": ckpt.FORMAT_VERSION, "model": net.state_dict(),
                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": (epoch + 1) * len(train_loader),
                     "genotype": genotype.to_dict(), "rng": ckpt.rng_state(), "config": config_to_dict(cfg)}
        report(metrics, state, epoch + 1, taken, to_ray=not where.standalone)
    if writer is not None:
        writer.close()


def _stop_diverged(run_dir: str | None, epoch: int, train_loss: float, lr: float, seconds: float,
                   where: Place) -> None:
    """Report a retrain whose loss turned NaN or infinite, without a checkpoint (the last healthy one stays the
    latest), and end it: raising would make Ray retry a deterministic failure ``runtime.max_failures`` times."""
    reason = (f"retrain diverged in epoch {epoch}: train_loss={train_loss:g}. Lower retrain.lr; the last "
              "checkpoint is from before this epoch")
    nan = float("nan")
    metrics = {"epoch": epoch, "val_miou": nan, "val_loss": nan, "val_pixel_acc": nan, "train_loss": train_loss,
               "lr": lr, "epoch_seconds": seconds, "diverged": True, "stop_reason": reason}
    if where.rank == 0:
        say(f"STOPPED: {reason}", "retrain")
        record_epoch(run_dir, metrics)
    report(metrics, None, epoch, to_ray=not where.standalone)


def _log(writer, metrics: dict[str, Any], classes: list[str]) -> None:
    if writer is None:
        return
    step = metrics["epoch"]
    for key in ("val_miou", "val_loss", "val_pixel_acc", "train_loss", "lr", "images_per_second"):
        writer.add_scalar(f"retrain/{key}", metrics[key], step)
    for name, iou in zip(classes, metrics["per_class_iou"], strict=True):
        if iou is not None:
            writer.add_scalar(f"retrain_iou/{name}", iou, step)
    writer.flush()
