"""experiments/studies/proxy_fidelity.py: reading a validation and scoring a short-retrain proxy against it (no Ray)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "studies"))

import proxy_fidelity  # noqa: E402

ROWS = [{"label": f"a{i}", "genotype": {}, "full": full} for i, full in enumerate([0.20, 0.25, 0.30, 0.22])]


@pytest.mark.parametrize("short, mode, tau, picked", [
    ({"a0": 0.1, "a1": 0.2, "a2": 0.3, "a3": 0.15}, "max", 1.0, "a2"),  # the same order: the best is picked
    ({"a0": 0.3, "a1": 0.2, "a2": 0.1, "a3": 0.25}, "max", -1.0, "a0"),  # reversed: the worst is picked
    ({"a0": 0.1, "a1": 0.2, "a2": float("nan"), "a3": 0.15}, "max", 1.0, "a1"),  # a failed one is never picked
    ({"a0": 1.3, "a1": 1.2, "a2": 1.1, "a3": 1.25}, "min", 1.0, "a2"),  # a loss: lower is better
    ({"a0": 1.3, "a1": 1.2, "a2": float("nan"), "a3": 1.25}, "min", 1.0, "a1"),
])
def test_fidelity_scores_the_proxy_against_the_full_retrains(short, mode, tau, picked):
    out = proxy_fidelity.fidelity(ROWS, short, mode)
    assert math.isclose(out["kendall_tau"], tau) and out["picked"] == picked
    others = [r["full"] for r in ROWS if r["label"] != picked]
    assert out["picked_percentile"] == 100 * sum(v < out["picked_full"] for v in others) / len(others)


def test_reads_a_validation_and_refuses_what_is_not_one(tmp_path):
    from orchestrator.sweep.validation import ValidationError

    good = tmp_path / "validation.json"
    good.write_text(json.dumps({"architectures": [{"label": r["label"], "genotype": {}, "mean": r["full"]}
                                                  for r in ROWS]}))
    assert [r["full"] for r in proxy_fidelity.read_architectures(str(good))] == [r["full"] for r in ROWS]
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValidationError, match="not a validation.json"):
        proxy_fidelity.read_architectures(str(bad))
