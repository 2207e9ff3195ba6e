"""Run the Auto-DeepLab search on Ray: the Tune sweep, then decode and retrain the best trial.

    python experiments/search.py --config experiments/configs/default.yaml [--resume] [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python experiments/search.py --config experiments/configs/smoke.yaml --storage-path s3://bucket/adl
    python experiments/search.py --config experiments/configs/smoke.yaml --no-tune   # one search, no Tune

Connects to the running Ray cluster (``ray job submit`` sets RAY_ADDRESS; else a cluster started on this
machine), otherwise starts a local Ray. Results go to ``<storage-path>/<name>/``; the name is derived from the
config file's stem and the config hash (or ``--name``), never the clock, so ``--resume`` finds the sweep again.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.cli import connect_ray, run_arguments, user_errors
from orchestrator.config import derive_name, load_config
from orchestrator.io.paths import absolute
from orchestrator.io.storage import join


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(parser, config_help="YAML experiment config (experiments/configs/*.yaml)",
                  name_help="experiment name; default: <config stem>-<config hash>",
                  overrides_example="search.epochs=4")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep and its trials")
    parser.add_argument("--no-tune", action="store_true", help="one search with Ray Train, no Tune sweep")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the sweep and the best genotype")
    parser.add_argument("--stop-at-epoch", type=int, help="--no-tune: end after this many epochs; run again to go on")
    return parser.parse_args(argv)


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
    from orchestrator.sweep.chain import run_experiment

    summary = run_experiment(cfg, storage, name, resume=resume, retrain=retrain)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        cfg = load_config(args.config, args.overrides)
        storage, name = args.storage_path or cfg.storage_path, args.name or derive_name(cfg, args.config)
        from orchestrator.data.preflight import check_data, check_retrain_data

        check_data(cfg)
        if not args.no_tune and not args.no_retrain:
            check_retrain_data(cfg)
        connect_ray(args.address)
        if args.no_tune:
            single_search(cfg, storage, name, args.stop_at_epoch)
        else:
            sweep(cfg, storage, name, args.resume, retrain=not args.no_retrain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
