"""Retrain a discrete Auto-DeepLab network from a genotype on Ray Train (paper Sec. 4.2).

    python experiments/retrain.py --genotype results/NAME/final/genotype.json \
        --config experiments/configs/default.yaml
    python experiments/retrain.py --arch autodeeplab-S --config experiments/configs/cityscapes.yaml

The config's ``retrain`` section sets epochs, crop, batch, learning rate and workers; ``data`` the dataset.
``--arch`` sets ``retrain.filter_multiplier`` to the variant's F (S 20, M 32, L 48). The run goes to
``<storage-path>/<name>``; the default name is derived from the genotype and the config, so running the same
command again resumes it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from orchestrator.cli import connect_ray, user_errors
from orchestrator.config import config_hash, load_config, with_overrides
from search_space import AUTODEEPLAB, VARIANTS, Genotype


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--genotype", help="genotype JSON (e.g. <experiment>/final/genotype.json)")
    which.add_argument("--arch", choices=[f"autodeeplab-{v}" for v in VARIANTS], help="a published architecture")
    parser.add_argument("--config", required=True, help="YAML experiment config (data and retrain sections)")
    parser.add_argument("--storage-path", help="folder (or URI) for the run; default: the config's")
    parser.add_argument("--name", help="run name; default: retrain-<genotype>-<config hash>")
    parser.add_argument("--address", help="Ray cluster address; default: a running cluster, else a local Ray")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. retrain.epochs=2")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        cfg = load_config(args.config, args.overrides)
        if args.arch:
            genotype, label = AUTODEEPLAB, args.arch
            cfg = with_overrides(cfg, {"retrain.filter_multiplier": VARIANTS[args.arch[-1]]}, f"--arch {args.arch}")
        else:
            genotype = Genotype.load(args.genotype)
            label = hashlib.sha256(genotype.to_json(indent=None).encode()).hexdigest()[:8]
        name = args.name or f"retrain-{label}-{config_hash(cfg)}"
        storage = args.storage_path or cfg.storage_path
        from orchestrator.retrain import run_retrain

        connect_ray(args.address)
        print(f"retraining {genotype} with F={cfg.retrain.filter_multiplier} for {cfg.retrain.epochs} epochs",
              flush=True)
        result = run_retrain(cfg, genotype, storage, name)
        if result.error:
            raise result.error
    metrics = result.metrics or {}
    directory = os.path.join(str(Path(storage).resolve()) if "://" not in storage else storage, name)
    print(f"\nrun folder:  {directory}")
    print(f"checkpoint:  {result.checkpoint.path if result.checkpoint else None}")
    print(f"tensorboard: tensorboard --logdir {os.path.join(directory, 'tensorboard')}")
    print(f"val_miou={metrics.get('val_miou')} after {metrics.get('epoch')} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
