"""Auto-DeepLab on Ray, from Python: the names below are the public API (the commands, ``adl <command>``, are
built on them). Imported on first use, so ``import orchestrator`` is quick and imports neither torch nor Ray.

    from orchestrator import evaluate, load_config, load_run, predict, run_experiment

    cfg = load_config("experiments/configs/smoke.yaml", ["search.epochs=4"])   # typed, validated
    summary = run_experiment(cfg, "results")      # Ray: sweep, decode, retrain (as ``adl search``)
    run = load_run("results/smoke-<hash>")         # the retrained network, checkpoint verified; no Ray from here
    mask = predict(run, "street.png")              # class indices at the image's size
    scores = evaluate(run)                         # mIoU and per-class IoU on the report split

- Configs: `load_config`, `config_from_dict`, `save_config`, `ExperimentConfig` (`orchestrator.config`).
- Running (needs Ray; joins RAY_ADDRESS or a running cluster, else starts a local one): `run_experiment`
  (`orchestrator.commands.search`).
- Using a retrained network (no Ray): `load_run`, `LoadedRun`, `predict`, `evaluate`, `export`, and `save_run`
  with `build_network` for a network trained elsewhere (`orchestrator.inference`).
- Reading an experiment folder (no Ray): `analyze_experiment` (`orchestrator.analysis.cli.analyze`; the module
  ``orchestrator.analyze`` is the command ``python -m orchestrator.analyze``).

docs/python-api.md has a runnable example.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_API: dict[str, tuple[str, str]] = {
    "ExperimentConfig": ("orchestrator.config", "ExperimentConfig"),
    "config_from_dict": ("orchestrator.config", "config_from_dict"),
    "load_config": ("orchestrator.config", "load_config"),
    "save_config": ("orchestrator.config", "save_config"),
    "run_experiment": ("orchestrator.commands.search", "run_experiment"),
    "LoadedRun": ("orchestrator.inference.run", "LoadedRun"),
    "build_network": ("orchestrator.inference.run", "build_network"),
    "load_run": ("orchestrator.inference.run", "load_run"),
    "save_run": ("orchestrator.inference.run", "save_run"),
    "predict": ("orchestrator.inference.predict", "predict"),
    "evaluate": ("orchestrator.inference.evaluate", "evaluate_run"),
    "export": ("orchestrator.inference.export", "export_run"),
    "analyze_experiment": ("orchestrator.analysis.cli", "analyze"),
}
"""Public name -> (module, name there)."""

__all__ = [
    "ExperimentConfig", "LoadedRun", "analyze_experiment", "build_network", "config_from_dict", "evaluate", "export",
    "load_config", "load_run", "predict", "run_experiment", "save_config", "save_run",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from orchestrator.analysis.cli import analyze as analyze_experiment
    from orchestrator.commands.search import run_experiment
    from orchestrator.config import ExperimentConfig, config_from_dict, load_config, save_config
    from orchestrator.inference.evaluate import evaluate_run as evaluate
    from orchestrator.inference.export import export_run as export
    from orchestrator.inference.predict import predict
    from orchestrator.inference.run import LoadedRun, build_network, load_run, save_run


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
