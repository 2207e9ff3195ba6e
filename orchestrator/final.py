"""The final step of a sweep: a Ray actor that takes the best trial, decodes its genotype from the trial's
last checkpoint, draws it, retrains the `DiscreteNet` it describes as a TorchTrainer, and writes
``<experiment>/final/summary.json``.

Files (all written atomically): ``final/genotype.json``, ``final/path.png`` (the path over the L x 4
trellis), ``final/cell.png``, ``final/summary.json``; the retrain run (checkpoints, TensorBoard) lives in
``final/retrain/``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import ray
import ray.train

from orchestrator.atomic import save_figure, write_json, write_text
from orchestrator.checkpointing import read_checkpoint_dir
from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.figures import cell_figure, path_figure
from search_space import Genotype, decode_cell, decode_path

FINAL_DIR = "final"


def genotype_from_checkpoint(checkpoint_path: str) -> Genotype:
    """Decode alpha and beta stored in a search checkpoint (a local folder or a storage URI), verified by its
    SHA-256 first."""
    with ray.train.Checkpoint(path=checkpoint_path).as_directory() as directory:
        state = read_checkpoint_dir(directory)
    alpha, beta = state["model"]["alpha"], state["model"]["beta"]
    return Genotype(cell=decode_cell(alpha), path=decode_path(beta))


def write_architecture(genotype: Genotype, final_dir: str | os.PathLike, label: str = "") -> dict[str, str]:
    """genotype.json, path.png and cell.png in ``final_dir``; returns their paths."""
    final_dir = Path(final_dir)
    suffix = f" ({label})" if label else ""
    files = {
        "genotype": str(write_text(final_dir / "genotype.json", genotype.to_json() + "\n")),
        "path_png": str(save_figure(path_figure(genotype, "decoded network path" + suffix), final_dir / "path.png")),
        "cell_png": str(save_figure(cell_figure(genotype, "decoded cell" + suffix), final_dir / "cell.png")),
    }
    return files


def retrain_and_summarize(cfg: ExperimentConfig, genotype: Genotype, final_dir: str,
                          extra: dict[str, Any]) -> dict[str, Any]:
    """Retrain ``genotype`` with ``cfg.retrain`` and write ``summary.json``; returns the summary."""
    from orchestrator.retrain import run_retrain
    from orchestrator.run_search import read_epochs

    start = time.time()
    result = run_retrain(cfg, genotype, storage_path=final_dir, name="retrain")
    metrics = result.metrics or {}
    records = read_epochs(os.path.join(final_dir, "retrain"))
    if records and records[-1].get("diverged") and records[-1]["epoch"] > (metrics.get("epoch") or 0):
        metrics = {**metrics, "diverged": True, "stop_reason": records[-1].get("stop_reason")}
    summary = {
        **extra,
        "genotype": genotype.to_dict(),
        "retrain": {
            "val_miou": _finite_or_none(metrics.get("val_miou")),
            "diverged": bool(metrics.get("diverged", False)),
            "stop_reason": metrics.get("stop_reason"),
            "per_class_iou": metrics.get("per_class_iou"),
            "classes": metrics.get("classes"),
            "epochs": metrics.get("epoch"),
            "seconds": round(time.time() - start, 1),
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "run_dir": os.path.join(final_dir, "retrain"),
            "tensorboard": os.path.join(final_dir, "retrain", "tensorboard"),
            "error": repr(result.error) if result.error else None,
        },
        "config": config_to_dict(cfg),
    }
    write_json(Path(final_dir) / "summary.json", summary)
    return summary


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@ray.remote(num_cpus=0.1)
class FinalActor:
    """Decode the best trial and retrain it, on the cluster (where the storage is)."""

    def run(self, cfg_dict: dict[str, Any], experiment_dir: str, best: dict[str, Any]) -> dict[str, Any]:
        """Args:
            cfg_dict: the best trial's resolved config (base config with its sampled keys).
            experiment_dir: ``<storage>/<name>``.
            best: facts about the best trial: trial_id, config (sampled keys), metrics, checkpoint_path,
                search_seconds.
        """
        cfg = config_from_dict(cfg_dict, f"best trial {best.get('trial_id')}")
        final_dir = os.path.join(experiment_dir, FINAL_DIR)
        genotype = genotype_from_checkpoint(best["checkpoint_path"])
        files = write_architecture(genotype, final_dir, f"trial {best.get('trial_id')}")
        extra = {
            "best_trial": best.get("trial_id"),
            "hyperparameters": best.get("config", {}),
            "search": {"metric": cfg.tune.metric, "mode": cfg.tune.mode, "value": best.get("metric_value"),
                       "seconds": best.get("search_seconds"), "checkpoint": best["checkpoint_path"],
                       "experiment_dir": experiment_dir},
            "files": files,
        }
        return retrain_and_summarize(cfg, genotype, final_dir, extra)
