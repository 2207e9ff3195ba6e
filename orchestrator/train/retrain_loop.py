"""Retraining a decoded architecture (paper Sec. 4.2): the `DiscreteNet` of a genotype, trained from scratch
with SGD and a poly learning rate from ``retrain.lr`` (0.05), on Ray Train with DDP.

`retrain_fn_per_worker` knows nothing about Tune; `make_retrain_trainer` / `run_retrain` build and fit the
TorchTrainer. Each epoch reports the validation mIoU and per-class IoU on every rank; rank 0 attaches a
checkpoint (model, optimizer, epoch, RNG) and the loop resumes from `ray.train.get_checkpoint()`.

Loop config: ``{"config": <config dict>, "genotype": <genotype dict>, "run_dir": <folder for TensorBoard>}``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer
from torch import nn

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.data import load_dataset, make_loader
from orchestrator.io import checkpointing as ckpt
from orchestrator.io.atomic import write_json
from orchestrator.train.metrics import iou_from_confusion, nan_to_none, pixel_accuracy
from orchestrator.train.search_loop import EPOCHS_DIR, _all_reduce, evaluate, report, say, setup_process
from orchestrator.train.steps import StepOptions, autocast, inputs
from orchestrator.train.trainers import run_dir, torch_trainer
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
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, frozenset()
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        if rank == 0:
            warnings.warn(message, stacklevel=2)
            say(f"WARNING: {message}", "retrain")

    state, used = ckpt.read_newest_valid(checkpoint, warn)
    if state.get("genotype") != genotype.to_dict():
        raise ckpt.CheckpointError(f"checkpoint {used.path} retrains another genotype")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ckpt.set_rng_state(state["rng"])
    taken = frozenset()
    if skipped:
        taken = frozenset({os.path.basename(c.path) for c in ckpt.sibling_checkpoints(used)}
                          | {os.path.basename(used.path)})
    return int(state["epoch"]), taken


def retrain_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Retrain ``loop_config["genotype"]`` on this Ray Train worker. With ``loop_config["standalone"]`` it runs in
    the calling process instead, as the only worker, without any `ray.train` API (which refuses to run inside a
    Tune trial): no DDP, no checkpoint, reports only to `report_listener` functions (a Tune trial's)."""
    cfg = config_from_dict(loop_config["config"], "retrain loop config")
    genotype = Genotype.from_dict(loop_config["genotype"], "retrain genotype")
    standalone = bool(loop_config.get("standalone"))
    if standalone:
        rank, world = 0, 1
    else:
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    setup_process(cfg, rank)
    train_loader, val_loader, train_ds = _loaders(cfg, rank, world, standalone)
    net = build_retrain_model(cfg, genotype, train_ds.num_classes)
    r = cfg.retrain
    optimizer = torch.optim.SGD(net.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    if standalone:
        start_epoch, taken = 0, frozenset()
        device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
        model = net.to(device)
    else:
        start_epoch, taken = _resume(net, optimizer, genotype, rank)
        model = ray.train.torch.prepare_model(net)
        device = ray.train.torch.get_device()
    criterion = nn.CrossEntropyLoss(ignore_index=train_ds.ignore_index)
    opts = StepOptions.from_config(cfg)
    total = r.epochs * len(train_loader)
    writer = _writer(loop_config, rank)
    for epoch in range(start_epoch, r.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        t0, loss_sum, images = time.time(), torch.zeros(1, dtype=torch.float64), 0
        for i, (x, y) in enumerate(train_loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # standalone: not moved yet
            lr = poly_lr(epoch * len(train_loader) + i, total, r.lr, r.poly_power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with autocast(opts, device):
                logits = model(inputs(x, opts))
            loss = criterion(logits.float(), y)
            loss.backward()
            optimizer.step()
            loss_sum, images = loss_sum + loss.detach().double().cpu(), images + x.shape[0]
        seconds = time.time() - t0
        train_loss = float(_all_reduce(loss_sum)[0]) / world / max(len(train_loader), 1)
        if not math.isfinite(train_loss):
            _stop_diverged(loop_config, epoch + 1, train_loss, lr, seconds, rank, standalone)
            break
        ev = evaluate(net, val_loader, train_ds.num_classes, train_ds.ignore_index, cfg, device)
        per_class, miou = iou_from_confusion(ev["cm"])
        metrics = {"epoch": epoch + 1, "val_miou": miou, "val_loss": ev["loss"], "pixel_accuracy":
                   pixel_accuracy(ev["cm"]), "per_class_iou": nan_to_none(per_class),
                   "classes": list(train_ds.classes), "train_loss": train_loss, "lr": lr, "epoch_seconds": seconds,
                   "images_per_second": images * world / max(seconds, 1e-9), "diverged": False, "stop_reason": None}
        _log(writer, metrics, list(train_ds.classes))
        _record(loop_config, metrics, rank)
        if rank == 0:
            say(f"epoch {epoch + 1}/{r.epochs} train_loss={train_loss:.4f} val_loss={ev['loss']:.4f} "
                f"val_miou={miou:.4f} {seconds:.1f}s", "retrain")
        state = None
        if rank == 0 and not standalone:
            state = {"format_version": ckpt.FORMAT_VERSION, "model": net.state_dict(),
                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": (epoch + 1) * len(train_loader),
                     "genotype": genotype.to_dict(), "rng": ckpt.rng_state(), "config": config_to_dict(cfg)}
        report(metrics, state, epoch + 1, taken, to_ray=not standalone)
    if writer is not None:
        writer.close()


def _record(loop_config: dict[str, Any], metrics: dict[str, Any], rank: int) -> None:
    """Rank 0's own record of an epoch, ``<run_dir>/epochs/epoch-<k>.json``, as the search writes (Ray keeps
    the metrics of checkpointed reports only, so a diverged epoch is known from here)."""
    if rank == 0 and loop_config.get("run_dir"):
        write_json(os.path.join(loop_config["run_dir"], EPOCHS_DIR, f"epoch-{metrics['epoch']:04d}.json"), metrics)


def _stop_diverged(loop_config: dict[str, Any], epoch: int, train_loss: float, lr: float, seconds: float,
                   rank: int, standalone: bool = False) -> None:
    """Report a retrain whose loss turned NaN or infinite, without a checkpoint (the last healthy one stays the
    latest), and end it: raising would make Ray retry a deterministic failure ``runtime.max_failures`` times."""
    reason = (f"retrain diverged in epoch {epoch}: train_loss={train_loss:g}. Lower retrain.lr; the last "
              "checkpoint is from before this epoch")
    if rank == 0:
        say(f"STOPPED: {reason}", "retrain")
    nan = float("nan")
    metrics = {"epoch": epoch, "val_miou": nan, "val_loss": nan, "train_loss": train_loss, "lr": lr,
               "epoch_seconds": seconds, "diverged": True, "stop_reason": reason}
    _record(loop_config, metrics, rank)
    report(metrics, None, epoch, to_ray=not standalone)


def _writer(loop_config: dict[str, Any], rank: int):
    if rank != 0 or not loop_config.get("run_dir"):
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(loop_config["run_dir"], "tensorboard"))


def _log(writer, metrics: dict[str, Any], classes: list[str]) -> None:
    if writer is None:
        return
    step = metrics["epoch"]
    for key in ("val_miou", "val_loss", "pixel_accuracy", "train_loss", "lr", "images_per_second"):
        writer.add_scalar(f"retrain/{key}", metrics[key], step)
    for name, iou in zip(classes, metrics["per_class_iou"], strict=True):
        if iou is not None:
            writer.add_scalar(f"retrain_iou/{name}", iou, step)
    writer.flush()


def make_retrain_trainer(cfg: ExperimentConfig, genotype: Genotype, storage_path: str, name: str,
                         callbacks: list | None = None) -> TorchTrainer:
    """A TorchTrainer that retrains ``genotype`` with ``cfg.retrain`` into ``<storage_path>/<name>``."""
    directory = run_dir(storage_path, name)
    loop_config = {"config": config_to_dict(cfg), "genotype": genotype.to_dict(),
                   "run_dir": directory if "://" not in directory else None}
    return torch_trainer(retrain_fn_per_worker, loop_config, cfg, directory, cfg.retrain.num_workers, callbacks)


def run_retrain(cfg: ExperimentConfig, genotype: Genotype, storage_path: str, name: str = "retrain"):
    """Fit the retrain TorchTrainer; returns its `ray.train.Result`."""
    return make_retrain_trainer(cfg, genotype, storage_path, name).fit()
