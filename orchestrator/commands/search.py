"""Run the Auto-DeepLab search on Ray: the Tune sweep, then decode and retrain the best trial.

    adl search --config experiments/configs/default.yaml [--resume] [key=value ...]
    adl search --config experiments/configs/smoke.yaml search.epochs=4 tune.num_samples=2
    adl search --config experiments/configs/smoke.yaml --no-tune              # one search, no Tune
    adl search --config experiments/configs/default.yaml --print-config       # what would run, and why
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        adl search --config experiments/configs/smoke.yaml --storage-path s3://bucket/adl

``python experiments/search.py`` takes the same arguments. Connects to the running Ray cluster (``ray job submit``
sets RAY_ADDRESS; else a cluster started on this machine), otherwise starts a local Ray. Results go to
``<storage-path>/<name>/``; the name is derived from the config file's stem and the config hash (or ``--name``),
never the clock, so ``--resume`` finds the sweep again. The config, the dataset and the storage path are checked
before Ray starts.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from orchestrator.cli import command_parser, connect_ray, print_config, run_arguments, storage_label, user_errors
from orchestrator.io.paths import absolute
from orchestrator.io.storage import check_writable, join

if TYPE_CHECKING:  # the config package imports torch (through search_space): not for --help
    from orchestrator.config import ExperimentConfig


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, prog)
    run_arguments(parser, config_help="YAML experiment config (experiments/configs/*.yaml)",
                  name_help="experiment name; default: <config stem>-<config hash>",
                  overrides_example="search.epochs=4")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep and its trials")
    parser.add_argument("--no-tune", action="store_true", help="one search with Ray Train, no Tune sweep")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the sweep and the best genotype")
    parser.add_argument("--stop-at-epoch", type=int, help="--no-tune: end after this many epochs; run again to go on")
    return parser.parse_args(argv)


def preflight(cfg: ExperimentConfig, storage: str, retrain: bool, storage_option: str | None = None) -> None:
    """What is checked before Ray starts: the dataset (and the retrain's, when the chain retrains), then the
    storage path (reachable and writable; a local folder is created)."""
    from orchestrator.data.preflight import check_data, check_retrain_data

    check_data(cfg)
    if retrain:
        check_retrain_data(cfg)
    check_writable(storage, storage_label(storage_option))


def run_experiment(config: ExperimentConfig | str | os.PathLike, storage_path: str | None = None,
                   name: str | None = None, *, resume: bool = False, retrain: bool = True,
                   address: str | None = None) -> dict:
    """The whole chain from Python, as ``adl search`` runs it: checks, Ray, sweep, decode, retrain.

    Args:
        config: an `ExperimentConfig`, or the path of a YAML config.
        storage_path: where the experiment folder goes; default: the config's ``storage_path``.
        name: the experiment folder's name; default: ``<config stem>-<config hash>``.
        resume: continue the interrupted sweep of that name.
        retrain: retrain the chosen architecture (False: stop after the sweep).
        address: the Ray cluster; default: RAY_ADDRESS, a running cluster, else a local Ray.

    Returns:
        The final summary (``final/summary.json``'s content; with ``retrain=False`` the best trial).
    """
    from orchestrator.config import ExperimentConfig, derive_name, load_config
    from orchestrator.sweep.chain import run_experiment as run_chain

    path = None if isinstance(config, ExperimentConfig) else config
    cfg = load_config(path) if path is not None else config
    storage, name = storage_path or cfg.storage_path, name or derive_name(cfg, path)
    preflight(cfg, storage, retrain, storage_path)
    connect_ray(address)
    return run_chain(cfg, storage, name, resume=resume, retrain=retrain)


def single_search(cfg, storage: str, name: str, stop_at_epoch: int | None) -> None:
    from orchestrator.train.trainers import read_epochs, run_dir, run_single_search

    result = run_single_search(cfg, storage, name, stop_at_epoch=stop_at_epoch)
    if result.error:
        raise result.error
    directory = run_dir(storage, name)
    epochs = read_epochs(directory)
    print(f"\nrun folder:  {directory}")
    print(f"checkpoint:  {result.checkpoint.path if result.checkpoint else None}")
    print(f"tensorboard: tensorboard --logdir {join(directory, 'tensorboard')}")
    if epochs:
        last = epochs[-1]
        print(f"epoch {last['epoch']}/{cfg.search.epochs}: val_miou={last['val_miou']:.4f} "
              f"genotype={last['genotype']}")


def sweep(cfg, storage: str, name: str, resume: bool, retrain: bool) -> None:
    from orchestrator.sweep.chain import run_experiment as run_chain

    summary = run_chain(cfg, storage, name, resume=resume, retrain=retrain)
    exp = summary.get("search", {}).get("experiment_dir", join(absolute(storage), name))
    print(f"\nexperiment:  {exp}")
    if retrain:
        r = summary["retrain"]
        print(f"genotype:    {summary['files']['genotype']}")
        print(f"retrain:     val_miou={r['val_miou']} after {r['epochs']} epochs ({r['seconds']} s)")
        print(f"summary:     {join(exp, 'final', 'summary.json')}")
        if "validation_result" in summary:
            from orchestrator.sweep.validation import format_result

            print("\n" + format_result(summary["validation_result"]))
    print(f"tensorboard: tensorboard --logdir {exp}")
    print(f"analysis:    python -m orchestrator.analyze {exp}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl search``."""
    args = parse_args(argv, prog)
    with user_errors():
        from orchestrator.config import derive_name, load_config

        cfg = load_config(args.config, args.overrides)
        storage, name = args.storage_path or cfg.storage_path, args.name or derive_name(cfg, args.config)
        if args.print_config:
            from orchestrator.config.loading import config_sources

            return print_config(cfg, config_sources(args.config, args.overrides),
                                f"adl search: experiment folder {join(storage, name)}")
        preflight(cfg, storage, retrain=not args.no_tune and not args.no_retrain, storage_option=args.storage_path)
        connect_ray(args.address)
        if args.no_tune:
            single_search(cfg, storage, name, args.stop_at_epoch)
        else:
            sweep(cfg, storage, name, args.resume, retrain=not args.no_retrain)
    return 0
