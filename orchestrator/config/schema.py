"""The config's sections: typed dataclasses, each field with its default, why, and the range rule it must pass.

Every default carries a comment saying why; where the paper (Liu et al., CVPR 2019; docs/notes/paper.md) gives a
value, the default is the paper's. Rules (`orchestrator.config.rules`) sit on the field they check; the few
between sections sit on `ExperimentConfig`. Level and rate limits come from `search_space`, not retyped here.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.rules import (
    ConfigError,
    above,
    at_least,
    check_fields,
    one_of,
    optional,
    relation,
    rule,
    setting,
)
from search_space.genotypes import RATES
from search_space.operations import OP_FAMILIES
from search_space.supernet import HEAD_MIXES, HEADS
from search_space.trellis import NUM_LEVELS

SEARCH_SPACE_KEYS = ("layers", "blocks", "filter_multiplier", "ops", "stem_channels", "head", "head_mix")
"""The keys that define the supernet's shape: a checkpoint only resumes into the same values."""

SEARCH_SPACE_KEY_DEFAULTS = {"head": "aspp", "head_mix": "sum"}
"""What a checkpoint made before a search-space key existed had, for that key."""

PATH_SELECTIONS = ("viterbi", "centred", "supernet")
CANDIDATE_SOURCES = ("decoded", "sampled")
# what a short retrain is ranked by, and which way is better
SELECTION_METRICS = {"val_miou": "max", "val_loss": "min", "train_loss": "min"}
TUNE_DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")

# Rules shared by several fields.
_CROP = rule(lambda v: v >= RATES[-1], f"at least {RATES[-1]} (the network's largest downsample rate)")
_LR = above(0, "a learning rate > 0")
_MOMENTUM = rule(lambda v: 0 <= v < 1, "0 <= momentum < 1")
_DECAY = at_least(0, "a value >= 0")
_CUSTOM = rule(lambda v: all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v.values()),
               "a mapping of resource name to an amount > 0")


@dataclass
class SearchSpaceConfig:
    layers: int = setting(12, at_least(1))  # L: the paper's search network has 12 cell layers
    blocks: int = setting(5, at_least(1))  # B: blocks per cell in the paper
    filter_multiplier: int = setting(8, at_least(1))  # F: the paper searches with F=8 (retraining uses 20/32/48)
    # op family: "paper" follows the authors' TF code; "darts" matches the public port
    ops: str = setting("paper", one_of(OP_FAMILIES))
    stem_channels: list[int] = setting(  # the paper's three stem convs
        [64, 64, 128], rule(lambda v: len(v) == 3 and all(c >= 1 for c in v), "three integers >= 1"))
    # "aspp": the paper's search head (an ASPP per rate, summed). "decoder": those ASPPs feed a DeepLabv3+
    # decoder with the stem's rate-4 features, as the retrain network does (search_space/supernet.py).
    head: str = setting("aspp", one_of(HEADS))
    # "sum": the paper's, every level's head counts fully whatever beta is. "reach": each level's head weighted by
    # the probability that beta's path ends there, so beta learns which level's head predicts best (a departure;
    # search_space/supernet.py, docs/validation.md).
    head_mix: str = setting("sum", one_of(HEAD_MIXES))


PRIVATE_TEST_LABELS = ("cityscapes", "voc", "ade20k")
"""Datasets whose test labels are not public: their report split is val, their selection split a train holdout."""


def _report_split(value: Any, section: Any, root: Any) -> str | None:
    if value is None:
        return None
    if value in ("train", "holdout", section.select_split):
        return f"null or a split other than train, holdout and data.select_split ({section.select_split})"
    if value == "test" and section.dataset in PRIVATE_TEST_LABELS:
        return (f"a split with public labels: {section.dataset}'s test labels are private, so report on val "
                "(data.report_split: val) and select on a train holdout (data.select_split: holdout, data.holdout: N)")
    return None


@dataclass
class DataConfig:
    # runs anywhere without downloads; "cityscapes" is the paper's search data
    dataset: str = setting("synthetic", rule(bool, "a dataset name"))
    root: str | None = None  # dataset folder; None for "synthetic", which is generated in memory
    crop_size: int = setting(321, _CROP)  # the paper's random crops at search time (Cityscapes at half resolution)
    batch_size: int = setting(2, at_least(1))  # per worker; the paper searches with batch 2 on one GPU
    # per worker; evaluation holds no gradients, but full images can be large
    val_batch_size: int = setting(2, at_least(1))
    # DataLoader processes per Ray worker; 0 keeps the worker's CPU budget honest
    loader_workers: int = setting(0, at_least(0))
    split_seed: int = 0  # seeds the trainA/trainB halving (and a holdout); fixed so resumed runs see the same halves
    options: dict = field(default_factory=dict)  # passed to load_dataset for the train split (synthetic: size...)
    val_options: dict = field(default_factory=dict)  # passed to load_dataset for the selection split
    # What everything that chooses reads (supernet validation, the sweep's ranking, selection, val_* metrics):
    # "val", or "holdout" (data.holdout images carved out of train, which training then leaves out) where the
    # dataset's own test labels are private (orchestrator/data/roles.py)
    select_split: str = setting("val", rule(lambda v: v not in ("", "train"), "a split name other than train, "
                                            "or holdout"))
    holdout: int = setting(0, relation(lambda v, s: (v >= 1) == (s.select_split == "holdout"),
                                       "an integer >= 1 with data.select_split: holdout, else 0"))
    # Read once, at the end of a full retrain, for the test_* numbers that claims are made on; nothing that
    # chooses reads it. The synthetic task's own test split; null: no report split
    report_split: str | None = setting("test", _report_split)
    report_options: dict = field(default_factory=dict)  # passed to load_dataset for the report split


@dataclass
class SearchConfig:
    epochs: int = setting(40, at_least(1))  # the paper searches for 40 epochs
    # alpha/beta stay frozen for the first 20 epochs (paper: avoids bad local optima)
    warmup_epochs: int = setting(20, relation(
        lambda v, s: 0 <= v < s.epochs,
        "0 <= warmup_epochs < search.epochs ({epochs}), or alpha/beta would never be updated"))
    lr: float = setting(0.025, _LR)  # weight SGD: cosine from 0.025 (paper)
    # ... down to 0.001 (paper)
    lr_min: float = setting(0.001, relation(lambda v, s: 0 <= v <= s.lr, "0 <= lr_min <= search.lr ({lr})"))
    momentum: float = setting(0.9, _MOMENTUM)  # weight SGD momentum (paper)
    weight_decay: float = setting(3e-4, _DECAY)  # weight SGD weight decay (paper)
    arch_lr: float = setting(3e-3, _LR)  # alpha/beta Adam learning rate (paper)
    arch_weight_decay: float = setting(1e-3, _DECAY)  # alpha/beta Adam weight decay (paper)
    # The paper says only "Adam"; (0.9, 0.999) is Adam's default and what the public port uses. DARTS uses
    # (0.5, 0.999) for its architect; set it here to compare.
    arch_betas: list[float] = setting(
        [0.9, 0.999], rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two Adam betas in [0, 1)"))
    # weight-gradient norm clip from DARTS and the port; None disables it
    grad_clip: float | None = setting(5.0, optional(above(0, "a norm > 0")))
    class_weights: bool = False  # the paper trains with plain cross-entropy; True weights by 1/ln(1.02 + freq)
    # None: one pass over trainA per epoch; a cap for huge datasets
    max_steps_per_epoch: int | None = setting(None, optional(at_least(1)))


@dataclass
class ScalingConfig:
    # DDP workers; 2 is the smallest setting that exercises the distributed path
    num_workers: int = setting(2, at_least(1))
    use_gpu: bool = False  # CPU by default so the project runs on a laptop; a cluster config sets True
    cpus_per_worker: float = setting(1.0, above(0))  # also the worker's torch thread count (at least 1)
    # used only when use_gpu; one GPU per DDP worker is the usual layout
    gpus_per_worker: float = setting(1.0, above(0))
    # Custom Ray resources every search worker also requests, e.g. {spot: 1} so that the sweep's workers land on
    # the node type that offers it (cluster.yaml's spot GPU type); {} asks for none
    custom_resources: dict = setting({}, _CUSTOM)
    # "auto": gloo on CPU, nccl on GPU; or force "gloo" / "nccl"
    backend: str = setting("auto", one_of(("auto", "gloo", "nccl"), "auto, gloo or nccl"),
                           relation(lambda v, s: s.use_gpu or v != "nccl",
                                    "gloo or auto when scaling.use_gpu is false (NCCL needs GPUs)"))


def _gpu_only(value: Any, section: Any, root: Any) -> str | None:
    """A switch that only a GPU run may turn on (scaling.use_gpu)."""
    if root.scaling.use_gpu or not value:
        return None
    return "false when scaling.use_gpu is false (a GPU-only option)"


@dataclass
class RuntimeConfig:
    # worker r seeds torch/numpy/random with seed + r; weights start from rank 0's init
    seed: int = setting(0, at_least(0))
    deterministic: bool = True  # deterministic algorithms so a resumed search equals an uninterrupted one
    bf16: bool = setting(False, _gpu_only)  # bf16 autocast; GPU only, off by default so CPU runs are exact
    channels_last: bool = setting(False, _gpu_only)  # NHWC memory format; GPU only (it slows many CPU convs)
    # Levels (0 = stride 4 .. 3 = stride 32) whose supernet cells are recomputed in backward instead of stored:
    # [0] saves about half the activation memory for ~15% more step time, [0, 1, 2, 3] ~75% for ~40%.
    checkpoint_levels: list[int] = setting([], rule(
        lambda v: all(0 <= level < NUM_LEVELS for level in v) and len(set(v)) == len(v),
        f"distinct levels from 0 (stride {RATES[0]}) to {NUM_LEVELS - 1} (stride {RATES[-1]})"))
    # Separable units of the supernet store only their input and recompute the rest in backward: on CPU at
    # L=12, F=8, crop 129, batch 2, 0.75 GB less memory (1.96 -> 1.21 GB) for steps 5-10% slower.
    recompute_units: bool = True
    # epochs between checkpoints; 1 loses at most one epoch on a failure
    checkpoint_every: int = setting(1, at_least(1))
    keep_checkpoints: int = setting(2, at_least(1))  # newest checkpoints kept; 2 survives one corrupt write
    # worker-group restarts from the latest checkpoint before the run fails (-1: forever)
    max_failures: int = setting(3, at_least(-1, "an integer >= 0, or -1 (forever)"))
    log_images: bool = True  # alpha/beta heatmaps and validation overlays in TensorBoard (rank 0, cheap)
    # seconds between progress lines inside an epoch (step, images/s, eta); 0: only the line at each epoch's end.
    # A GPU epoch on Cityscapes is thousands of steps. Not part of the config hash.
    progress_seconds: float = setting(60.0, at_least(0, "seconds >= 0 (0: off)"))


def _check_distribution(key: str, spec: Any) -> None:
    where = f"tune.param_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in TUNE_DISTRIBUTIONS:
        raise ConfigError(f"{where} = {spec!r}: expected one of "
                          + ", ".join(f"{{{d}: ...}}" for d in TUNE_DISTRIBUTIONS))
    kind, values = next(iter(spec.items()))
    expected = None
    if not isinstance(values, list) or len(values) < 1:
        expected = "a non-empty list"
    elif kind in ("uniform", "loguniform"):
        nums = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not (nums and values[0] < values[1]):
            expected = "[low, high] with low < high"
        elif kind == "loguniform" and values[0] <= 0:
            expected = "low > 0 for loguniform"
    if expected:
        raise ConfigError(f"{where}.{kind} = {values!r}: expected {expected}")


def _sweep_space(space: dict, section: Any, root: Any) -> None:
    """Every key of tune.param_space is a config key outside the sweep's own, with one valid distribution."""
    keys = valid_keys()
    for key, spec in space.items():
        if key not in keys:
            raise ConfigError(unknown_key(key, keys))
        if key.startswith(("tune.", "name", "storage_path")):
            raise ConfigError(f"tune.param_space = {key!r}: expected keys outside tune, name and storage_path "
                              "(they define the sweep itself)")
        _check_distribution(key, spec)


@dataclass
class TuneConfig:
    # Dotted config key -> one of {"grid": [...]}, {"choice": [...]}, {"uniform": [lo, hi]},
    # {"loguniform": [lo, hi]}. Empty: a sweep of num_samples copies of this config.
    param_space: dict = setting({}, _sweep_space)
    # samples of param_space (grid keys are crossed with each sample, as in Tune)
    num_samples: int = setting(1, at_least(1))
    metric: str = setting("val_miou", rule(bool, "a reported metric name"))  # what the paper selects on
    # What picks the sweep's best trial. "architecture": each finished trial's decoded genotype is short-retrained
    # like a selection candidate and the best architecture wins (orchestrator/sweep/ranking.py); a supernet's own
    # mIoU rewards a larger F or a longer search, not a better architecture. "supernet": tune.metric itself.
    # ASHA stops trials early on tune.metric either way; a one-trial sweep ranks nothing.
    rank_by: str = setting("architecture", one_of(("architecture", "supernet")))
    mode: str = setting("max", one_of(("max", "min"), "max or min"))  # mIoU is better when larger
    # ASHA stops weak trials early; "fifo" runs every trial to the end
    scheduler: str = setting("asha", one_of(("asha", "fifo"), "asha or fifo"))
    grace_period: int = setting(1, at_least(1))  # epochs before ASHA may stop a trial
    reduction_factor: int = setting(2, at_least(2))  # ASHA keeps 1/2 of trials at each rung
    # 0: as many as the cluster's resources fit
    max_concurrent_trials: int = setting(0, at_least(0, "an integer >= 0 (0: as many as fit)"))
    # the trial driver's own CPU; cannot be 0 in Tune, and it only waits
    trial_cpus: float = setting(0.1, above(0, "a value > 0 (Tune refuses 0)"))


@dataclass
class RetrainConfig:
    epochs: int = setting(100, at_least(1))  # not in the paper (it counts iterations); a DeepLab-style budget
    lr: float = setting(0.05, _LR)  # poly learning rate from 0.05 (paper's retraining recipe)
    poly_power: float = setting(0.9, above(0))  # the DeepLab poly exponent
    momentum: float = setting(0.9, _MOMENTUM)  # DeepLab SGD momentum
    weight_decay: float = setting(4e-5, _DECAY)  # DeepLab weight decay for training from scratch
    crop_size: int = setting(769, _CROP)  # the paper's Cityscapes retraining crop (513 for VOC and ADE20K)
    batch_size: int = setting(8, at_least(1))  # per worker; not in the paper, a common DeepLab setting
    filter_multiplier: int = setting(20, at_least(1))  # Auto-DeepLab-S
    num_workers: int = setting(2, at_least(1))  # DDP workers, as for the search
    # epochs between evaluations of the selection split (val_* metrics), and always the last one; the report
    # split (test_*) is read once, after the last epoch of a full retrain, never by short retrains
    eval_every: int = setting(1, at_least(1))
    # Custom Ray resources every retrain worker also requests (see scaling.custom_resources); {} asks for none
    custom_resources: dict = setting({}, _CUSTOM)
    # Merged over data.options / data.val_options for retraining: the search may use half-resolution images
    # (the paper's search) while the retrain uses the full scale range.
    data_options: dict = field(default_factory=dict)
    val_options: dict = field(default_factory=dict)


@dataclass
class SelectionConfig:
    # How the final step picks the architecture from the best trial's alpha and beta. "viterbi": the paper's
    # decoding, the most probable path under beta. "centred" (a departure): the path with the largest sum of beta
    # logits centred per node, which drops Viterbi's preference for rates 4 and 32 (two outgoing edges each) when
    # beta is near flat (search_space/decoding.py). "supernet": the decoded cell on each of the path_candidates
    # most probable paths, scored by the trained supernet with alpha and beta fixed to it (orchestrator/
    # train/supernet_score.py) on the validation set; candidates rank by that score.
    path: str = setting("viterbi", one_of(PATH_SELECTIONS))
    path_candidates: int = setting(64, at_least(1))  # paths scored by path=supernet (all legal paths when fewer)
    # trainA batches that re-estimate batch-norm statistics per scored candidate
    recalibration_batches: int = setting(8, at_least(0))
    # The top_k candidates (by supernet score, or by beta for path=viterbi) are short-retrained as Tune trials
    # with ASHA on the retrain mIoU; the winner gets the full retrain. 1: no short retrains, the top one wins.
    top_k: int = setting(1, at_least(1))
    # Fill the top_k with the best candidate of each deepest rate first, then by rank: a single path is scored
    # by its last level's head alone, trained as one term of a sum over levels, so scores compare poorly across
    # depths; the short retrains compare them instead.
    one_per_depth: bool = False
    # Where the candidates after the first come from. "decoded": the decoded cell on the next-best paths (by beta,
    # or by the supernet's score with path=supernet). "sampled": distinct genotypes drawn from the search's alpha
    # and beta (search_space.sample_tilted_genotypes): uniform over the space where they are flat, concentrated
    # where the search learned a preference. The first candidate is always the one `path` selects.
    candidates: str = setting("decoded", one_of(CANDIDATE_SOURCES))
    # At most this many parameter-free ops (pools, skip) in the decoded cell: the weakest others take the best op
    # with weights on their edge (P-DARTS and DARTS+ cap skip connections at 2 against DARTS' collapse). A
    # departure from the paper; null: the paper's decoding (experiments/studies/decoding.py compares both)
    max_param_free: int | None = setting(None, optional(at_least(0)))
    # of the sampled candidates: below 1 sharpens what alpha/beta prefer, above flattens
    temperature: float = setting(1.0, above(0))
    # epochs of a short retrain (ASHA's max_t), with the retrain section's other settings
    short_epochs: int = setting(5, at_least(1))
    # short retrains per candidate, at runtime.seed, runtime.seed + 1, ...; a candidate ranks by the mean of its
    # seeds' metric (a failed seed fails the candidate): the seed-to-seed noise of one short retrain is as wide
    # as the spread between candidates (docs/validation.md)
    seeds: int = setting(1, at_least(1))
    # true: each short retrain runs standalone in its Tune trial's own process (one worker with the global batch of
    # retrain.num_workers workers, no checkpoints): no Train worker group to start per candidate, which on a small
    # machine costs more than a short retrain itself. false: a TorchTrainer of retrain.num_workers workers.
    in_process: bool = True
    # What ranks the short retrains (and what ASHA compares). "val_miou": the yardstick's own metric, on the small
    # validation set. "train_loss": the last epoch's mean training loss, a training-speed estimate (Ru et al.,
    # NeurIPS 2021) averaged over every training image, so far less noisy after a few epochs. "val_loss".
    metric: str = setting("val_miou", one_of(SELECTION_METRICS))
    grace_period: int = setting(2, at_least(1))  # ASHA: epochs before a short retrain may be stopped
    reduction_factor: int = setting(2, at_least(2))  # ASHA keeps 1/2 of the short retrains at each rung


@dataclass
class ValidationConfig:
    # After the final retrain, retrain this many genotypes drawn uniformly from the space and place the searched
    # one among them (experiments/validate.py does the same on demand). 0: the chain does not validate.
    random: int = setting(0, at_least(0, "an integer >= 0 (0: no validation)"))
    # retrain seeds of the searched genotype: its seed-to-seed sd is the yardstick's noise
    seeds: int = setting(2, at_least(1))
    random_seeds: int = setting(1, at_least(1))  # retrain seeds per random genotype
    sample_seed: int = 0  # seeds the random draw, so the same space always gets the same baseline


@dataclass
class ExperimentConfig:
    # None: derived from the config file's stem and config_hash (see derive_name)
    name: str | None = setting(None, rule(lambda v: v is None or (bool(v) and "/" not in v),
                                          "null or a folder name without '/'"))
    # run folders live here; multi-node runs need shared storage (S3, NFS)
    storage_path: str = setting("./results", rule(bool, "a folder or URI"))
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # bf16, channels_last need scaling.use_gpu
    tune: TuneConfig = field(default_factory=TuneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def validate(cfg: ExperimentConfig, source: str = "config") -> ExperimentConfig:
    """Every field's range rule, section by section in field order; returns ``cfg`` or raises ConfigError."""
    check_fields(cfg, source)
    return cfg


# ---------------------------------------------------------------------------------------------- keys


def sections() -> dict[str, type]:
    """Section name -> its dataclass, e.g. ``"search" -> SearchConfig``."""
    hints = typing.get_type_hints(ExperimentConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ExperimentConfig)
            if dataclasses.is_dataclass(hints[f.name])}


def valid_keys() -> list[str]:
    """Every dotted key a config accepts, e.g. ``search.arch_lr``."""
    keys = []
    for f in dataclasses.fields(ExperimentConfig):
        cls = sections().get(f.name)
        keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(cls)] if cls else [f.name]
    return keys


def unknown_key(dotted: str, candidates: list[str]) -> str:
    """Why ``dotted`` is refused, with the closest valid key (or ``candidates`` when none is close)."""
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
    return f"unknown key '{dotted}'{hint}"
