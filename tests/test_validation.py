"""Validation against random architectures (orchestrator/sweep/validation.py, experiments/validate.py): the statistics
on tables, the plan, bad input, and the command end to end on the smoke experiment (K=2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import constant_predictor_miou
from local_cluster import cluster_env

from orchestrator.sweep.validation import (
    Candidate,
    Searched,
    ValidationError,
    check_comparable,
    kendall_tau,
    percentile,
    plan,
    read_searched,
    summarize,
)
from search_space import Genotype
from search_space.sampling import legal_paths

ROOT = Path(__file__).resolve().parents[1]
CELL = ((("sep_conv_3x3", 0), ("skip_connect", 1)), (("max_pool_3x3", 1), ("dil_conv_3x3", 2)))


def genotype(path: tuple[int, ...]) -> Genotype:
    return Genotype(cell=CELL, path=path)


def searched(name: str = "exp", **changes) -> Searched:
    config = {"search_space": {"layers": 3, "blocks": 2, "ops": "paper", "stem_channels": [8, 8, 16]},
              "data": {"dataset": "synthetic", "crop_size": 32}, "retrain": {"epochs": 1, "crop_size": 32}}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section] = {**config[section], key: value}
    return Searched(name, genotype((0, 1, 1)), config, None)


@pytest.mark.parametrize(("value", "population", "expected"), [
    (0.5, [0.1, 0.2, 0.3, 0.4], 100.0),
    (0.0, [0.1, 0.2], 0.0),
    (0.2, [0.1, 0.2, 0.3, 0.4], 37.5),
    (0.25, [0.1, 0.2, 0.3, 0.4], 50.0),
])
def test_percentile(value, population, expected):
    assert percentile(value, population) == pytest.approx(expected)


@pytest.mark.parametrize(("xs", "ys", "expected"), [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
    ([1, 2, 3, 4], [40, 30, 20, 10], -1.0),
    ([1, 2, float("nan")], [1, 2, 3], float("nan")),  # fewer than 3 finite pairs
])
def test_kendall_tau(xs, ys, expected):
    tau = kendall_tau(xs, ys)
    assert (math.isnan(tau) and math.isnan(expected)) or tau == pytest.approx(expected)


def test_summarize_places_the_searched_genotype_among_the_random_ones():
    paths = legal_paths(3)[:5]
    candidates = [Candidate("searched:a", genotype(paths[0]), (0, 1))]
    candidates += [Candidate(f"random-{i}", genotype(p), (0,)) for i, p in enumerate(paths[1:])]
    scores = {("searched:a", 0): 0.50, ("searched:a", 1): 0.54,
              ("random-0", 0): 0.40, ("random-1", 0): 0.45, ("random-2", 0): 0.60, ("random-3", 0): 0.35}
    result = summarize(candidates, scores)
    s = result["searched"][0]
    assert s["mean"] == pytest.approx(0.52) and s["sd"] == pytest.approx(math.sqrt(0.0008))
    assert s["percentile"] == pytest.approx(75.0) and s["beats_random_mean"]
    assert result["random"]["count"] == 4 and result["random"]["mean"] == pytest.approx(0.45)
    assert result["seed_sd"] == pytest.approx(math.sqrt(0.0008))
    assert result["random_range_over_seed_sd"] == pytest.approx(0.25 / math.sqrt(0.0008))


def test_plan_draws_distinct_random_genotypes_other_than_the_searched_ones():
    one, two = searched("a"), Searched("b", genotype((1, 1, 2)), searched().config, None)
    candidates = plan([one, two], k=6, seeds=2, random_seeds=1, sample_seed=3)
    assert [c.label for c in candidates[:2]] == ["searched:a", "searched:b"]
    assert all(c.seeds == (100, 101) for c in candidates[:2]) and all(c.seeds == (100,) for c in candidates[2:])
    drawn = [c.genotype for c in candidates[2:]]
    assert len(set(drawn)) == 6 and not {one.genotype, two.genotype} & set(drawn)
    assert [c.genotype for c in plan([one, two], 6, 2, 1, 3)] == [c.genotype for c in candidates]


@pytest.mark.parametrize(("change", "key"), [
    ({"retrain__epochs": 5}, "retrain.epochs"),
    ({"data__crop_size": 64}, "data.crop_size"),
    ({"search_space__layers": 4}, "search_space.layers"),
])
def test_experiments_with_another_space_or_budget_are_refused(change, key):
    with pytest.raises(ValidationError, match=key):
        check_comparable([searched("a"), searched("b", **change)])


def test_an_unfinished_experiment_is_refused_with_the_file_named(tmp_path):
    with pytest.raises(ValidationError, match=r"final/summary.json: not found"):
        read_searched(str(tmp_path))


@pytest.mark.slow
@pytest.mark.cluster
def test_validate_command_on_the_smoke_experiment(smoke_experiment, ray_cluster):
    proc, exp = smoke_experiment
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**cluster_env(), "RAY_ADDRESS": ray_cluster.gcs_address}
    cmd = [sys.executable, "experiments/validate.py", "--experiment", str(exp), "--random", "2", "--seeds", "2"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((exp / "final" / "validation.json").read_text())
    assert (exp / "final" / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["random"]["count"] == 2 and len(result["searched"]) == 1
    floor = constant_predictor_miou(json.loads((exp / "final" / "summary.json").read_text())["config"], "report")
    assert all(floor < v <= 1.0 for r in result["architectures"] for v in r["test_miou"])
    assert len(result["searched"][0]["test_miou"]) == 2 and math.isfinite(result["seed_sd"])
    assert all(r["seeds"][0] == 100 for r in result["architectures"])  # evaluation seeds, not the search's
    assert len(result["supernet_ranking"]) == 1 and len(result["supernet_ranking"][0]["supernet_miou"]) == 3
    summary = json.loads((exp / "final" / "summary.json").read_text())
    assert summary["validation"]["random_count"] == 2
    assert summary["retrain"]["val_miou"] > constant_predictor_miou(summary["config"], "select")
    assert "percentile" in first.stdout and "Kendall tau" in first.stdout
    runs = sorted((exp / "final" / "validation" / "runs").glob("retrain-*"))
    assert len(runs) == 4
    stamps = {p: [f.stat().st_mtime_ns for f in sorted(p.glob("epochs/*.json"))] for p in runs}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: [f.stat().st_mtime_ns for f in sorted(p.glob("epochs/*.json"))] for p in runs} == stamps
    assert json.loads((exp / "final" / "validation.json").read_text())["architectures"] == result["architectures"]
    report = subprocess.run([sys.executable, "-m", "orchestrator.analyze", str(exp), "--out", str(exp.parent / "an")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert report.returncode == 0 and "random architectures retrain to mIoU" in report.stdout
    assert "Kendall tau" in report.stdout
