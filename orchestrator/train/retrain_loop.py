"""Retraining a decoded architecture (paper Sec. 4.2): the `DiscreteNet` of a genotype, trained from scratch
with SGD and a poly learning rate from ``retrain.lr`` (0.05), on Ray Train with DDP.

`retrain_fn_per_worker` knows nothing about Tune; `orchestrator.train.trainers.make_retrain_trainer` builds its
TorchTrainer. It uses the search's worker toolkit (`orchestrator.train.worker`) and metric names. Each epoch
reports on every rank; rank 0 attaches a checkpoint (model, optimizer, epoch, RNG) and the loop resumes from the
newest verified checkpoint.

Data roles (`orchestrator.data.roles`): it trains on the train role, reports ``val_*`` (mIoU, per-class IoU,
loss) on the selection split every ``retrain.eval_every`` epochs and at the last (NaN, ``evaluated: false``, in
between), and, only when the loop config says ``report`` (a full retrain, never a short one that selection
ranks), ``test_*`` on the report split once, after the last epoch. Every randomness follows ``runtime.seed``:
initialisation, augmentation, and the data order (the `DistributedSampler` is seeded with it).

Loop config: ``{"config": <config dict>, "genotype": <genotype dict>, "run_dir": <folder for TensorBoard>,
"standalone": <bool>, "report": <bool>}``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import ray.train.torch
import torch
from torch import nn

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.data import make_loader, role_dataset, seed_sampler, set_pass
from orchestrator.io import checkpointing as ckpt
from orchestrator.train.metrics import iou_from_confusion, nan_to_none, pixel_accuracy
from orchestrator.train.resume import check_retrain_state
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


@dataclass
class RetrainData:
    """The retrain's loaders: training, this worker's shard of the selection split (``val_*``) and, for a full
    retrain that reports, of the report split (``test_*``, else None)."""

    train: Any
    val: Any
    test: Any
    train_ds: Any


def _shard(ds: Any, cfg: ExperimentConfig, rank: int, world: int, standalone: bool) -> Any:
    """This worker's strided shard of an evaluation split (no padding, so no image counts twice)."""
    shard = torch.utils.data.Subset(ds, list(range(rank, len(ds), world)))
    loader = torch.utils.data.DataLoader(shard, batch_size=cfg.data.val_batch_size,
                                         num_workers=cfg.data.loader_workers)
    return loader if standalone else ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)


def _loaders(cfg: ExperimentConfig, rank: int, world: int, standalone: bool = False,
             report: bool = False) -> RetrainData:
    d, r = cfg.data, cfg.retrain
    train = role_dataset(d, "train", train=True, crop_size=r.crop_size, extra=r.data_options)
    val = role_dataset(d, "select", train=False, crop_size=r.crop_size, extra=r.val_options)
    test = role_dataset(d, "report", train=False, crop_size=r.crop_size) if report and d.report_split else None
    if len(train) < r.batch_size * world:
        raise ValueError(f"data: the training split has {len(train)} images, fewer than retrain.batch_size "
                         f"({r.batch_size}) x retrain.num_workers ({world})")
    loader = make_loader(train, r.batch_size, shuffle=True, num_workers=d.loader_workers, seed=cfg.runtime.seed,
                         drop_last=True, pin_memory=cfg.scaling.use_gpu)
    if not standalone:  # a DistributedSampler seeded by runtime.seed: the data order follows the run's seed
        loader = seed_sampler(ray.train.torch.prepare_data_loader(loader), cfg.runtime.seed)
    return RetrainData(loader, _shard(val, cfg, rank, world, standalone),
                       None if test is None else _shard(test, cfg, rank, world, standalone), train)


def _resume(net: nn.Module, optimizer: torch.optim.Optimizer, genotype: Genotype, rank: int) -> tuple[int, frozenset]:
    """Load the newest checkpoint that verifies (a corrupt latest one is skipped with a warning, as in the
    search); returns the epoch to start from and the checkpoint names not to report into after a fallback."""
    resume = newest_checkpoint(rank, "retrain")
    if resume.state is None:
        return 0, frozenset()
    state = resume.state
    check_retrain_state(state, genotype.to_dict(), source=f"checkpoint {resume.path}")
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
    set_pass(loader.dataset, epoch)  # a fresh synthetic split draws this epoch's own images
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


def evaluation_metrics(prefix: str, ev: dict[str, Any] | None) -> dict[str, Any]:
    """``<prefix>_miou``, ``_loss``, ``_pixel_acc`` and ``_per_class_iou`` of an evaluation (NaN and None when
    ``ev`` is None: an epoch that was not evaluated)."""
    if ev is None:
        nan = float("nan")
        return {f"{prefix}_miou": nan, f"{prefix}_loss": nan, f"{prefix}_pixel_acc": nan}
    per_class, miou = iou_from_confusion(ev["cm"])
    return {f"{prefix}_miou": miou, f"{prefix}_loss": ev["loss"], f"{prefix}_pixel_acc": pixel_accuracy(ev["cm"]),
            f"{prefix}_per_class_iou": nan_to_none(per_class)}


def epoch_evaluation(net: nn.Module, data: RetrainData, epoch: int, cfg: ExperimentConfig, opts: StepOptions,
                     where: Place) -> dict[str, Any]:
    """The selection split every ``retrain.eval_every`` epochs and at the last; the report split after the last
    epoch only (when the loop has one). ``epoch`` is 1-based. Collective: every rank calls it."""
    last = epoch == cfg.retrain.epochs
    n, ignore = data.train_ds.num_classes, data.train_ds.ignore_index
    val = evaluate(net, data.val, n, ignore, opts, where.device) if last or epoch % cfg.retrain.eval_every == 0 \
        else None
    metrics = {**evaluation_metrics("val", val), "evaluated": val is not None}
    metrics["per_class_iou"] = metrics.pop("val_per_class_iou", None)  # the name the records have always used
    if last and data.test is not None:
        metrics.update(evaluation_metrics("test", evaluate(net, data.test, n, ignore, opts, where.device)))
    return metrics


def retrain_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Retrain ``loop_config["genotype"]`` on this Ray Train worker. With ``loop_config["standalone"]`` it runs in
    the calling process instead, as the only worker, without any `ray.train` API (which refuses to run inside a
    Tune trial): no DDP, no checkpoint, reports only to `report_listener` functions (a Tune trial's). With
    ``loop_config["report"]`` (a full retrain) it evaluates the report split once, after the last epoch."""
    cfg = config_from_dict(loop_config["config"], "retrain loop config")
    genotype = Genotype.from_dict(loop_config["genotype"], "retrain genotype")
    where = place(bool(loop_config.get("standalone")), cfg.scaling.use_gpu)
    setup_process(cfg, where.rank)
    data = _loaders(cfg, where.rank, where.world, where.standalone, bool(loop_config.get("report")))
    net = build_retrain_model(cfg, genotype, data.train_ds.num_classes)
    r = cfg.retrain
    optimizer = torch.optim.SGD(net.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    if where.standalone:
        start_epoch, taken, model = 0, frozenset(), net.to(where.device)
    else:
        start_epoch, taken = _resume(net, optimizer, genotype, where.rank)
        model = ray.train.torch.prepare_model(net)
    criterion = nn.CrossEntropyLoss(ignore_index=data.train_ds.ignore_index)
    opts = StepOptions(bf16=cfg.runtime.bf16, channels_last=cfg.runtime.channels_last)  # no clip: the paper's SGD
    run_dir = loop_config.get("run_dir") if where.rank == 0 else None
    writer = open_writer(where.rank, run_dir)
    for epoch in range(start_epoch, r.epochs):
        t0 = time.perf_counter()
        train_loss, lr, images = train_epoch(model, net, data.train, optimizer, criterion, opts, where, epoch, cfg,
                                             run_tag(loop_config.get("run_dir"), "retrain"))
        seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            _stop_diverged(run_dir, epoch + 1, train_loss, lr, seconds, where)
            break
        sync_buffers(net)
        metrics = {"epoch": epoch + 1, **epoch_evaluation(net, data, epoch + 1, cfg, opts, where),
                   "classes": list(data.train_ds.classes), "train_loss": train_loss, "lr": lr,
                   "epoch_seconds": seconds, "images_per_second": images * where.world / max(seconds, 1e-9),
                   "diverged": False, "stop_reason": None}
        _log(writer, metrics, list(data.train_ds.classes))
        if where.rank == 0:
            record_epoch(run_dir, metrics)
            say(_epoch_line(metrics, r.epochs), "retrain")
        state = None
        if where.rank == 0 and not where.standalone:
            state = {"format_version": ckpt.FORMAT_VERSION, "model": net.state_dict(),
                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": (epoch + 1) * len(data.train),
                     "genotype": genotype.to_dict(), "rng": ckpt.rng_state(), "config": config_to_dict(cfg)}
        report(metrics, state, epoch + 1, taken, to_ray=not where.standalone)
    if writer is not None:
        writer.close()


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    line = f"epoch {m['epoch']}/{epochs} train_loss={m['train_loss']:.4f}"
    if m["evaluated"]:
        line += f" val_loss={m['val_loss']:.4f} val_miou={m['val_miou']:.4f}"
    if "test_miou" in m:
        line += f" test_miou={m['test_miou']:.4f}"
    return line + f" {m['epoch_seconds']:.1f}s"


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
    for key in ("val_miou", "val_loss", "val_pixel_acc", "test_miou", "test_loss", "train_loss", "lr",
                "images_per_second"):
        if key in metrics and math.isfinite(metrics[key]):
            writer.add_scalar(f"retrain/{key}", metrics[key], step)
    for name, iou in zip(classes, metrics.get("per_class_iou") or [None] * len(classes), strict=True):
        if iou is not None:
            writer.add_scalar(f"retrain_iou/{name}", iou, step)
    writer.flush()
