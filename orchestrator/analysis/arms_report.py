"""The arm study's result (`orchestrator.sweep.arms`, `experiments/validate.py --config`): from the architectures
each arm chose per search seed and their evaluation retrains, the per-arm scores, the paired differences with
bootstrap intervals, the yardstick's agreement between evaluation seeds, and the text and figure shown to a user.
No Ray: it reads plain dicts.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.analysis.paired import compare_arms, mean_or_nan, yardstick

METRICS = ("test_miou", "val_miou")
"""What is scored: the report split's mIoU (the claim) and the selection split's (what choosing saw)."""


def _value(metrics: dict[tuple[str, int], dict[str, Any]], label: str, seed: int, key: str) -> float:
    value = (metrics.get((label, seed)) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def arm_scores(chosen: dict[int, dict[str, Any]], metrics: dict[tuple[str, int], dict[str, Any]],
               eval_seeds: list[int], label_of, key: str = "test_miou") -> dict[str, dict[int, float]]:
    """arm -> search seed -> the mean over the arm's architectures (the random draws) of their mean over the
    evaluation seeds."""
    scores: dict[str, dict[int, float]] = {}
    for seed, row in chosen.items():
        for arm, genotypes in row["arms"].items():
            per_arch = [mean_or_nan([_value(metrics, label_of(g), s, key) for s in eval_seeds]) for g in genotypes]
            scores.setdefault(arm, {})[int(seed)] = mean_or_nan(per_arch)
    return scores


def architecture_rows(chosen: dict[int, dict[str, Any]], metrics: dict[tuple[str, int], dict[str, Any]],
                      eval_seeds: list[int], label_of) -> list[dict[str, Any]]:
    """One row per (search seed, arm, architecture): its path, cell and scores per evaluation seed."""
    rows = []
    for seed, row in chosen.items():
        for arm, genotypes in row["arms"].items():
            for g in genotypes:
                label = label_of(g)
                rows.append({"search_seed": int(seed), "arm": arm, "label": label, "genotype": g,
                             "path": list(g["path"]),
                             **{key: [_value(metrics, label, s, key) for s in eval_seeds] for key in METRICS}})
    return rows


def summarize_arms(chosen: dict[int, dict[str, Any]], metrics: dict[tuple[str, int], dict[str, Any]],
                   eval_seeds: list[int], label_of) -> dict[str, Any]:
    """The whole result: per arm the mean score over search seeds (test and val), every pair's paired difference
    on the test split, the yardstick over all evaluated architectures and over the random draws alone."""
    rows = architecture_rows(chosen, metrics, eval_seeds, label_of)
    test = arm_scores(chosen, metrics, eval_seeds, label_of, "test_miou")
    val = arm_scores(chosen, metrics, eval_seeds, label_of, "val_miou")
    distinct = {r["label"]: r for r in rows}
    random_rows = {r["label"]: r for r in rows if r["arm"] == "random"}
    return {
        "eval_seeds": list(eval_seeds),
        "search_seeds": sorted(int(s) for s in chosen),
        "arms": {arm: {"test_miou": mean_or_nan(list(test[arm].values())),
                       "val_miou": mean_or_nan(list(val.get(arm, {}).values())),
                       "per_seed_test_miou": test[arm]} for arm in test},
        "paired_test_miou": compare_arms(test),
        "yardstick": {"all": yardstick([r["test_miou"] for r in distinct.values()]),
                      "random": yardstick([r["test_miou"] for r in random_rows.values()])},
        "architectures": rows,
        "stages": {int(s): {k: v for k, v in row.items() if k != "arms"} for s, row in chosen.items()},
    }


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else "-"


def seed_score(arm: dict[str, Any], seed: int) -> float:
    """An arm's test mIoU at one search seed, from a fresh result or one read back from JSON (string keys)."""
    per = arm["per_seed_test_miou"]
    return per.get(seed, per.get(str(seed), math.nan))


def arms_text(result: dict[str, Any]) -> str:
    """Markdown tables: per arm the mean test mIoU (and val), then every paired difference with its interval,
    then the yardstick."""
    lines = [f"search seeds {result['search_seeds']}, evaluation seeds {result['eval_seeds']} (test split)", "",
             "| arm | test mIoU | val mIoU | per search seed (test) |", "|---|---|---|---|"]
    for arm, a in result["arms"].items():
        per = " ".join(_fmt(seed_score(a, s)) for s in result["search_seeds"])
        lines.append(f"| {arm} | {_fmt(a['test_miou'])} | {_fmt(a['val_miou'])} | {per} |")
    lines += ["", "| A - B | mean | 95% bootstrap interval | A wins |", "|---|---|---|---|"]
    for p in result["paired_test_miou"]:
        low, high = p["ci95"]
        lines.append(f"| {p['a']} - {p['b']} | {_fmt(p['mean'], 4)} | [{_fmt(low, 4)}, {_fmt(high, 4)}] | "
                     f"{p['wins']}/{p['n']} |")
    for name, y in result["yardstick"].items():
        lines.append(f"\nyardstick ({name}): {y['architectures']} architectures, r = {_fmt(y['r'], 2)} between the "
                     f"first two evaluation seeds; seed sd {_fmt(y['seed_sd'], 4)}, between-architecture sd "
                     f"{_fmt(y['between_sd'], 4)}")
    for t in result.get("supernet_ranking", []):
        lines.append(f"supernet of search seed {t['search_seed']}: Kendall tau {_fmt(t['kendall_tau'], 2)} "
                     "between its score and the test mIoU")
    return "\n".join(lines)


def arms_figure(result: dict[str, Any]):
    """Test mIoU per search seed, one marker per arm, lines joining a seed's arms (matplotlib Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot(111)
    arms = list(result["arms"])
    for seed in result["search_seeds"]:
        ys = [seed_score(result["arms"][a], seed) for a in arms]
        ax.plot(range(len(arms)), ys, color="0.75", linewidth=0.8, zorder=1)
    for i, arm in enumerate(arms):
        ys = [seed_score(result["arms"][arm], s) for s in result["search_seeds"]]
        ax.scatter([i] * len(ys), ys, zorder=2, label=arm)
        ax.hlines(result["arms"][arm]["test_miou"], i - 0.25, i + 0.25, color="black", zorder=3)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("test mIoU (mean of evaluation seeds)")
    ax.set_title("arms paired by search seed (grey lines); black: mean")
    fig.tight_layout()
    return fig


def yardstick_figure(result: dict[str, Any]):
    """Each architecture's test mIoU at the first evaluation seed against the second, one colour per arm: points
    on the diagonal mean one retrain predicts another (matplotlib Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot(111)
    seeds = result["eval_seeds"][:2]
    rows = [r for r in result["architectures"] if len(r["test_miou"]) >= 2]
    for arm in result["arms"]:
        mine = [r for r in rows if r["arm"] == arm]
        ax.scatter([r["test_miou"][0] for r in mine], [r["test_miou"][1] for r in mine], label=arm, s=18)
    values = [v for r in rows for v in r["test_miou"][:2]]
    if values:
        low, high = min(values), max(values)
        ax.plot([low, high], [low, high], color="0.6", linewidth=0.8, zorder=0)
    y = result["yardstick"].get("all", {})
    ax.set_xlabel(f"test mIoU, evaluation seed {seeds[0]}")
    ax.set_ylabel(f"test mIoU, evaluation seed {seeds[1]}" if len(seeds) > 1 else "")
    ax.set_title(f"the yardstick: r = {_fmt(y.get('r', math.nan), 2)} over {y.get('architectures', 0)} "
                 "architectures", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

