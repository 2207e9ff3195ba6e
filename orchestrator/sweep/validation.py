"""Does the search beat chance? The searched genotypes against genotypes drawn uniformly from the same space,
each retrained at the experiment's retrain budget (Li and Talwalkar 2019; Yu et al. 2020; see
docs/notes/search-validity.md).

The architectures are retrained as Tune trials (`orchestrator.sweep.retrain_trials`): the searched genotypes at several
seeds, the random ones at fewer, each with the experiment's retrain section. Their runs live in ``<runs>/runs/``
(default ``<out>/validation/runs/``): running the same validation again reuses the finished ones, and
validations that share ``runs`` (several searches of one space) share the random architectures' retrains.

Every retrain runs at evaluation seeds (100, 101, ...: none of them a seed the searches chose with) and is scored
on the report split (``test_miou``), which no search, sweep or selection reads.

Writes ``<out>/validation.json`` and ``<out>/validation.png``: per architecture its test mIoU per seed; the
random distribution (mean, sd, min, max, quartiles); per searched genotype its mean, sd and percentile among the
random ones; the seed-to-seed sd against the spread across architectures (does the task separate
architectures?); and, where the search's checkpoint is at hand, Kendall's tau between the trained supernet's
score of each genotype (`orchestrator.train.supernet_score`) and its retrained mIoU (does the supernet rank
architectures at all?). This module is the Tune driver's side: it knows genotypes and configs, not the model.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import ray

from orchestrator.config import ExperimentConfig, config_from_dict, config_to_dict
from orchestrator.io import storage
from orchestrator.io.atomic import save_figure, write_json
from orchestrator.io.numbers import finite_or_nan
from orchestrator.io.paths import absolute
from orchestrator.sweep.retrain_trials import run_trials
from search_space import Genotype
from search_space.sampling import sample_genotypes

VALIDATION_FILE = "validation.json"
VALIDATION_PNG = "validation.png"
RUNS_DIR = "validation"
COMPARED_SECTIONS = ("data", "retrain")
"""Config sections that must agree between the experiments validated together (the retrain budget)."""


class ValidationError(ValueError):
    """An experiment that cannot be validated (no final genotype yet, another space or retrain budget)."""


@dataclass(frozen=True)
class Searched:
    """A finished experiment's searched genotype, its config and the search checkpoint it came from."""

    name: str
    genotype: Genotype
    config: dict[str, Any]
    checkpoint: str | None


@dataclass(frozen=True)
class Candidate:
    label: str  # "searched:<experiment>" or "random-<i>"
    genotype: Genotype
    seeds: tuple[int, ...]


def read_searched(experiment_dir: str) -> Searched:
    """The genotype the experiment's final step retrained (``final/summary.json``; a local folder or a URI)."""
    path = storage.join(experiment_dir, "final", "summary.json")
    try:
        summary = storage.read_json(path)
    except OSError:
        raise ValidationError(f"{path}: not found; validation needs a finished search: run experiments/search.py "
                              "to the end (its final step writes this file)") from None
    except ValueError as err:
        raise ValidationError(f"{path}: not valid JSON ({err})") from None
    genotype = Genotype.from_dict(summary.get("genotype"), f"{path} 'genotype'")
    return Searched(storage.basename(experiment_dir), genotype, summary["config"],
                    (summary.get("search") or {}).get("checkpoint"))


def check_comparable(searched: list[Searched]) -> None:
    """Experiments validated together must share the space (L, B, ops, stem) and the retrain budget."""
    first = searched[0]
    keys = ("layers", "blocks", "ops", "stem_channels")
    for other in searched[1:]:
        diffs = [f"search_space.{k}" for k in keys
                 if first.config["search_space"][k] != other.config["search_space"][k]]
        diffs += [f"{section}.{k}" for section in COMPARED_SECTIONS for k, v in first.config[section].items()
                  if other.config[section].get(k) != v]
        if diffs:
            raise ValidationError(f"experiments {first.name} and {other.name} differ in {', '.join(diffs)}: "
                                  "validate them separately (a common random baseline needs one space and one "
                                  "retrain budget)")


def plan(searched: list[Searched], k: int, seeds: int, random_seeds: int, sample_seed: int) -> list[Candidate]:
    """The searched genotypes at ``seeds`` seeds, then ``k`` distinct random genotypes at ``random_seeds``."""
    space = searched[0].config["search_space"]
    own = [s.genotype for s in searched]
    try:
        drawn = sample_genotypes(space["layers"], space["blocks"], k, seed=sample_seed, exclude=own)
    except ValueError as err:
        raise ValidationError(f"--random {k}: {err}") from None
    out = [Candidate(f"searched:{s.name}", s.genotype, eval_seeds(seeds)) for s in searched]
    return out + [Candidate(f"random-{i}", g, eval_seeds(random_seeds)) for i, g in enumerate(drawn)]


EVAL_SEED_BASE = 100
"""Evaluation retrains run at seeds 100, 101, ...: disjoint from the search and selection seeds (0, 1, ... by
default), so a lucky initialisation that won a short retrain never scores the winner. `check_eval_seeds` refuses
an experiment that used one of them."""


def eval_seeds(count: int) -> tuple[int, ...]:
    return tuple(range(EVAL_SEED_BASE, EVAL_SEED_BASE + count))


def check_eval_seeds(searched: list[Searched], count: int) -> None:
    """The experiments' search and selection seeds must not be evaluation seeds."""
    for s in searched:
        runtime, selection = s.config.get("runtime", {}), s.config.get("selection", {})
        used = {runtime.get("seed", 0) + j for j in range(selection.get("seeds", 1))}
        shared = sorted(used & set(eval_seeds(count)))
        if shared:
            raise ValidationError(f"experiment {s.name} chose with seeds {sorted(used)}, which include the evaluation "
                                  f"seeds {shared}: evaluation seeds start at {EVAL_SEED_BASE}; search with "
                                  f"runtime.seed below {EVAL_SEED_BASE - selection.get('seeds', 1) + 1}")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def percentile(value: float, population: list[float]) -> float:
    """Percent of ``population`` below ``value`` (ties count half): 100 beats every one of them."""
    if not population:
        return float("nan")
    below = sum(p < value for p in population) + 0.5 * sum(p == value for p in population)
    return 100.0 * below / len(population)


def summarize(candidates: list[Candidate], scores: dict[tuple[str, int], float]) -> dict[str, Any]:
    """Per-architecture results, the random distribution and each searched genotype's place in it."""
    rows = []
    for c in candidates:
        values = [scores.get((c.label, s), float("nan")) for s in c.seeds]
        mean, sd = _mean_sd(values)
        rows.append({"label": c.label, "genotype": c.genotype.to_dict(), "path": list(c.genotype.path),
                     "seeds": list(c.seeds), "test_miou": values, "mean": mean, "sd": sd})
    random_means = [r["mean"] for r in rows if r["label"].startswith("random-") and math.isfinite(r["mean"])]
    r_mean, r_sd = _mean_sd(random_means)
    quartiles = statistics.quantiles(random_means, n=4) if len(random_means) > 1 else [float("nan")] * 3
    searched = []
    for r in rows:
        if r["label"].startswith("searched:"):
            pct = percentile(r["mean"], random_means)
            searched.append({**r, "experiment": r["label"].removeprefix("searched:"), "percentile": pct,
                             "beats_random_mean": r["mean"] > r_mean, "top_quartile": r["mean"] >= quartiles[2]})
    multi = [r for r in rows if sum(math.isfinite(v) for v in r["test_miou"]) > 1]
    seed_sd = math.sqrt(statistics.fmean([r["sd"] ** 2 for r in multi])) if multi else float("nan")
    spread = (max(random_means) - min(random_means)) if random_means else float("nan")
    return {
        "searched": searched,
        "random": {"count": len(random_means), "mean": r_mean, "sd": r_sd,
                   "min": min(random_means, default=float("nan")), "max": max(random_means, default=float("nan")),
                   "quartiles": quartiles},
        "mean_percentile": statistics.fmean([s["percentile"] for s in searched]) if searched else float("nan"),
        "seed_sd": seed_sd,
        "random_range_over_seed_sd": spread / seed_sd if seed_sd and math.isfinite(seed_sd) else float("nan"),
        "architectures": rows,
    }


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's tau-b of two equally long lists (NaN pairs left out; NaN when fewer than 3 remain)."""
    from scipy.stats import kendalltau

    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return float("nan")
    tau = kendalltau([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(tau) if math.isfinite(tau) else float("nan")


@ray.remote
def score_remote(checkpoint: str, cfg: dict[str, Any], genotypes: list[dict[str, Any]], threads: int) -> list[float]:
    from orchestrator.train.supernet_score import load_supernet, score_genotypes

    trained = load_supernet(checkpoint, config_from_dict(cfg, f"{checkpoint}: its experiment's config"))
    return score_genotypes(trained, [Genotype.from_dict(g) for g in genotypes], threads)


def supernet_ranking(searched: list[Searched], summary: dict[str, Any], cfg: ExperimentConfig) -> list[dict]:
    """Per experiment with a reachable checkpoint: its supernet's score of every validated genotype and
    Kendall's tau against their mean retrain mIoU."""
    rows = summary["architectures"]
    threads = max(1, int(cfg.retrain.num_workers * cfg.scaling.cpus_per_worker))
    out = []
    for s in searched:
        if not s.checkpoint or not storage.is_dir(s.checkpoint):
            continue
        task = score_remote.options(num_cpus=threads)
        scores = ray.get(task.remote(s.checkpoint, s.config, [r["genotype"] for r in rows], threads))
        out.append({"experiment": s.name, "checkpoint": s.checkpoint, "supernet_miou": scores,
                    "kendall_tau": kendall_tau(scores, [r["mean"] for r in rows])})
    return out


def validate_experiments(experiment_dirs: list[str], out: str, k: int, seeds: int, random_seeds: int = 1,
                         sample_seed: int = 0, ranking: bool = True, runs: str | None = None) -> dict[str, Any]:
    """Retrain the searched genotypes of ``experiment_dirs`` and ``k`` random ones; write and return the
    result (``<out>/validation.json``, ``<out>/validation.png``). The retrains and Tune's state live in
    ``runs`` (default ``<out>/validation``): validations sharing it retrain each architecture and seed once."""
    from orchestrator.analysis.figures import validation_figure

    searched = [read_searched(d) for d in experiment_dirs]
    check_comparable(searched)
    check_eval_seeds(searched, max(seeds, random_seeds))
    candidates = plan(searched, k, seeds, random_seeds, sample_seed)
    cfg = config_from_dict(searched[0].config, f"{experiment_dirs[0]}/final/summary.json 'config'")
    trials = [{"label": c.label, "genotype": c.genotype.to_dict(), "seed": s} for c in candidates for s in c.seeds]
    metrics = run_trials(cfg, trials, runs or storage.join(out, RUNS_DIR), report=True)
    scores = {key: finite_or_nan(m.get("test_miou")) for key, m in metrics.items()}
    result = {"experiments": [absolute(d) for d in experiment_dirs], "random_k": k, "seeds": seeds,
              "random_seeds": random_seeds, "sample_seed": sample_seed,
              "retrain": config_to_dict(cfg)["retrain"], **summarize(candidates, scores)}
    result["supernet_ranking"] = supernet_ranking(searched, result, cfg) if ranking else []
    write_json(storage.join(out, VALIDATION_FILE), result)
    save_figure(validation_figure(result), storage.join(out, VALIDATION_PNG))
    for directory in experiment_dirs:
        _note_in_summary(directory, out, result)
    return result


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a summary, `analyze` and the end of a search show."""
    r = result["random"]
    return {"random_mean": r["mean"], "random_sd": r["sd"], "random_count": r["count"],
            "searched": [{"experiment": s["experiment"], "mean": s["mean"], "sd": s["sd"],
                          "percentile": s["percentile"], "path": s["path"]} for s in result["searched"]],
            "mean_percentile": result["mean_percentile"], "seed_sd": result["seed_sd"],
            "kendall_tau": [t["kendall_tau"] for t in result.get("supernet_ranking", [])]}


def _note_in_summary(experiment_dir: str, out: str, result: dict[str, Any]) -> None:
    path = storage.join(experiment_dir, "final", "summary.json")
    summary = storage.read_json(path)
    summary["validation"] = {"file": storage.join(absolute(out), VALIDATION_FILE), **headline(result)}
    write_json(path, summary)


def format_result(result: dict[str, Any]) -> str:
    """Lines for the terminal: the random distribution, each searched genotype's place in it, the ranking."""
    r = result["random"]
    lines = [f"random architectures: {r['count']}, test mIoU mean {r['mean']:.4f} sd {r['sd']:.4f} "
             f"(min {r['min']:.4f}, max {r['max']:.4f})"]
    for s in result["searched"]:
        values = ", ".join(f"{v:.4f}" for v in s["test_miou"])
        lines.append(f"searched {s['experiment']}: path {s['path']} test mIoU {s['mean']:.4f} sd {s['sd']:.4f} "
                     f"({values}); percentile {s['percentile']:.0f} among the random ones")
    lines.append(f"mean percentile of the searched genotypes: {result['mean_percentile']:.0f}; seed-to-seed sd "
                 f"{result['seed_sd']:.4f}; random range / seed sd {result['random_range_over_seed_sd']:.1f}")
    for t in result.get("supernet_ranking", []):
        lines.append(f"supernet ranking ({t['experiment']}): Kendall tau {t['kendall_tau']:.2f} between the "
                     "supernet's score and the retrained mIoU")
    return "\n".join(lines)
