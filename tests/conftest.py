"""Shared fixtures: one local Ray for the whole test session, and a tiny search config.

Ray start-up costs 6-11 s and a TorchTrainer ~20 s more (RAY_NOTES.md), so every test that needs Ray shares
`ray_session`. Token auth is disabled before Ray is imported, so the tests write nothing to ``~/.ray``.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from orchestrator.config import ExperimentConfig, config_from_dict  # noqa: E402

TINY = {
    "search_space": {"layers": 3, "blocks": 2, "filter_multiplier": 2, "stem_channels": [8, 8, 16]},
    "data": {"dataset": "synthetic", "crop_size": 32, "batch_size": 2, "val_batch_size": 4,
             "options": {"size": 16}, "val_options": {"size": 8}},
    "search": {"epochs": 3, "warmup_epochs": 1},
    "scaling": {"num_workers": 2, "cpus_per_worker": 1},
    "runtime": {"max_failures": 0, "keep_checkpoints": 2},
}
"""A supernet of a few hundred kB on 32 px synthetic images: 2 steps per epoch on 2 workers, seconds each."""


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (4 logical CPUs) for the session; reuses one that is already running."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """The tiny search as a plain config dict (a fresh copy; module-scoped fixtures can use it too)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_config(tiny_settings, tmp_path) -> ExperimentConfig:
    """The tiny search (3 epochs, warmup 1, 2 CPU workers) storing its runs under this test's tmp_path."""
    return config_from_dict({**tiny_settings, "storage_path": str(tmp_path / "results")}, source="tiny_config")
