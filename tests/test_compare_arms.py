"""experiments/studies/compare_arms.py: arms of two arm studies paired by search seed, and the studies it refuses
to compare (scored another way, an arm or folder that is not there, a malformed --arm). Files only, no Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestrator.config import config_to_dict, load_config
from orchestrator.sweep.arms import ArmsError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "studies"))

import compare_arms  # noqa: E402

CONFIG = ROOT / "experiments" / "configs" / "learning.yaml"


def study(folder: Path, scores: dict[str, dict[int, list[float]]], overrides: list[str] | None = None,
          eval_overrides: list[str] | None = None, eval_seeds=(100, 101)) -> str:
    """An arms.json as `experiments/validate.py --config` writes it: ``scores[arm][search seed]`` is one
    architecture's test mIoU at each evaluation seed (val: test + 0.01)."""
    cfg = load_config(CONFIG, overrides or [])
    evaluation = load_config(CONFIG, (overrides or []) + (eval_overrides or []))
    rows = [{"arm": arm, "search_seed": seed, "test_miou": values, "val_miou": [v + 0.01 for v in values]}
            for arm, per in scores.items() for seed, values in per.items()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arms.json").write_text(json.dumps({
        "eval_seeds": list(eval_seeds), "config": config_to_dict(cfg), "architectures": rows,
        "evaluation_retrain": config_to_dict(evaluation)["retrain"], "arms": {arm: {} for arm in scores}}))
    return str(folder)


def test_arms_of_two_studies_are_paired_on_the_search_seeds_both_have(tmp_path):
    # The searches differ (a departure, more steps): only how the architectures were scored has to match.
    reach = study(tmp_path / "reach", {"decoded": {10: [0.30, 0.32], 11: [0.28, 0.28], 12: [0.40, 0.40]}},
                  ["search.epochs=10", "search_space.head_mix=reach"])
    faithful = study(tmp_path / "faithful", {"decoded": {10: [0.25, 0.27], 11: [0.29, 0.29]},
                                             "random-search": {10: [0.2, 0.2], 11: [0.3, 0.3]}})
    result = compare_arms.compare([f"reach={reach}:decoded", f"faithful={faithful}:decoded",
                                   f"rs={faithful}:random-search"])
    assert result["search_seeds"] == [10, 11]
    assert result["arms"]["reach"]["test_miou"] == pytest.approx((0.31 + 0.28) / 2)
    assert result["arms"]["reach"]["val_miou"] == pytest.approx((0.31 + 0.28) / 2 + 0.01)
    first = result["paired_test_miou"][0]
    assert (first["a"], first["b"], first["n"], first["wins"]) == ("reach", "faithful", 2, 1)
    assert first["differences"] == pytest.approx([0.05, -0.01])
    assert [(p["a"], p["b"]) for p in result["paired_test_miou"]] == [("reach", "faithful"), ("reach", "rs"),
                                                                      ("faithful", "rs")]


@pytest.mark.parametrize("other, words", [
    ({"eval_overrides": ["retrain.epochs=20"]}, "retrain.epochs (20 against 40)"),
    ({"overrides": ["data.report_options={size: 128, cache: true}"]}, "roles.report.size (128 against 512)"),
    ({"eval_seeds": (100, 102)}, "eval_seeds [100, 102], expected [100, 101]"),
])
def test_studies_scored_another_way_are_refused_naming_what_differs(tmp_path, other, words):
    a = study(tmp_path / "a", {"decoded": {10: [0.3, 0.3]}})
    b = study(tmp_path / "b", {"decoded": {10: [0.3, 0.3]}}, **other)
    with pytest.raises(ArmsError, match=r"--arm \(against .*a\) .*b") as caught:
        compare_arms.compare([f"x={a}:decoded", f"y={b}:decoded"])
    assert words in str(caught.value)


@pytest.mark.parametrize("specs, words", [
    (["x={a}:decodd", "y={a}:decoded"], "has no arm 'decodd'; it has decoded"),
    (["x={a}:decoded", "y={tmp}/nowhere:decoded"], "no arms.json there"),
    (["x={a}", "y={a}:decoded"], "expected NAME=FOLDER:ARM"),
    (["{a}:decoded", "y={a}:decoded"], "expected NAME=FOLDER:ARM"),
    (["x={a}:decoded", "x={a}:decoded"], "at least two arms with distinct names"),
    (["x={a}:decoded"], "at least two arms with distinct names"),
])
def test_a_bad_arm_is_refused_with_what_was_expected(tmp_path, specs, words):
    a = study(tmp_path / "a", {"decoded": {10: [0.3, 0.3]}})
    with pytest.raises(ArmsError) as caught:
        compare_arms.compare([s.format(a=a, tmp=tmp_path) for s in specs])
    assert words in str(caught.value)


def test_the_command_prints_the_table_writes_json_and_exits_2_on_bad_input(tmp_path, capsys):
    a = study(tmp_path / "a", {"decoded": {10: [0.3, 0.3], 11: [0.2, 0.2]}, "random": {10: [0.1, 0.1],
                                                                                       11: [0.2, 0.1]}})
    out = tmp_path / "out" / "cmp.json"
    assert compare_arms.main(["--arm", f"d={a}:decoded", "--arm", f"r={a}:random", "--out", str(out)]) == 0
    assert "| d - r | 0.1250 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["search_seeds"] == [10, 11]
    with pytest.raises(SystemExit) as caught:
        compare_arms.main(["--arm", f"d={a}:decoded", "--arm", f"r={a}:nothing"])
    assert caught.value.code == 2 and "'nothing'; it has decoded, random" in capsys.readouterr().err
