"""A retrained network, found and loaded for use: which folder is a retrain run, its newest checkpoint (verified
against its manifest, read with ``weights_only=True``), the `DiscreteNet` it trained, and the dataset's class
names, which come from the saved config and need no dataset files.

`load_run` accepts a retrain run folder (``checkpoint_epoch<k>/`` inside, e.g. ``<experiment>/final/retrain``)
or an experiment folder (its ``final/retrain``), local or at a storage URI (``s3://...``: the checkpoint is
copied to a temporary folder and verified there). Anything else raises `InferenceError` naming the path and what
was expected; a corrupt or foreign checkpoint raises `CheckpointError`. `save_run` writes the folder `load_run`
reads, for a network trained elsewhere (or built by a test).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.data import DataError
from orchestrator.data.formats import FORMATS
from orchestrator.data.known_answer import TASKS as SYNTHETIC_TASKS
from orchestrator.io import storage
from orchestrator.io.checkpointing import (
    CHECKPOINT_PREFIX,
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_dir_name,
    latest_checkpoint_dir,
    read_checkpoint_dir,
    write_checkpoint_dir,
)
from orchestrator.io.paths import is_remote
from search_space import DiscreteNet, Genotype

RUN_FOLDERS = (".", "retrain", "final/retrain")
"""Where a retrain run may sit below the folder a user names: the run itself, an experiment's ``final/``, or
the experiment folder."""

CLASSIFIER_SUFFIX = "classifier.weight"
"""The last state-dict entry with this suffix is the network's classifier (decoder or search head): its output
size is the number of classes the network was trained for."""


class InferenceError(ValueError):
    """A path given to predict or export that is not what it should be (not a run folder, not an image, an
    export that does not match PyTorch); the message names it and says what was expected."""


@dataclass(frozen=True)
class LoadedRun:
    """A retrained network in eval mode with what describes it."""

    net: DiscreteNet
    genotype: Genotype
    config: ExperimentConfig
    classes: tuple[str, ...]
    checkpoint: Path | str  # a URI when the run is on remote storage
    epoch: int


def find_run_dir(path: str | os.PathLike) -> Path | str:
    """The retrain run folder ``path`` (a local folder or a storage URI) names: ``path`` itself,
    ``path/retrain`` or ``path/final/retrain``, whichever first holds a ``checkpoint_epoch<k>/`` with a
    manifest."""
    text = os.fspath(path)
    base = text if is_remote(text) else str(Path(text).expanduser())
    if not storage.exists(base):
        raise InferenceError(f"run folder {base} does not exist: expected a retrain run folder (e.g. "
                             "<experiment>/final/retrain) or an experiment folder")
    if not storage.is_dir(base):
        raise InferenceError(f"run folder {base} is a file: expected a retrain run folder (e.g. "
                             "<experiment>/final/retrain) or an experiment folder")
    candidates = [base if sub == "." else storage.join(base, sub) for sub in RUN_FOLDERS]
    for candidate in candidates:
        if latest_checkpoint_dir(candidate) is not None:
            return candidate if is_remote(candidate) else Path(candidate).resolve()
    looked = ", ".join(storage.join(c, f"{CHECKPOINT_PREFIX}<k>") for c in candidates)
    raise InferenceError(f"{base} is not a retrain run: no checkpoint found at {looked}. Expected a retrain "
                         "run folder (e.g. <experiment>/final/retrain) or an experiment folder whose final step "
                         "retrained its architecture")


def dataset_classes(name: str, root: str | None, options: dict | None = None) -> tuple[str, ...] | None:
    """The class names of dataset ``name`` without reading its images: the synthetic task's, the fixed lists of
    Cityscapes and VOC, ADE20K's ``objectInfo150`` file (or ``class_<i>``), a folder dataset's ``classes.txt``;
    None when they cannot be known here (an unknown dataset, a folder dataset whose root is not on this machine).
    """
    if name == "synthetic":
        return tuple(SYNTHETIC_TASKS.get((options or {}).get("task", "multi"), ()) or ()) or None
    if name not in FORMATS:
        return None
    try:
        return tuple(FORMATS[name].classes(Path(root or ".").expanduser()))
    except (DataError, OSError):
        return None


def num_classes_of(model_state: dict[str, Any], source: str) -> int:
    """The classifier's output size in a `DiscreteNet` state dict."""
    keys = [k for k in model_state if k.endswith(CLASSIFIER_SUFFIX)]
    if not keys:
        raise CheckpointError(f"checkpoint {source}: its model has no '*{CLASSIFIER_SUFFIX}' entry: expected the "
                              "state of a retrained DiscreteNet")
    return int(model_state[keys[-1]].shape[0])


def class_names(cfg: ExperimentConfig, num_classes: int) -> tuple[str, ...]:
    """The dataset's class names when they fit the network's classes, else ``class_0``, ``class_1``, ..."""
    names = dataset_classes(cfg.data.dataset, cfg.data.root, cfg.data.options)
    if names is not None and len(names) == num_classes:
        return names
    return tuple(f"class_{i}" for i in range(num_classes))


def build_network(cfg: ExperimentConfig, genotype: Genotype, num_classes: int) -> DiscreteNet:
    """The retrain network, built as `orchestrator.train.retrain_loop.build_retrain_model` builds it (that
    module imports Ray, which this layer must not; tests/test_inference.py checks the two agree)."""
    return DiscreteNet(genotype, num_classes, filter_multiplier=cfg.retrain.filter_multiplier,
                       ops=cfg.search_space.ops, stem_channels=tuple(cfg.search_space.stem_channels))


def _read_state(checkpoint: Path | str) -> dict[str, Any]:
    """The verified state of a checkpoint folder; one at a URI is copied to a temporary folder first."""
    if is_remote(str(checkpoint)):
        with tempfile.TemporaryDirectory(prefix="adl-run-") as local:
            for rel in storage.files_under(checkpoint):
                storage.write_bytes(os.path.join(local, rel), storage.read_bytes(storage.join(checkpoint, rel)))
            state = read_checkpoint_dir(local)
    else:
        state = read_checkpoint_dir(checkpoint)
    missing = [k for k in ("model", "genotype", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {checkpoint} has no {', '.join(missing)}: expected a retrain "
                              "checkpoint (a search checkpoint holds a supernet, not a retrained network)")
    return state


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedRun:
    """The network of the newest checkpoint of the retrain run at ``path`` (see `find_run_dir`), in eval mode
    on ``device``.

    Raises:
        InferenceError: ``path`` is not a retrain run or experiment folder.
        CheckpointError: the checkpoint fails its manifest check or does not fit the network it describes.
    """
    checkpoint = latest_checkpoint_dir(find_run_dir(path))
    state = _read_state(checkpoint)
    cfg = config_from_dict(state["config"], f"config in {checkpoint}")
    genotype = Genotype.from_dict(state["genotype"], f"genotype in {checkpoint}")
    num_classes = num_classes_of(state["model"], str(checkpoint))
    net = build_network(cfg, genotype, num_classes)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[:3]
        raise CheckpointError(f"checkpoint {checkpoint}: its weights do not fit the network its config and "
                              f"genotype describe ({' '.join(first)})") from None
    net.eval().to(device)
    return LoadedRun(net, genotype, cfg, class_names(cfg, num_classes), checkpoint, int(state.get("epoch", 0)))


def save_run(directory: str | os.PathLike, net: DiscreteNet, genotype: Genotype, cfg: ExperimentConfig,
             epoch: int = 0) -> Path:
    """Write ``net`` as a retrain run folder that `load_run` reads: ``<directory>/checkpoint_epoch<epoch>/``, its
    state (weights, genotype, config, epoch) and SHA-256 manifest, as the retrain loop writes them.

    Args:
        directory: the run folder (local), created when missing.
        net: the network, as `build_network` builds it for ``cfg`` and ``genotype``.
        genotype: what ``net`` was built from.
        cfg: the config it was built with (``retrain.filter_multiplier``, ``search_space`` ops and stem, ``data``).
        epoch: the epoch the checkpoint is named after.

    Returns:
        The checkpoint folder.
    """
    folder = Path(directory).expanduser() / checkpoint_dir_name(epoch)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, "model": net.state_dict(), "genotype": genotype.to_dict(),
             "config": config_to_dict(cfg), "epoch": epoch}
    write_checkpoint_dir(folder, state, {"epoch": epoch, "genotype": state["genotype"]})
    return folder
