"""Run the Auto-DeepLab search on Ray.

    python experiments/search.py --config experiments/configs/smoke.yaml --no-tune [key=value ...]

``--no-tune`` runs one search (Ray Train, the config's scaling) on the current Ray cluster: the one named by
``--address`` or ``RAY_ADDRESS``, else a local one started here. Re-running the same config resumes it: the
run name is derived from the config file's stem and the config hash (or given with ``name=...``/``--name``).
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.checkpointing import CheckpointError
from orchestrator.config import ConfigError, derive_name, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML experiment config (experiments/configs/*.yaml)")
    parser.add_argument("--no-tune", action="store_true", help="one search with Ray Train, no Tune sweep")
    parser.add_argument("--storage-path", help="folder (or URI) for run folders; default: the config's")
    parser.add_argument("--name", help="run name; default: <config stem>-<config hash>; reusing one resumes it")
    parser.add_argument("--stop-at-epoch", type=int, help="end after this many epochs; run again to continue")
    parser.add_argument("--address", help="Ray cluster address; default: RAY_ADDRESS, else start a local Ray")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. search.epochs=4")
    return parser.parse_args(argv)


def connect_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.no_tune:
        print("error: the Tune sweep is not available from this script yet; pass --no-tune for one search",
              file=sys.stderr)
        return 2
    from orchestrator.run_search import ResourceError, read_epochs, run_dir, run_single_search

    storage, name = args.storage_path or cfg.storage_path, args.name or derive_name(cfg, args.config)
    connect_ray(args.address)
    try:
        result = run_single_search(cfg, storage, name, stop_at_epoch=args.stop_at_epoch)
    except (CheckpointError, ResourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    directory = run_dir(storage, name)
    epochs = read_epochs(directory)
    print(f"\nrun folder:  {directory}")
    print(f"checkpoint:  {result.checkpoint.path if result.checkpoint else None}")
    print(f"tensorboard: tensorboard --logdir {os.path.join(directory, 'tensorboard')}")
    if epochs:
        last = epochs[-1]
        print(f"epoch {last['epoch']}/{cfg.search.epochs}: val_miou={last['val_miou']:.4f} "
              f"genotype={last['genotype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
