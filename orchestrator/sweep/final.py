"""The final step of a sweep: a Ray actor that takes the best trial, decodes its genotype from the trial's
last checkpoint, draws it, retrains the `DiscreteNet` it describes as a TorchTrainer, and writes
``<experiment>/final/summary.json``.

Files (all written atomically): ``final/genotype.json``, ``final/path.png`` (the path over the L x 4
trellis), ``final/cell.png``, ``final/summary.json``; the retrain run (checkpoints, TensorBoard) lives in
``final/retrain/``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

from orchestrator.analysis.figures import cell_figure, path_figure
from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.data.roles import describe
from orchestrator.io import storage
from orchestrator.io.atomic import save_figure, write_json, write_text
from orchestrator.io.numbers import finite_or_none
from orchestrator.train.supernet_score import load_supernet, read_search_state, select_path
from search_space import Genotype, decode_cell, decode_path, sample_tilted_genotypes
from search_space.decoding import cap_param_free, decode_path_centred, top_paths

FINAL_DIR = "final"


def decoded_cell(alpha, max_param_free: int | None = None):
    """The paper's cell decoding, with at most ``max_param_free`` parameter-free ops when set
    (``selection.max_param_free``, a departure: `search_space.decoding.cap_param_free`)."""
    cell = decode_cell(alpha)
    return cell if max_param_free is None else cap_param_free(cell, alpha, max_param_free)


BETA_DECODINGS = {"viterbi": decode_path, "centred": decode_path_centred}
"""``selection.path`` values that decode beta alone: the paper's Viterbi, or the sum of centred logits."""


def genotype_from_checkpoint(checkpoint_path: str, max_param_free: int | None = None,
                             path: str = "viterbi") -> Genotype:
    """Decode alpha and beta stored in a search checkpoint (a local folder or a storage URI), verified by its
    SHA-256 first: the paper's decoding (``selection.path: viterbi``, or ``centred``), the cell capped as
    `decoded_cell` says."""
    state = read_search_state(checkpoint_path)
    alpha, beta = state["model"]["alpha"], state["model"]["beta"]
    return Genotype(cell=decoded_cell(alpha, max_param_free), path=BETA_DECODINGS[path](beta))


def candidate_genotypes(cfg: ExperimentConfig, checkpoint_path: str, final_dir: str) -> list[Genotype]:
    """The architectures the final step may retrain, best first (at least ``selection.top_k`` where the space
    has them). The first is the one ``selection.path`` selects: the paper's decoding (``viterbi``) or the decoded
    cell on the path the trained supernet scores best (``supernet``, scores in ``path_scores.json``). The rest,
    with ``selection.candidates: decoded``, put the decoded cell on the next-best paths by the same ranking; with
    ``sampled``, they are distinct genotypes drawn from alpha and beta (`sample_tilted_genotypes`)."""
    s = cfg.selection
    ranked = _ranked_paths(cfg, checkpoint_path, final_dir)
    model = read_search_state(checkpoint_path)["model"]
    cell = decoded_cell(model["alpha"], s.max_param_free)
    if s.candidates == "sampled":
        return sample_tilted_genotypes(model["alpha"], model["beta"], s.top_k, seed=cfg.runtime.seed,
                                       temperature=s.temperature, first=Genotype(cell=cell, path=ranked[0]))
    return [Genotype(cell=cell, path=path) for path in ranked[:max(s.top_k, 1)]]


def _ranked_paths(cfg: ExperimentConfig, checkpoint_path: str, final_dir: str) -> list[tuple[int, ...]]:
    """Paths best first: by beta (Viterbi, then the k-best) or by the trained supernet's score."""
    s = cfg.selection
    if s.path in BETA_DECODINGS:
        beta = read_search_state(checkpoint_path)["model"]["beta"]
        first = BETA_DECODINGS[s.path](beta)
        return [first] + [p for p, _ in top_paths(beta, s.top_k) if p != first]
    trained = load_supernet(checkpoint_path, cfg)
    threads = max(1, int(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker))
    genotype, rows = select_path(trained, threads)
    write_json(storage.join(final_dir, "path_scores.json"), {"viterbi": trained.genotype().to_dict(),
                                                      "selected": genotype.to_dict(), "candidates": rows})
    print(f"path selection: {len(rows)} candidate paths scored by the supernet; viterbi "
          f"{list(trained.genotype().path)}, best scored {list(genotype.path)}", flush=True)
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["supernet_miou"], i))
    paths = [tuple(rows[i]["path"]) for i in order]
    return one_per_depth(paths) if s.one_per_depth else paths


def one_per_depth(paths: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``paths`` (best first) reordered: the best path of each deepest level first, in their order, then the
    rest in theirs."""
    firsts = {}
    for path in paths:
        firsts.setdefault(max(path), path)
    leaders = [p for p in paths if firsts[max(p)] == p]
    return leaders + [p for p in paths if p not in leaders]


def write_architecture(genotype: Genotype, final_dir: str | os.PathLike, label: str = "") -> dict[str, str]:
    """genotype.json, path.png and cell.png in ``final_dir``; returns their paths."""
    suffix = f" ({label})" if label else ""
    files = {
        "genotype": str(write_text(storage.join(final_dir, "genotype.json"), genotype.to_json() + "\n")),
        "path_png": str(save_figure(path_figure(genotype, "decoded network path" + suffix),
                                    storage.join(final_dir, "path.png"))),
        "cell_png": str(save_figure(cell_figure(genotype, "decoded cell" + suffix),
                                    storage.join(final_dir, "cell.png"))),
    }
    return files


def data_splits(cfg: ExperimentConfig) -> dict[str, str | None]:
    """Which split each number of a summary comes from: ``val_*`` (the selection split) and ``test_*`` (the
    report split, which nothing that chooses reads)."""
    return {"val": describe(cfg.data, "select"), "test": describe(cfg.data, "report")}


def retrain_and_summarize(cfg: ExperimentConfig, genotype: Genotype, final_dir: str,
                          extra: dict[str, Any]) -> dict[str, Any]:
    """Retrain ``genotype`` with ``cfg.retrain`` and write ``summary.json``; returns the summary."""
    from orchestrator.train.trainers import read_epochs, run_retrain

    start = time.time()
    result = run_retrain(cfg, genotype, storage_path=final_dir, name="retrain")
    metrics = result.metrics or {}
    records = read_epochs(storage.join(final_dir, "retrain"))
    if records and records[-1].get("diverged") and records[-1]["epoch"] > (metrics.get("epoch") or 0):
        metrics = {**metrics, "diverged": True, "stop_reason": records[-1].get("stop_reason")}
    summary = {
        **extra,
        "genotype": genotype.to_dict(),
        "splits": data_splits(cfg),
        "retrain": {
            "val_miou": finite_or_none(metrics.get("val_miou")),
            "test_miou": finite_or_none(metrics.get("test_miou")),
            "test_per_class_iou": metrics.get("test_per_class_iou"),
            "diverged": bool(metrics.get("diverged", False)),
            "stop_reason": metrics.get("stop_reason"),
            "per_class_iou": metrics.get("per_class_iou"),
            "classes": metrics.get("classes"),
            "epochs": metrics.get("epoch"),
            "seconds": round(time.time() - start, 1),
            "checkpoint": (storage.join(final_dir, "retrain", storage.basename(result.checkpoint.path))
                           if result.checkpoint else None),  # Ray's path has no scheme on a URI
            "run_dir": storage.join(final_dir, "retrain"),
            "tensorboard": storage.join(final_dir, "retrain", "tensorboard"),
            "error": repr(result.error) if result.error else None,
        },
        "config": config_to_dict(cfg),
    }
    write_json(storage.join(final_dir, "summary.json"), summary)
    return summary



@ray.remote(num_cpus=0.1)
class FinalActor:
    """Decode the best trial and retrain it, on the cluster (where the storage is)."""

    def candidates(self, cfg_dict: dict[str, Any], experiment_dir: str, best: dict[str, Any]) -> list[dict]:
        """The best trial's candidate genotypes, best first (`candidate_genotypes`), as dicts."""
        cfg = config_from_dict(cfg_dict, f"best trial {best.get('trial_id')}")
        final_dir = storage.join(experiment_dir, FINAL_DIR)
        return [g.to_dict() for g in candidate_genotypes(cfg, best["checkpoint_path"], final_dir)]

    def run(self, cfg_dict: dict[str, Any], experiment_dir: str, best: dict[str, Any], genotype_dict: dict,
            selection: dict[str, Any] | None = None) -> dict[str, Any]:
        """Args:
            cfg_dict: the best trial's resolved config (base config with its sampled keys).
            experiment_dir: ``<storage>/<name>``.
            best: facts about the best trial: trial_id, config (sampled keys), metrics, checkpoint_path,
                search_seconds.
            genotype_dict: the architecture to retrain (from `candidates`, or the short retrains' winner).
            selection: the short retrains' table, when there were any.
        """
        cfg = config_from_dict(cfg_dict, f"best trial {best.get('trial_id')}")
        final_dir = storage.join(experiment_dir, FINAL_DIR)
        genotype = Genotype.from_dict(genotype_dict, "final genotype")
        files = write_architecture(genotype, final_dir, f"trial {best.get('trial_id')}")
        extra = {
            "best_trial": best.get("trial_id"),
            "hyperparameters": best.get("config", {}),
            "search": {"metric": cfg.tune.metric, "mode": cfg.tune.mode, "value": best.get("metric_value"),
                       "seconds": best.get("search_seconds"), "checkpoint": best["checkpoint_path"],
                       "experiment_dir": experiment_dir},
            "files": files,
            "selection": {"path": cfg.selection.path, "top_k": cfg.selection.top_k, "short_retrains": selection},
        }
        return retrain_and_summarize(cfg, genotype, final_dir, extra)
