"""Paired comparisons of arms over search seeds: the statistics behind `experiments/validate.py` (and, for two
groups with no seeds in common, an unpaired difference of means).

An arm (the shipped pipeline, the decoded genotype alone, random search, single random draws) produces one
architecture per search seed, and that architecture's score is its mean test mIoU over the evaluation seeds.
Arms are compared seed by seed: the difference A - B at each search seed, their mean, and a 95% percentile
bootstrap interval of that mean over search seeds (resampled with replacement, a fixed generator, so the
interval is reproducible). Also the seed-to-seed agreement of the yardstick: Pearson's r between two evaluation
seeds' scores of the same architectures. No Ray, no torch.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

BOOTSTRAP_SAMPLES = 10_000
CONFIDENCE = 0.95


def mean_or_nan(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def bootstrap_interval(values: list[float], samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN when fewer than 2 finite values)."""
    data = [v for v in values if math.isfinite(v)]
    if len(data) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(data, k=len(data))) for _ in range(samples))
    tail = (1.0 - confidence) / 2.0
    low = means[int(math.floor(tail * (samples - 1)))]
    high = means[int(math.ceil((1.0 - tail) * (samples - 1)))]
    return low, high


def paired_difference(a: dict[Any, float], b: dict[Any, float], seed: int = 0) -> dict[str, Any]:
    """A - B over the keys (search seeds) both have a finite score for: mean, bootstrap interval, how many
    seeds A wins, and the per-seed differences."""
    keys = sorted(k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k]))
    diffs = [a[k] - b[k] for k in keys]
    low, high = bootstrap_interval(diffs, seed=seed)
    return {"seeds": keys, "differences": diffs, "mean": mean_or_nan(diffs), "ci95": [low, high],
            "wins": sum(d > 0 for d in diffs), "n": len(diffs)}


def compare_arms(scores: dict[str, dict[Any, float]]) -> list[dict[str, Any]]:
    """Every ordered pair of arms (in the order given, first against later) with its `paired_difference`."""
    out = []
    for first, second in itertools.combinations(scores, 2):
        out.append({"a": first, "b": second, **paired_difference(scores[first], scores[second])})
    return out


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson's r of the finite pairs (NaN when fewer than 3 or either side is constant)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan
    mx, my = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def yardstick(per_seed: list[list[float]]) -> dict[str, Any]:
    """How well the evaluation separates architectures: ``per_seed[i]`` holds architecture i's score at each
    evaluation seed. Pearson's r between the first two seeds, the pooled seed-to-seed sd (within an
    architecture) and the sd of the architectures' means (between them)."""
    rows = [[v for v in row if math.isfinite(v)] for row in per_seed]
    rows = [row for row in rows if len(row) >= 2]
    if not rows:
        return {"architectures": 0, "r": math.nan, "seed_sd": math.nan, "between_sd": math.nan}
    seed_sd = math.sqrt(statistics.fmean(statistics.variance(row) for row in rows))
    means = [statistics.fmean(row) for row in rows]
    return {"architectures": len(rows), "r": pearson([r[0] for r in rows], [r[1] for r in rows]),
            "seed_sd": seed_sd, "between_sd": statistics.stdev(means) if len(means) > 1 else math.nan}


def unpaired_difference(a: list[float], b: list[float], samples: int = BOOTSTRAP_SAMPLES,
                        confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """mean(A) - mean(B) for two independent groups (no common seeds to pair on): each group resampled with
    replacement on its own; the percentile interval of the difference (NaN when either has fewer than 2 finite
    values)."""
    xs, ys = [v for v in a if math.isfinite(v)], [v for v in b if math.isfinite(v)]
    out = {"n_a": len(xs), "n_b": len(ys), "mean": mean_or_nan(xs) - mean_or_nan(ys) if xs and ys else math.nan,
           "ci95": [math.nan, math.nan]}
    if len(xs) < 2 or len(ys) < 2:
        return out
    rng = random.Random(seed)
    diffs = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) - statistics.fmean(rng.choices(ys, k=len(ys)))
                   for _ in range(samples))
    tail = (1.0 - confidence) / 2.0
    out["ci95"] = [diffs[int(math.floor(tail * (samples - 1)))], diffs[int(math.ceil((1.0 - tail) * (samples - 1)))]]
    return out
