"""Retrain runs are named by genotype, budget and seed (`orchestrator.sweep.retrain_trials.run_name`): a rerun of a
study reuses a finished run only when everything its result depends on is the same, and reuses it whatever the
placement (``retrain.custom_resources``) says."""

from __future__ import annotations

import pytest

from orchestrator.config import load_config, with_overrides
from orchestrator.sweep import budget
from orchestrator.sweep.retrain_trials import run_name
from search_space import Genotype

GENOTYPE = Genotype.from_dict({"cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                                        [["dil_conv_3x3", 1], ["sep_conv_3x3", 2]]], "path": [0, 1, 1]})
BASE = load_config("experiments/configs/smoke.yaml")


@pytest.mark.parametrize("overrides, same", [
    ({"retrain.custom_resources": {"spot": 1}}, True),     # where it runs
    ({"runtime.seed": 7}, True),                            # the run's seed is the name's own part
    ({"retrain.epochs": 9}, False),
    ({"retrain.lr": 0.01}, False),
    ({"retrain.filter_multiplier": 3}, False),
    ({"data.report_options": {"size": 64}}, False),
])
def test_a_run_name_changes_exactly_with_what_the_result_depends_on(overrides, same):
    changed = with_overrides(BASE, overrides, "test")
    assert (run_name(GENOTYPE, 0, changed) == run_name(GENOTYPE, 0, BASE)) is same


def test_seeds_and_genotypes_name_different_runs():
    other = Genotype.from_dict({**GENOTYPE.to_dict(), "path": [0, 0, 1]})
    assert len({run_name(GENOTYPE, 0, BASE), run_name(GENOTYPE, 1, BASE), run_name(other, 0, BASE)}) == 3


@pytest.mark.parametrize("overrides, same", [
    ({"storage_path": "/elsewhere"}, True),                 # where it lives
    ({"search.arch_lr": 0.01}, False),
    ({"search_space.head_mix": "reach"}, False),
    ({"data.options": {"size": 64, "task": "context"}}, False),
])
def test_a_study_search_is_named_by_its_whole_config(overrides, same):
    """A study's search (`orchestrator.sweep.budget`) rerun with another setting must not resume the old one."""
    changed = with_overrides(BASE, overrides, "test")
    assert (budget.run_name(64, 0, changed) == budget.run_name(64, 0, BASE)) is same
    assert budget.run_name(64, 0, BASE) != budget.run_name(64, 1, BASE) != budget.run_name(128, 1, BASE)
