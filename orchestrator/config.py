"""The experiment config: typed dataclasses, loaded from YAML, validated before anything runs.

Every default carries a comment saying why; where the paper (Liu et al., CVPR 2019, ../shared/PAPER.md) gives a
value, the default is the paper's. A YAML file only needs the keys it changes. Unknown keys are refused with
the file, the dotted key and the closest valid key named; wrong types and out-of-range values are refused with
a `ConfigError` naming file, key, value and what was expected.

    cfg = load_config("experiments/configs/smoke.yaml", overrides=["search.arch_lr=1e-3"])
    config_to_dict(cfg)        # plain dict: what Ray serializes into the workers, and what is saved
    save_config(cfg, path)     # atomic YAML write, the resolved config beside every run
    config_hash(cfg)           # short stable hash for derived run names (never timestamps)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any

import yaml

from orchestrator.io.atomic import write_text
from search_space.operations import OP_FAMILIES
from search_space.supernet import HEADS


class ConfigError(ValueError):
    """A config file, override or dict that cannot be used; the message names source, key and expectation."""


@dataclass
class SearchSpaceConfig:
    layers: int = 12  # L: the paper's search network has 12 cell layers
    blocks: int = 5  # B: blocks per cell in the paper
    filter_multiplier: int = 8  # F: the paper searches with F=8 (retraining uses 20/32/48)
    ops: str = "paper"  # op family: "paper" follows the authors' TF code; "darts" matches the public port
    stem_channels: list[int] = field(default_factory=lambda: [64, 64, 128])  # the paper's three stem convs
    # "aspp": the paper's search head (an ASPP per rate, summed). "decoder": those ASPPs feed a DeepLabv3+
    # decoder with the stem's rate-4 features, as the retrain network does (search_space/supernet.py).
    head: str = "aspp"


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # runs anywhere without downloads; "cityscapes" is the paper's search data
    root: str | None = None  # dataset folder; None for "synthetic", which is generated in memory
    crop_size: int = 321  # the paper's random crops at search time (Cityscapes at half resolution)
    batch_size: int = 2  # per worker; the paper searches with batch 2 on one GPU
    val_batch_size: int = 2  # per worker; evaluation holds no gradients, but full images can be large
    loader_workers: int = 0  # DataLoader processes per Ray worker; 0 keeps the worker's CPU budget honest
    split_seed: int = 0  # seeds the random trainA/trainB halving; fixed so resumed runs see the same halves
    options: dict = field(default_factory=dict)  # passed to load_dataset for the train split (synthetic: size...)
    val_options: dict = field(default_factory=dict)  # passed to load_dataset for the validation split


@dataclass
class SearchConfig:
    epochs: int = 40  # the paper searches for 40 epochs
    warmup_epochs: int = 20  # alpha/beta stay frozen for the first 20 epochs (paper: avoids bad local optima)
    lr: float = 0.025  # weight SGD: cosine from 0.025 (paper)
    lr_min: float = 0.001  # ... down to 0.001 (paper)
    momentum: float = 0.9  # weight SGD momentum (paper)
    weight_decay: float = 3e-4  # weight SGD weight decay (paper)
    arch_lr: float = 3e-3  # alpha/beta Adam learning rate (paper)
    arch_weight_decay: float = 1e-3  # alpha/beta Adam weight decay (paper)
    # The paper says only "Adam"; (0.9, 0.999) is Adam's default and what the public port uses. DARTS uses
    # (0.5, 0.999) for its architect; set it here to compare.
    arch_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 5.0  # weight-gradient norm clip from DARTS and the port; None disables it
    class_weights: bool = False  # the paper trains with plain cross-entropy; True weights by 1/ln(1.02 + freq)
    max_steps_per_epoch: int | None = None  # None: one pass over trainA per epoch; a cap for huge datasets


@dataclass
class ScalingConfig:
    num_workers: int = 2  # DDP workers; 2 is the smallest setting that exercises the distributed path
    use_gpu: bool = False  # CPU by default so the project runs on a laptop; a cluster config sets True
    cpus_per_worker: float = 1.0  # also the worker's torch thread count (at least 1)
    gpus_per_worker: float = 1.0  # used only when use_gpu; one GPU per DDP worker is the usual layout
    backend: str = "auto"  # "auto": gloo on CPU, nccl on GPU; or force "gloo" / "nccl"


@dataclass
class RuntimeConfig:
    seed: int = 0  # worker r seeds torch/numpy/random with seed + r; weights start from rank 0's init
    deterministic: bool = True  # deterministic algorithms so a resumed search equals an uninterrupted one
    bf16: bool = False  # bf16 autocast; GPU only, off by default so CPU runs are exact
    channels_last: bool = False  # NHWC memory format; GPU only (it slows many CPU convs)
    # Levels (0 = stride 4 .. 3 = stride 32) whose supernet cells are recomputed in backward instead of stored:
    # [0] saves about half the activation memory for ~15% more step time, [0, 1, 2, 3] ~75% for ~40%.
    checkpoint_levels: list[int] = field(default_factory=list)
    # Separable units of the supernet store only their input and recompute the rest in backward: on CPU at
    # L=12, F=8, crop 129, batch 2, 0.75 GB less memory (1.96 -> 1.21 GB) for steps 5-10% slower.
    recompute_units: bool = True
    checkpoint_every: int = 1  # epochs between checkpoints; 1 loses at most one epoch on a failure
    keep_checkpoints: int = 2  # newest checkpoints kept; 2 survives one corrupt write
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before the run fails (-1: forever)
    log_images: bool = True  # alpha/beta heatmaps and validation overlays in TensorBoard (rank 0, cheap)


@dataclass
class TuneConfig:
    # Dotted config key -> one of {"grid": [...]}, {"choice": [...]}, {"uniform": [lo, hi]},
    # {"loguniform": [lo, hi]}. Empty: a sweep of num_samples copies of this config.
    param_space: dict = field(default_factory=dict)
    num_samples: int = 1  # samples of param_space (grid keys are crossed with each sample, as in Tune)
    metric: str = "val_miou"  # what the paper selects on
    mode: str = "max"  # mIoU is better when larger
    scheduler: str = "asha"  # ASHA stops weak trials early; "fifo" runs every trial to the end
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2  # ASHA keeps 1/2 of trials at each rung
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources fit
    trial_cpus: float = 0.1  # the trial driver's own CPU; cannot be 0 in Tune, and it only waits


@dataclass
class RetrainConfig:
    epochs: int = 100  # not in PAPER.md (the paper counts iterations); a DeepLab-style budget
    lr: float = 0.05  # poly learning rate from 0.05 (paper's retraining recipe)
    poly_power: float = 0.9  # the DeepLab poly exponent
    momentum: float = 0.9  # DeepLab SGD momentum
    weight_decay: float = 4e-5  # DeepLab weight decay for training from scratch
    crop_size: int = 769  # the paper's Cityscapes retraining crop (513 for VOC and ADE20K)
    batch_size: int = 8  # per worker; not in PAPER.md, a common DeepLab setting
    filter_multiplier: int = 20  # Auto-DeepLab-S
    num_workers: int = 2  # DDP workers, as for the search
    # Merged over data.options / data.val_options for retraining: the search may use half-resolution images
    # (the paper's search) while the retrain uses the full scale range.
    data_options: dict = field(default_factory=dict)
    val_options: dict = field(default_factory=dict)


@dataclass
class SelectionConfig:
    # How the final step picks the architecture from the best trial's alpha and beta. "viterbi": the paper's
    # decoding, the most probable path under beta. "supernet": the decoded cell on each of the path_candidates
    # most probable paths, scored by the trained supernet with alpha and beta fixed to it (orchestrator/
    # supernet_score.py) on the validation set; candidates rank by that score.
    path: str = "viterbi"
    path_candidates: int = 64  # paths scored by path=supernet (all legal paths when fewer)
    recalibration_batches: int = 8  # trainA batches that re-estimate batch-norm statistics per scored candidate
    # The top_k candidates (by supernet score, or by beta for path=viterbi) are short-retrained as Tune trials
    # with ASHA on the retrain mIoU; the winner gets the full retrain. 1: no short retrains, the top one wins.
    top_k: int = 1
    # Fill the top_k with the best candidate of each deepest rate first, then by rank: a single path is scored
    # by its last level's head alone, trained as one term of a sum over levels, so scores compare poorly across
    # depths; the short retrains compare them instead.
    one_per_depth: bool = False
    # Where the candidates after the first come from. "decoded": the decoded cell on the next-best paths (by beta,
    # or by the supernet's score with path=supernet). "sampled": distinct genotypes drawn from the search's alpha
    # and beta (search_space.sample_tilted_genotypes): uniform over the space where they are flat, concentrated
    # where the search learned a preference. The first candidate is always the one `path` selects.
    candidates: str = "decoded"
    temperature: float = 1.0  # of the sampled candidates: below 1 sharpens what alpha/beta prefer, above flattens
    short_epochs: int = 5  # epochs of a short retrain (ASHA's max_t), with the retrain section's other settings
    # true: each short retrain runs standalone in its Tune trial's own process (one worker with the global batch of
    # retrain.num_workers workers, no checkpoints): no Train worker group to start per candidate, which on a small
    # machine costs more than a short retrain itself. false: a TorchTrainer of retrain.num_workers workers.
    in_process: bool = True
    grace_period: int = 2  # ASHA: epochs before a short retrain may be stopped
    reduction_factor: int = 2  # ASHA keeps 1/2 of the short retrains at each rung


@dataclass
class ValidationConfig:
    # After the final retrain, retrain this many genotypes drawn uniformly from the space and place the searched
    # one among them (experiments/validate.py does the same on demand). 0: the chain does not validate.
    random: int = 0
    seeds: int = 2  # retrain seeds of the searched genotype: its seed-to-seed sd is the yardstick's noise
    random_seeds: int = 1  # retrain seeds per random genotype
    sample_seed: int = 0  # seeds the random draw, so the same space always gets the same baseline


@dataclass
class ExperimentConfig:
    name: str | None = None  # None: derived from the config file's stem and config_hash (see derive_name)
    storage_path: str = "./results"  # run folders live here; multi-node runs need shared storage (S3, NFS)
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


SEARCH_SPACE_KEYS = ("layers", "blocks", "filter_multiplier", "ops", "stem_channels", "head")
"""The keys that define the supernet's shape: a checkpoint only resumes into the same values."""

SEARCH_SPACE_KEY_DEFAULTS = {"head": "aspp"}
"""What a checkpoint made before a search-space key existed had, for that key."""

PATH_SELECTIONS = ("viterbi", "supernet")
CANDIDATE_SOURCES = ("decoded", "sampled")

STRIDE = 32
"""The network's largest downsample rate: crops smaller than this have no rate-32 level."""

TUNE_DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")


# ---------------------------------------------------------------------------------------------- parsing


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(ExperimentConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ExperimentConfig)
            if dataclasses.is_dataclass(hints[f.name])}


def valid_keys() -> list[str]:
    """Every dotted key a config accepts, e.g. ``search.arch_lr``."""
    keys = []
    for f in dataclasses.fields(ExperimentConfig):
        cls = _sections().get(f.name)
        keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(cls)] if cls else [f.name]
    return keys


def _unknown_key(source: str, dotted: str, candidates: list[str]) -> ConfigError:
    leaf = dotted.rsplit(".", 1)[-1]
    by_leaf: dict[str, str] = {}
    for key in valid_keys():  # the first section wins: data.crop_size before retrain.crop_size
        by_leaf.setdefault(key.rsplit(".", 1)[-1], key)
    # A right key in the wrong section first, then a typo in this section, then a typo in another section.
    close = [by_leaf[leaf]] if leaf in by_leaf and by_leaf[leaf] != dotted else []
    close = close or difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
    if not close:
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)]
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(candidates)}"
    return ConfigError(f"{source}: unknown key '{dotted}'{hint}")


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check ``value`` against a field's type hint; returns it converted (int -> float, tuple -> list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key)
    bad = ConfigError(f"{source}: {key} = {value!r}: expected {_describe(hint)}")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any string float() takes.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        return [v if item is Any else _coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a mapping with string keys")
        return dict(value)
    raise TypeError(f"config field {key} has an unsupported type {hint}")  # a bug in this module


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise _unknown_key(source, dotted, [f"{prefix}.{n}" if prefix else n for n in names])
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], source, dotted)
        else:
            kwargs[name] = _coerce(data[name], hint, source, dotted)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------- validation


def _check(ok: bool, source: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} = {value!r}: expected {expected}")


def _validate_search_space(s: SearchSpaceConfig, src: str) -> None:
    for key in ("layers", "blocks", "filter_multiplier"):
        _check(getattr(s, key) >= 1, src, f"search_space.{key}", getattr(s, key), "an integer >= 1")
    _check(s.ops in OP_FAMILIES, src, "search_space.ops", s.ops, f"one of {', '.join(OP_FAMILIES)}")
    _check(len(s.stem_channels) == 3 and all(c >= 1 for c in s.stem_channels), src,
           "search_space.stem_channels", s.stem_channels, "three integers >= 1")
    _check(s.head in HEADS, src, "search_space.head", s.head, f"one of {', '.join(HEADS)}")


def _validate_data(d: DataConfig, src: str) -> None:
    _check(bool(d.dataset), src, "data.dataset", d.dataset, "a dataset name")
    _check(d.crop_size >= STRIDE, src, "data.crop_size", d.crop_size,
           f"at least {STRIDE} (the network's largest downsample rate)")
    _check(d.batch_size >= 1, src, "data.batch_size", d.batch_size, "an integer >= 1")
    _check(d.val_batch_size >= 1, src, "data.val_batch_size", d.val_batch_size, "an integer >= 1")
    _check(d.loader_workers >= 0, src, "data.loader_workers", d.loader_workers, "an integer >= 0")


def _validate_search(s: SearchConfig, src: str) -> None:
    _check(s.epochs >= 1, src, "search.epochs", s.epochs, "an integer >= 1")
    _check(0 <= s.warmup_epochs < s.epochs, src, "search.warmup_epochs", s.warmup_epochs,
           f"0 <= warmup_epochs < search.epochs ({s.epochs}), or alpha/beta would never be updated")
    _check(s.lr > 0, src, "search.lr", s.lr, "a learning rate > 0")
    _check(0 <= s.lr_min <= s.lr, src, "search.lr_min", s.lr_min, f"0 <= lr_min <= search.lr ({s.lr})")
    _check(0 <= s.momentum < 1, src, "search.momentum", s.momentum, "0 <= momentum < 1")
    _check(s.weight_decay >= 0, src, "search.weight_decay", s.weight_decay, "a value >= 0")
    _check(s.arch_lr > 0, src, "search.arch_lr", s.arch_lr, "a learning rate > 0")
    _check(s.arch_weight_decay >= 0, src, "search.arch_weight_decay", s.arch_weight_decay, "a value >= 0")
    _check(len(s.arch_betas) == 2 and all(0 <= b < 1 for b in s.arch_betas), src, "search.arch_betas",
           s.arch_betas, "two Adam betas in [0, 1)")
    _check(s.grad_clip is None or s.grad_clip > 0, src, "search.grad_clip", s.grad_clip, "a norm > 0, or null")
    _check(s.max_steps_per_epoch is None or s.max_steps_per_epoch >= 1, src, "search.max_steps_per_epoch",
           s.max_steps_per_epoch, "an integer >= 1, or null")


def _validate_scaling(s: ScalingConfig, runtime: RuntimeConfig, src: str) -> None:
    _check(s.num_workers >= 1, src, "scaling.num_workers", s.num_workers, "an integer >= 1")
    _check(s.cpus_per_worker > 0, src, "scaling.cpus_per_worker", s.cpus_per_worker, "a value > 0")
    _check(s.gpus_per_worker > 0, src, "scaling.gpus_per_worker", s.gpus_per_worker, "a value > 0")
    _check(s.backend in ("auto", "gloo", "nccl"), src, "scaling.backend", s.backend, "auto, gloo or nccl")
    _check(s.use_gpu or s.backend != "nccl", src, "scaling.backend", s.backend,
           "gloo or auto when scaling.use_gpu is false (NCCL needs GPUs)")
    for key in ("bf16", "channels_last"):
        _check(s.use_gpu or not getattr(runtime, key), src, f"runtime.{key}", getattr(runtime, key),
               "false when scaling.use_gpu is false (a GPU-only option)")


def _validate_runtime(r: RuntimeConfig, src: str) -> None:
    _check(r.seed >= 0, src, "runtime.seed", r.seed, "an integer >= 0")
    _check(r.checkpoint_every >= 1, src, "runtime.checkpoint_every", r.checkpoint_every, "an integer >= 1")
    _check(r.keep_checkpoints >= 1, src, "runtime.keep_checkpoints", r.keep_checkpoints, "an integer >= 1")
    _check(r.max_failures >= -1, src, "runtime.max_failures", r.max_failures, "an integer >= 0, or -1 (forever)")
    levels = r.checkpoint_levels
    _check(all(0 <= v <= 3 for v in levels) and len(set(levels)) == len(levels), src, "runtime.checkpoint_levels",
           levels, "distinct levels from 0 (stride 4) to 3 (stride 32)")


def _validate_distribution(key: str, spec: Any, src: str) -> None:
    where = f"tune.param_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in TUNE_DISTRIBUTIONS:
        raise ConfigError(f"{src}: {where} = {spec!r}: expected one of "
                          + ", ".join(f"{{{d}: ...}}" for d in TUNE_DISTRIBUTIONS))
    kind, values = next(iter(spec.items()))
    _check(isinstance(values, list) and len(values) >= 1, src, f"{where}.{kind}", values, "a non-empty list")
    if kind in ("uniform", "loguniform"):
        nums = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        _check(nums and values[0] < values[1], src, f"{where}.{kind}", values, "[low, high] with low < high")
        _check(kind == "uniform" or values[0] > 0, src, f"{where}.{kind}", values, "low > 0 for loguniform")


def _validate_tune(t: TuneConfig, src: str) -> None:
    keys = valid_keys()
    for key, spec in t.param_space.items():
        if key not in keys:
            raise _unknown_key(src, key, keys)
        _check(not key.startswith(("tune.", "name", "storage_path")), src, "tune.param_space", key,
               "keys outside tune, name and storage_path (they define the sweep itself)")
        _validate_distribution(key, spec, src)
    _check(t.num_samples >= 1, src, "tune.num_samples", t.num_samples, "an integer >= 1")
    _check(bool(t.metric), src, "tune.metric", t.metric, "a reported metric name")
    _check(t.mode in ("max", "min"), src, "tune.mode", t.mode, "max or min")
    _check(t.scheduler in ("asha", "fifo"), src, "tune.scheduler", t.scheduler, "asha or fifo")
    _check(t.grace_period >= 1, src, "tune.grace_period", t.grace_period, "an integer >= 1")
    _check(t.reduction_factor >= 2, src, "tune.reduction_factor", t.reduction_factor, "an integer >= 2")
    _check(t.max_concurrent_trials >= 0, src, "tune.max_concurrent_trials", t.max_concurrent_trials,
           "an integer >= 0 (0: as many as fit)")
    _check(t.trial_cpus > 0, src, "tune.trial_cpus", t.trial_cpus, "a value > 0 (Tune refuses 0)")


def _validate_retrain(r: RetrainConfig, src: str) -> None:
    for key in ("epochs", "batch_size", "filter_multiplier", "num_workers"):
        _check(getattr(r, key) >= 1, src, f"retrain.{key}", getattr(r, key), "an integer >= 1")
    _check(r.lr > 0, src, "retrain.lr", r.lr, "a learning rate > 0")
    _check(r.poly_power > 0, src, "retrain.poly_power", r.poly_power, "a value > 0")
    _check(0 <= r.momentum < 1, src, "retrain.momentum", r.momentum, "0 <= momentum < 1")
    _check(r.weight_decay >= 0, src, "retrain.weight_decay", r.weight_decay, "a value >= 0")
    _check(r.crop_size >= STRIDE, src, "retrain.crop_size", r.crop_size,
           f"at least {STRIDE} (the network's largest downsample rate)")


def _validate_selection(s: SelectionConfig, src: str) -> None:
    _check(s.path in PATH_SELECTIONS, src, "selection.path", s.path, f"one of {', '.join(PATH_SELECTIONS)}")
    for key in ("path_candidates", "top_k", "short_epochs", "grace_period"):
        _check(getattr(s, key) >= 1, src, f"selection.{key}", getattr(s, key), "an integer >= 1")
    _check(s.recalibration_batches >= 0, src, "selection.recalibration_batches", s.recalibration_batches,
           "an integer >= 0")
    _check(s.reduction_factor >= 2, src, "selection.reduction_factor", s.reduction_factor, "an integer >= 2")
    _check(s.candidates in CANDIDATE_SOURCES, src, "selection.candidates", s.candidates,
           f"one of {', '.join(CANDIDATE_SOURCES)}")
    _check(s.temperature > 0, src, "selection.temperature", s.temperature, "a value > 0")


def _validate_validation(v: ValidationConfig, src: str) -> None:
    _check(v.random >= 0, src, "validation.random", v.random, "an integer >= 0 (0: no validation)")
    for key in ("seeds", "random_seeds"):
        _check(getattr(v, key) >= 1, src, f"validation.{key}", getattr(v, key), "an integer >= 1")


def validate(cfg: ExperimentConfig, source: str = "config") -> ExperimentConfig:
    """Range and consistency checks across all sections; returns ``cfg`` or raises ConfigError."""
    _check(cfg.name is None or (bool(cfg.name) and "/" not in cfg.name), source, "name", cfg.name,
           "null or a folder name without '/'")
    _check(bool(cfg.storage_path), source, "storage_path", cfg.storage_path, "a folder or URI")
    _validate_search_space(cfg.search_space, source)
    _validate_data(cfg.data, source)
    _validate_search(cfg.search, source)
    _validate_runtime(cfg.runtime, source)
    _validate_scaling(cfg.scaling, cfg.runtime, source)
    _validate_tune(cfg.tune, source)
    _validate_retrain(cfg.retrain, source)
    _validate_selection(cfg.selection, source)
    _validate_validation(cfg.validation, source)
    return cfg


# ---------------------------------------------------------------------------------------------- public API


def config_from_dict(data: dict | None, source: str = "config") -> ExperimentConfig:
    """Build and validate a config from a plain (e.g. YAML-loaded) dict; ``source`` names it in errors."""
    return validate(_build(ExperimentConfig, data, source, ""), source)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """The config as plain dicts, lists and scalars (YAML/JSON-safe, what Ray passes to workers)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str, source: str = "override") -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into the key path and the YAML-parsed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{source}: {text!r}: expected key=value, e.g. search.arch_lr=0.003")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {text!r}: the value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any], source: str = "override") -> dict:
    """A copy of ``data`` (a config dict) with dotted-key overrides set, from strings or a mapping.

    Only sets values; `config_from_dict` then rejects unknown keys and bad values as for a file.
    """
    out = json.loads(json.dumps(data or {}))
    items = ([parse_override(o, source) for o in overrides] if isinstance(overrides, list)
             else [(k.split("."), v) for k, v in overrides.items()])
    for path, value in items:
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return out


def with_overrides(cfg: ExperimentConfig, overrides: list[str] | dict[str, Any],
                   source: str = "override") -> ExperimentConfig:
    """A new validated config: ``cfg`` with dotted-key overrides (what a Tune trial samples) applied."""
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides, source), source)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate.

    Errors name the file (and ``override`` for a bad override).
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    if not overrides:
        return config_from_dict(data, path)
    _build(ExperimentConfig, data, path, "")  # unknown keys and types in the file name the file alone
    source = f"{path} with overrides {' '.join(overrides)}"
    return config_from_dict(apply_overrides(data, list(overrides), source), source)


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder, then os.replace)."""
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None))


_HASH_EXCLUDED = ("name", "storage_path")  # where a run lives is not what it computes


def config_hash(cfg: ExperimentConfig, length: int = 8) -> str:
    """A short stable hash of the resolved config (without name and storage_path), for derived names."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k not in _HASH_EXCLUDED}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def derive_name(cfg: ExperimentConfig, source: str | os.PathLike | None = None) -> str:
    """``cfg.name``, else ``<config file stem>-<config_hash>``: the same config always names the same run,
    so running it again resumes it."""
    if cfg.name:
        return cfg.name
    stem = Path(source).stem if source else "search"
    return f"{stem}-{config_hash(cfg)}"


def search_space_of(cfg: ExperimentConfig) -> dict:
    """The values that fix the supernet's shape (compared when resuming a checkpoint)."""
    return {k: getattr(cfg.search_space, k) for k in SEARCH_SPACE_KEYS}
