"""The arm study of experiments/validate.py: its statistics (paired differences, bootstrap intervals, the
yardstick), its plan checks (evaluation seeds disjoint from every seed that chooses) and the equal-compute K of
random search; the whole study end to end on the smoke config (cluster tier)."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import constant_predictor_miou

from orchestrator.analysis.arms_report import arm_scores, arms_text, summarize_arms, yardstick_figure
from orchestrator.analysis.paired import bootstrap_interval, paired_difference, pearson, unpaired_difference, yardstick
from orchestrator.config import config_from_dict
from orchestrator.sweep.arms import (
    ArmsError,
    Plan,
    check_plan,
    choose_all,
    evaluation_config,
    frozen_genotype,
    previous_scores,
    random_draws,
    random_search_size,
    single_trial_size,
    supernet_ranking,
    sweep_points,
)
from orchestrator.sweep.retrain_trials import run_name, trial_config
from search_space import PARAMETER_FREE, Genotype, decode_path

ROOT = Path(__file__).resolve().parents[1]


def test_paired_difference_is_the_mean_of_seedwise_differences_over_shared_seeds():
    a, b = {0: 0.30, 1: 0.28, 2: 0.35, 3: math.nan}, {0: 0.25, 1: 0.30, 2: 0.31, 4: 0.9}
    p = paired_difference(a, b)
    assert p["seeds"] == [0, 1, 2] and p["n"] == 3 and p["wins"] == 2
    assert p["mean"] == pytest.approx((0.05 - 0.02 + 0.04) / 3)
    low, high = p["ci95"]
    assert min(p["differences"]) <= low <= p["mean"] <= high <= max(p["differences"])


def test_the_bootstrap_interval_covers_the_mean_of_a_normal_sample_about_95_percent_of_the_time():
    rng = random.Random(7)
    hits = 0
    for trial in range(200):
        sample = [rng.gauss(1.0, 1.0) for _ in range(20)]
        low, high = bootstrap_interval(sample, samples=400, seed=trial)
        hits += low <= 1.0 <= high
    assert 0.85 <= hits / 200 <= 0.99
    assert all(math.isnan(v) for v in bootstrap_interval([0.5]))


def test_the_unpaired_difference_is_the_difference_of_group_means_and_its_interval_covers_the_truth():
    d = unpaired_difference([0.30, 0.34, math.nan], [0.25, 0.27, 0.23, 0.25])
    assert d["n_a"] == 2 and d["n_b"] == 4 and d["mean"] == pytest.approx(0.32 - 0.25)
    assert 0.30 - 0.27 <= d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= 0.34 - 0.23
    assert all(math.isnan(v) for v in unpaired_difference([0.3], [0.2, 0.25])["ci95"])
    rng, hits = random.Random(3), 0
    for trial in range(200):  # groups of 6 and 10 whose true means differ by 0.5
        a, b = [rng.gauss(1.5, 1.0) for _ in range(6)], [rng.gauss(1.0, 1.0) for _ in range(10)]
        low, high = unpaired_difference(a, b, samples=400, seed=trial)["ci95"]
        hits += low <= 0.5 <= high
    assert 0.82 <= hits / 200 <= 0.99


@pytest.mark.parametrize(("xs", "ys", "expected"), [
    ([1, 2, 3, 4], [2, 4, 6, 8], 1.0),
    ([1, 2, 3, 4], [8, 6, 4, 2], -1.0),
    ([1, 2, 3], [1, 1, 1], math.nan),
    ([1, 2], [1, 2], math.nan),
])
def test_pearson(xs, ys, expected):
    r = pearson(xs, ys)
    assert (math.isnan(r) and math.isnan(expected)) or r == pytest.approx(expected)


def test_the_yardstick_separates_seed_noise_from_architecture_spread():
    rows = [[0.30, 0.31], [0.20, 0.21], [0.25, 0.24], [0.35, 0.36]]
    y = yardstick(rows)
    assert y["architectures"] == 4 and y["r"] > 0.95
    assert y["seed_sd"] == pytest.approx(math.sqrt(statistics.fmean(statistics.variance(r) for r in rows)))
    assert y["between_sd"] == pytest.approx(statistics.stdev([statistics.fmean(r) for r in rows]))


def smoke_cfg(**changes):
    return config_from_dict({"search_space": {"layers": 3, "blocks": 2}, **changes})


def test_evaluation_seeds_that_a_search_or_its_short_retrains_used_are_refused():
    cfg = smoke_cfg(selection={"seeds": 2})
    check_plan(cfg, Plan((0, 1), (100, 101)))
    with pytest.raises(ArmsError, match=r"evaluation seeds \[2\] are also used to choose"):
        check_plan(cfg, Plan((0, 1), (2, 100)))  # search seed 1 short-retrains at seeds 1 and 2
    with pytest.raises(ArmsError, match="--arms best"):
        check_plan(cfg, Plan((0,), (100,), arms=("pipeline", "best")))


@pytest.mark.parametrize(("choice", "expected"), [
    ({"candidates": 16, "search_seconds": 160.0, "selection_seconds": 160.0}, 32),
    ({"candidates": 16, "search_seconds": 0.0, "selection_seconds": 160.0}, 16),
    ({"candidates": 8, "search_seconds": 45.0, "selection_seconds": 80.0}, 8 + 4),
    ({"candidates": 1, "search_seconds": 100.0, "selection_seconds": 0.0}, 2),
])
def test_random_search_gets_as_many_candidates_as_the_pipelines_time_buys(choice, expected):
    assert random_search_size(smoke_cfg(), choice) == expected
    ranked = {**choice, "search_seconds": choice["search_seconds"] / 2, "ranking_seconds": choice["search_seconds"] / 2}
    assert random_search_size(smoke_cfg(), ranked) == expected  # the sweep's ranking of its trials counts too


@pytest.mark.parametrize(("choice", "single_seconds", "expected"), [
    ({"candidates": 16, "search_seconds": 400.0, "ranking_seconds": 80.0, "selection_seconds": 160.0}, 80.0, 56),
    ({"candidates": 16, "search_seconds": 400.0, "selection_seconds": 160.0}, 400.0, 16),
    ({"candidates": 16, "search_seconds": 100.0, "selection_seconds": 160.0}, 300.0, 16),  # never fewer
    ({"candidates": 1, "search_seconds": 400.0, "selection_seconds": 0.0}, 50.0, 1),  # no filter measured
])
def test_the_single_trial_spends_the_sweeps_extra_time_on_more_candidates(choice, single_seconds, expected):
    assert single_trial_size(smoke_cfg(), choice, single_seconds) == expected


@pytest.mark.parametrize(("tune", "points"), [
    ({}, 1),
    ({"num_samples": 3}, 3),
    ({"param_space": {"search.arch_lr": {"grid": [0.003]}}}, 1),
    ({"param_space": {"search.arch_lr": {"grid": [0.003, 0.01]}, "search.warmup_epochs": {"grid": [4, 8]}}}, 4),
    ({"param_space": {"search.arch_lr": {"loguniform": [0.001, 0.01]}}}, 2),
])
def test_sweep_points_counts_the_trials_a_sweep_starts(tune, points):
    assert sweep_points(smoke_cfg(tune=tune)) == points


def test_the_single_arm_is_refused_for_a_config_that_sweeps_nothing():
    grid = {"param_space": {"search.arch_lr": {"grid": [0.003, 0.01]}}}
    check_plan(smoke_cfg(tune=grid), Plan((0,), (100,), arms=("pipeline", "single")))
    with pytest.raises(ArmsError, match=r"--arms single: the config's sweep has one trial \(tune.param_space \{\}"):
        check_plan(smoke_cfg(), Plan((0,), (100,), arms=("pipeline", "single")))


def test_the_evaluation_retrains_differ_from_the_config_in_the_retrain_section_only():
    cfg = smoke_cfg()
    assert evaluation_config(cfg, []) is cfg
    evaluation = evaluation_config(cfg, ["retrain.batch_size=4", "retrain.data_options={size: 128}"])
    assert evaluation.retrain.batch_size == 4 and evaluation.retrain.data_options == {"size": 128}
    assert cfg.retrain.batch_size != 4 and evaluation.search == cfg.search and evaluation.data == cfg.data
    with pytest.raises(ArmsError, match=r"--eval-override search\.epochs=3: expected retrain\.<key>=<value>"):
        evaluation_config(cfg, ["retrain.epochs=5", "search.epochs=3"])


def test_random_draws_differ_between_search_seeds_and_repeat_for_one():
    cfg = smoke_cfg()
    assert random_draws(cfg, 3, 2) == random_draws(cfg, 3, 2)
    assert random_draws(cfg, 3, 2) != random_draws(cfg, 4, 2)


def test_the_frozen_arm_decodes_untrained_alpha_and_beta_per_search_seed():
    cfg = smoke_cfg()
    space = cfg.search_space
    assert decode_path(torch.zeros(space.layers, 4, 3)) == (0,) * space.layers
    cells = {json.dumps(frozen_genotype(cfg, s)["cell"]) for s in range(6)}
    assert frozen_genotype(cfg, 3) == frozen_genotype(cfg, 3) and len(cells) > 1
    for seed in range(6):
        genotype = Genotype.from_dict(frozen_genotype(cfg, seed))
        assert (genotype.layers, genotype.blocks) == (space.layers, space.blocks)
        # beta never moved: Viterbi's prior (rates 4 and 32 have two outgoing edges, the others three)
        assert set(genotype.path[:-1]) == {0} and genotype.path[-1] in (0, 1)
    capped = [Genotype.from_dict(frozen_genotype(smoke_cfg(selection={"max_param_free": 0}), s)) for s in range(6)]
    assert all(op not in PARAMETER_FREE for g in capped for block in g.cell for op, _ in block)


def test_frozen_and_random_arms_choose_without_a_search():
    chosen = choose_all(smoke_cfg(), Plan((4, 5), (100,), draws=2, arms=("frozen", "random")), "/nonexistent")
    assert {s: sorted(row["arms"]) for s, row in chosen.items()} == {4: ["frozen", "random"], 5: ["frozen", "random"]}
    assert chosen[4]["arms"]["frozen"] != chosen[5]["arms"]["frozen"] and len(chosen[4]["arms"]["random"]) == 2


@pytest.mark.parametrize("stored", ["by label", "in order (older arms.json)"])
def test_a_rerun_reuses_the_supernet_scores_of_a_finished_study(tmp_path, stored):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    rows = [{"label": label, "genotype": {"path": [i]}, "test_miou": [0.1 * i, 0.1 * i]}
            for i, label in enumerate("abc")]
    ranking = {"search_seed": 10, "checkpoint": str(checkpoint), "supernet_miou": [0.3, 0.2, 0.1]}
    if stored == "by label":
        ranking["scores"] = {"a": 0.3, "b": 0.2, "c": 0.1}
    (tmp_path / "arms.json").write_text(json.dumps({"architectures": rows + rows[:1], "supernet_ranking": [ranking]}))
    assert previous_scores(str(tmp_path)) == {10: (str(checkpoint), {"a": 0.3, "b": 0.2, "c": 0.1})}
    chosen = {10: {"pipeline": {"checkpoint": str(checkpoint)}}}
    # every score is there: nothing is scored again (no Ray), tau is recomputed against the new truth
    (result,) = supernet_ranking(smoke_cfg(), chosen, list(reversed(rows)), str(tmp_path))
    assert result["supernet_miou"] == [0.1, 0.2, 0.3] and result["reused"] == 3
    assert result["kendall_tau"] == pytest.approx(-1.0)


def test_summary_scores_each_arm_by_the_mean_over_evaluation_seeds_and_draws():
    g = {k: {"cell": [], "path": [i]} for i, k in enumerate("pdrxy")}
    chosen = {0: {"arms": {"pipeline": [g["p"]], "decoded": [g["d"]], "random": [g["x"], g["y"]]}},
              1: {"arms": {"pipeline": [g["p"]], "decoded": [g["r"]], "random": [g["x"], g["y"]]}}}
    test = {"p": (0.40, 0.42), "d": (0.30, 0.32), "r": (0.36, 0.34), "x": (0.20, 0.22), "y": (0.30, 0.28)}
    metrics = {(k, s): {"test_miou": v[i], "val_miou": v[i] + 0.1} for k, v in test.items()
               for i, s in enumerate((100, 101))}

    def label(genotype):
        return "pdrxy"[genotype["path"][0]]

    scores = arm_scores(chosen, metrics, [100, 101], label)
    assert scores["pipeline"] == {0: pytest.approx(0.41), 1: pytest.approx(0.41)}
    assert scores["random"][0] == pytest.approx(0.25) and scores["decoded"][1] == pytest.approx(0.35)
    result = summarize_arms(chosen, metrics, [100, 101], label)
    pair = next(p for p in result["paired_test_miou"] if (p["a"], p["b"]) == ("pipeline", "decoded"))
    assert pair["mean"] == pytest.approx(((0.41 - 0.31) + (0.41 - 0.35)) / 2) and pair["wins"] == 2
    assert result["arms"]["pipeline"]["val_miou"] == pytest.approx(0.51)
    assert result["yardstick"]["random"]["architectures"] == 2
    search_seeds = {"search_seeds": [0, 1], "eval_seeds": [100, 101]}
    for shown in ({**result, **search_seeds}, json.loads(json.dumps({**result, **search_seeds}))):  # as read back
        text = arms_text(shown)
        assert "| pipeline | 0.410 | 0.510 | 0.410 0.410 |" in text and "pipeline - decoded" in text
        assert "| decoded | 0.330 | 0.430 | 0.310 0.350 |" in text
    figure = yardstick_figure({**result, **search_seeds})
    points = {c.get_label(): {tuple(p) for p in c.get_offsets().tolist()} for c in figure.axes[0].collections}
    assert points["pipeline"] == {(0.40, 0.42)} and points["random"] == {(0.20, 0.22), (0.30, 0.28)}


@pytest.mark.slow
@pytest.mark.cluster
def test_the_six_arms_run_end_to_end_on_the_smoke_config(ray_cluster, tmp_path):
    """validate.py --config on the smoke chain: every arm chooses at two search seeds, every choice is retrained
    at two evaluation seeds on the test split, and arms.json holds the comparison."""
    from local_cluster import cluster_env

    out = tmp_path / "arms"
    cmd = [sys.executable, "experiments/validate.py", "--config", "experiments/configs/smoke.yaml",
           "--search-seeds", "0,1", "--draws", "1", "--out", str(out), "--eval-override", "retrain.epochs=10",
           "--arms", "pipeline,decoded,frozen,random-search,random,single",
           "selection.top_k=2",
           "selection.candidates=sampled", "runtime.progress_seconds=0"]
    proc = subprocess.run(cmd, env={**cluster_env(), "RAY_ADDRESS": ray_cluster.gcs_address}, capture_output=True,
                          text=True, timeout=1500, cwd=ROOT)
    stdout = proc.stdout
    assert proc.returncode == 0, stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "arms.json").read_text())
    assert set(result["arms"]) == {"pipeline", "decoded", "frozen", "random-search", "random", "single"}
    assert result["eval_seeds"] == [100, 101] and result["search_seeds"] == [0, 1]
    floor = constant_predictor_miou(result["config"], "report")
    assert all(len(r["test_miou"]) == 2 and all(floor < v <= 1 for v in r["test_miou"])
               for r in result["architectures"])
    assert {p["n"] for p in result["paired_test_miou"]} == {2}
    for seed in (0, 1):
        choice = json.loads((out / "searches" / f"pipeline-seed{seed}" / "final" / "choice.json").read_text())
        assert choice["candidates"] == 2 and choice["selection_seconds"] > 0
        assert result["stages"][str(seed)]["random-search"]["candidates"] >= 2
        # The single arm: one trial at the config's own arch lr (the smoke sweep has two), its filter at least as
        # wide as the pipeline's.
        single = out / "searches" / f"single-seed{seed}"
        facts = json.loads((single / "final" / "single_search.json").read_text())
        assert facts["config"] == {} and len(list(single.glob("trial-*"))) == 1
        assert result["stages"][str(seed)]["single"]["candidates"] >= 2
    assert len(result["supernet_ranking"]) == 2 and "pipeline - random-search" in stdout
    assert (out / "arms.png").read_bytes()[:4] == b"\x89PNG" and (out / "yardstick.png").read_bytes()[:4] == b"\x89PNG"
    runs = sorted((out / "runs" / "runs").glob("retrain-*"))
    assert runs and all(r.name.endswith(("seed100", "seed101")) for r in runs)
    # The evaluation retrains ran with --eval-override's epochs, the short retrains of both filters with the config's.
    assert result["config"]["retrain"]["epochs"] == 8 and result["evaluation_retrain"]["epochs"] == 10
    assert all((r / "epochs" / "epoch-0010.json").is_file() for r in runs)
    evaluated = {**result["config"], "retrain": result["evaluation_retrain"]}
    in_process = result["config"]["selection"]["in_process"]
    names = {run_name(Genotype.from_dict(r["genotype"]), seed, trial_config(evaluated, seed, "check", in_process))
             for r in result["architectures"] for seed in (100, 101)}
    assert {r.name for r in runs} == names
    short = sorted((out / "random-search").glob("seed*/selection/**/retrain-*-seed*"))
    assert short and all(r.name.split("-")[2] not in {p.name.split("-")[2] for p in runs} for r in short)


def test_validate_refuses_an_arm_study_without_out(capsys):
    proc = subprocess.run([sys.executable, "experiments/validate.py", "--config", "experiments/configs/smoke.yaml"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "needs --out" in proc.stderr and "Traceback" not in proc.stderr
