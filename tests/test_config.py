"""The typed config: defaults, YAML loading, overrides, and every kind of refusal naming file and key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from orchestrator.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    derive_name,
    load_config,
    save_config,
    valid_keys,
    with_overrides,
)

CONFIGS = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.yaml"))


def write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_papers():
    cfg = ExperimentConfig()
    s = cfg.search
    assert (cfg.search_space.layers, cfg.search_space.blocks, cfg.search_space.filter_multiplier) == (12, 5, 8)
    assert (s.epochs, s.warmup_epochs, s.lr, s.lr_min, s.momentum, s.weight_decay) == (40, 20, 0.025, 0.001,
                                                                                       0.9, 3e-4)
    assert (s.arch_lr, s.arch_weight_decay) == (3e-3, 1e-3)
    assert (cfg.data.crop_size, cfg.data.batch_size) == (321, 2)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path: Path, tmp_path: Path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_yaml_and_overrides(tmp_path: Path):
    path = write(tmp_path, {"search": {"epochs": 4, "warmup_epochs": 1}, "data": {"options": {"size": 8}}})
    cfg = load_config(path, ["search.arch_lr=1e-3", "scaling.num_workers=1", "data.options={size: 4}"])
    assert cfg.search.arch_lr == 1e-3 and isinstance(cfg.search.arch_lr, float)  # "1e-3" is a string in YAML 1.1
    assert cfg.scaling.num_workers == 1 and cfg.data.options == {"size": 4} and cfg.search.epochs == 4
    assert with_overrides(cfg, {"search.lr": 0.1}).search.lr == 0.1


def test_an_empty_file_is_the_defaults(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == ExperimentConfig()


@pytest.mark.parametrize("data, key, suggestion", [
    ({"search": {"arch_lrr": 0.1}}, "search.arch_lrr", "search.arch_lr"),
    ({"serch": {}}, "serch", "search"),
    ({"arch_lr": 0.1}, "arch_lr", "search.arch_lr"),  # a right key in the wrong place
    ({"data": {"crop": 64}}, "data.crop", "data.crop_size"),
])
def test_unknown_keys_are_refused_with_file_key_and_suggestion(tmp_path: Path, data, key, suggestion):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and f"did you mean '{suggestion}'" in message


def test_unknown_override_key_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"unknown key 'search\.warmup'.*search\.warmup_epochs"):
        load_config(write(tmp_path, {}), ["search.warmup=3"])


@pytest.mark.parametrize("data, key", [
    ({"search_space": {"filter_multiplier": 0}}, "search_space.filter_multiplier"),
    ({"search_space": {"ops": "fancy"}}, "search_space.ops"),
    ({"search_space": {"stem_channels": [8, 8]}}, "search_space.stem_channels"),
    ({"search_space": {"head": "fpn"}}, "search_space.head"),
    ({"search_space": {"head_mix": "mean"}}, "search_space.head_mix"),
    ({"selection": {"path": "greedy"}}, "selection.path"),
    ({"selection": {"top_k": 0}}, "selection.top_k"),
    ({"selection": {"candidates": "random"}}, "selection.candidates"),
    ({"selection": {"temperature": 0}}, "selection.temperature"),
    ({"selection": {"path_candidates": 0}}, "selection.path_candidates"),
    ({"selection": {"recalibration_batches": -1}}, "selection.recalibration_batches"),
    ({"selection": {"reduction_factor": 1}}, "selection.reduction_factor"),
    ({"validation": {"random": -1}}, "validation.random"),
    ({"validation": {"seeds": 0}}, "validation.seeds"),
    ({"search": {"epochs": 4, "warmup_epochs": 4}}, "search.warmup_epochs"),
    ({"search": {"lr": 0}}, "search.lr"),
    ({"search": {"lr": 0.01, "lr_min": 0.1}}, "search.lr_min"),
    ({"search": {"arch_lr": -1.0}}, "search.arch_lr"),
    ({"search": {"arch_betas": [0.9]}}, "search.arch_betas"),
    ({"search": {"epochs": 2.5}}, "search.epochs"),
    ({"search": {"lr": "fast"}}, "search.lr"),
    ({"search": {"class_weights": "yes"}}, "search.class_weights"),
    ({"data": {"crop_size": 31}}, "data.crop_size"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"data": {"options": [1, 2]}}, "data.options"),
    ({"scaling": {"num_workers": 0}}, "scaling.num_workers"),
    ({"scaling": {"backend": "nccl"}}, "scaling.backend"),
    ({"runtime": {"bf16": True}}, "runtime.bf16"),
    ({"runtime": {"checkpoint_levels": [0, 4]}}, "runtime.checkpoint_levels"),
    ({"runtime": {"checkpoint_levels": [1, 1]}}, "runtime.checkpoint_levels"),
    ({"runtime": {"checkpoint_levels": True}}, "runtime.checkpoint_levels"),
    ({"runtime": {"recompute_units": "yes"}}, "runtime.recompute_units"),
    ({"tune": {"mode": "best"}}, "tune.mode"),
    ({"tune": {"trial_cpus": 0}}, "tune.trial_cpus"),
    ({"tune": {"param_space": {"search.arch_lr": {"loguniform": [0, 1]}}}}, "tune.param_space.search.arch_lr"),
    ({"tune": {"param_space": {"search.arch_lr": {"normal": [0, 1]}}}}, "tune.param_space.search.arch_lr"),
    ({"tune": {"param_space": {"search.arch_lrr": {"grid": [1]}}}}, "search.arch_lrr"),
    ({"retrain": {"lr": 0}}, "retrain.lr"),
    ({"search": 3}, "search"),
])
def test_bad_values_are_refused_naming_file_and_key(tmp_path: Path, data, key):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_level_and_crop_limits_follow_the_search_space():
    """The deepest level and the largest downsample rate come from search_space, not retyped in the config."""
    from search_space.genotypes import RATES
    from search_space.trellis import NUM_LEVELS

    cfg = config_from_dict({"runtime": {"checkpoint_levels": list(range(NUM_LEVELS))},
                            "data": {"crop_size": RATES[-1]}, "retrain": {"crop_size": RATES[-1]}})
    assert cfg.runtime.checkpoint_levels == list(range(NUM_LEVELS))
    with pytest.raises(ConfigError, match=rf"to {NUM_LEVELS - 1} \(stride {RATES[-1]}\)"):
        config_from_dict({"runtime": {"checkpoint_levels": [NUM_LEVELS]}})
    with pytest.raises(ConfigError, match=rf"retrain.crop_size = {RATES[-1] - 1}: expected at least {RATES[-1]}"):
        config_from_dict({"retrain": {"crop_size": RATES[-1] - 1}})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_hash_and_derived_name_are_stable_and_ignore_where_the_run_lives():
    a = config_from_dict({"search": {"epochs": 4, "warmup_epochs": 1}})
    b = config_from_dict({"search": {"warmup_epochs": 1, "epochs": 4}, "storage_path": "/elsewhere"})
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 8
    assert config_hash(a) != config_hash(with_overrides(a, ["search.arch_lr=0.01"]))
    assert derive_name(a, "experiments/configs/smoke.yaml") == f"smoke-{config_hash(a)}"
    assert derive_name(with_overrides(a, ["name=mine"]), "x.yaml") == "mine"


def test_a_key_added_later_keeps_the_names_of_runs_made_before_it():
    """search_space.head_mix came after runs were named: at its default it leaves the hash as it was."""
    cfg = config_from_dict({"search": {"epochs": 4, "warmup_epochs": 1}})
    data = {k: v for k, v in config_to_dict(cfg).items() if k not in ("name", "storage_path")}
    del data["search_space"]["head_mix"], data["runtime"]["progress_seconds"]
    before = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    assert config_hash(cfg) == before
    assert config_hash(with_overrides(cfg, ["search_space.head_mix=reach"])) != before


def test_to_dict_round_trips_and_every_key_is_listed():
    cfg = config_from_dict({"tune": {"param_space": {"search.warmup_epochs": {"grid": [1, 2]}}}})
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert "search.arch_lr" in valid_keys() and "name" in valid_keys()


CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(str(path))
    assert cfg.search.warmup_epochs < cfg.search.epochs
    if cfg.tune.scheduler == "asha":
        assert cfg.tune.grace_period <= cfg.search.epochs


def test_a_local_ray_fits_the_default_trial_on_this_machine(monkeypatch):
    """make search on a 2-core machine: a local Ray must hold a trial of the default config (its 2 one-CPU workers
    plus the trial driver's CPU share), since nothing else is there to join."""
    import os

    import ray

    from orchestrator import cli
    from orchestrator.config import load_config

    calls = []

    def fake_init(address=None, **kwargs):
        calls.append((address, kwargs))
        if address == "auto":
            raise ConnectionError("no running cluster")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cli.connect_ray()
    (_, started), = [c for c in calls if c[0] is None]
    assert started["dashboard_host"] == "127.0.0.1"
    cfg = load_config(CONFIGS / "default.yaml")
    trial = cfg.tune.trial_cpus + cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    assert started["num_cpus"] >= trial


@pytest.mark.parametrize(("grace", "epochs", "expected"), [(12, 5, 5), (2, 5, 2), (5, 5, 5)])
def test_asha_waits_at_most_the_searchs_epochs(grace, epochs, expected):
    """A shortened search (learning.yaml with search.epochs=5, grace_period 12) keeps its sweep: Ray's ASHA
    refuses grace_period > max_t with a bare assertion."""
    from orchestrator.sweep.tune_driver import asha_grace_period

    cfg = config_from_dict({"search": {"epochs": epochs, "warmup_epochs": 1}, "tune": {"grace_period": grace}})
    assert asha_grace_period(cfg) == expected
