"""experiments/studies/learning.py without Ray: whether the seeds' paths agree, and the chance level read from an
arm study (refused unless that study retrained the same way at the same evaluation seeds)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from orchestrator.config import config_to_dict, load_config
from orchestrator.sweep.arms import ArmsError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "studies"))

import learning  # noqa: E402

CONFIG = ROOT / "experiments" / "configs" / "learning.yaml"


@pytest.mark.parametrize("paths, identical, agreement", [
    ([[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]], 3, 1.0),
    ([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 2, 3]], 0, (3 / 4 + 1 / 4 + 1 / 4) / 3),
    ([[0, 1, 1, 1]], 0, math.nan),
])
def test_agreement_counts_identical_pairs_and_shared_layers(paths, identical, agreement):
    out = learning.agreement(paths)
    assert out["identical_pairs"] == identical and out["pairs"] == len(paths) * (len(paths) - 1) // 2
    share = out["layer_agreement"]
    assert (math.isnan(share) and math.isnan(agreement)) or share == pytest.approx(agreement)


def arms_file(tmp_path: Path, overrides: list[str] | None = None, eval_seeds=(100, 101),
              eval_overrides: list[str] | None = None) -> str:
    """An arms.json as `experiments/validate.py --config` writes it: two random draws and one other arm."""
    cfg = load_config(CONFIG, overrides or [])
    evaluation = load_config(CONFIG, (overrides or []) + (eval_overrides or []))
    rows = [{"arm": "random", "test_miou": [0.20, 0.24]}, {"arm": "random", "test_miou": [0.30, 0.30]},
            {"arm": "pipeline", "test_miou": [0.9, 0.9]}]
    path = tmp_path / "arms.json"
    path.write_text(json.dumps({"eval_seeds": list(eval_seeds), "config": config_to_dict(cfg), "architectures": rows,
                                "evaluation_retrain": config_to_dict(evaluation)["retrain"]}))
    return str(path)


def test_the_chance_level_is_each_random_draws_mean_over_the_evaluation_seeds(tmp_path):
    cfg = load_config(CONFIG)
    # The search may differ (here: its epochs); only what the retrain reads has to match.
    chance = learning.read_chance(arms_file(tmp_path, ["search.epochs=10"]), cfg, [100, 101])
    assert chance == pytest.approx([0.22, 0.30])
    result = {"budgets": [{"arch_steps": 64, "runs": [{"test_miou": [0.30, 0.34]}, {"test_miou": [0.36, 0.36]}]}]}
    learning.against_chance(result, chance)
    diff = result["budgets"][0]["decoded_minus_random"]
    assert diff["mean"] == pytest.approx(0.34 - 0.26) and diff["n_a"] == 2 and diff["n_b"] == 2
    assert result["random_test_miou"] == chance


def test_the_chance_level_reads_the_studys_evaluation_retrain_not_its_choosing_one(tmp_path):
    # A study that chose with 20-epoch retrains but evaluated with the config's (--eval-override) is comparable.
    cfg = load_config(CONFIG)
    path = arms_file(tmp_path, ["retrain.epochs=20"], eval_overrides=[f"retrain.epochs={cfg.retrain.epochs}"])
    assert learning.read_chance(path, cfg, [100, 101]) == pytest.approx([0.22, 0.30])


@pytest.mark.parametrize("overrides, eval_seeds, eval_overrides, words", [
    (["retrain.epochs=20"], (100, 101), [], "evaluation retrains"),
    (["data.report_options={size: 128, cache: true}"], (100, 101), [], "evaluation retrains"),
    ([], (100, 101), ["retrain.batch_size=8"], "evaluation retrains"),
    ([], (100, 102), [], "eval_seeds [100, 102], expected [100, 101]"),
])
def test_a_chance_level_from_another_retrain_or_other_seeds_is_refused(tmp_path, overrides, eval_seeds,
                                                                       eval_overrides, words):
    path = arms_file(tmp_path, overrides, eval_seeds, eval_overrides)
    with pytest.raises(ArmsError, match=r"--chance .*arms\.json") as caught:
        learning.read_chance(path, load_config(CONFIG), [100, 101])
    assert words in str(caught.value)
