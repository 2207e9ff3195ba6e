"""Retrain a discrete Auto-DeepLab network from a genotype on Ray Train (paper Sec. 4.2).

    adl retrain --genotype results/NAME/final/genotype.json --config experiments/configs/default.yaml
    adl retrain --arch autodeeplab-S --config experiments/configs/cityscapes.yaml
    adl retrain --arch autodeeplab-S --config experiments/configs/cityscapes.yaml --print-config

``python experiments/retrain.py`` takes the same arguments. The config's ``retrain`` section sets epochs, crop,
batch, learning rate and workers; ``data`` the dataset. ``--arch`` sets ``retrain.filter_multiplier`` to the
variant's F (S 20, M 32, L 48). The run goes to ``<storage-path>/<name>``; the default name is derived from the
genotype and the config, so running the same command again resumes it.

Bad input fails before any worker starts, with ``error: ...`` and exit status 2: an unreadable or illegal
genotype, a config error, a dataset too small for ``retrain.batch_size`` x ``retrain.num_workers``, a storage path
that cannot be reached or written, workers the cluster cannot hold, or a run folder (``--name``) whose checkpoint
retrains another genotype.
"""

from __future__ import annotations

import argparse
import hashlib
from typing import TYPE_CHECKING

from orchestrator.cli import command_parser, connect_ray, print_config, run_arguments, storage_label, user_errors
from orchestrator.io import storage as store

if TYPE_CHECKING:  # search_space imports torch: not for --help
    from search_space import Genotype

ARCH_VARIANTS = ("S", "M", "L")
"""The published architectures ``--arch`` offers: the keys of `search_space.VARIANTS` (tests/test_cli_commands.py
checks), written out so that ``--help`` needs no torch."""


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, prog)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--genotype", help="genotype JSON, a path or a URI (e.g. <experiment>/final/genotype.json)")
    which.add_argument("--arch", choices=[f"autodeeplab-{v}" for v in ARCH_VARIANTS], help="a published architecture")
    run_arguments(parser, config_help="YAML experiment config (data and retrain sections)",
                  name_help="run name; default: retrain-<genotype>-<config hash>", overrides_example="retrain.epochs=2")
    return parser.parse_args(argv)


def read_genotype(path: str) -> Genotype:
    """A genotype JSON file, local or at a storage URI; errors name it."""
    from search_space import Genotype
    from search_space.genotypes import GenotypeError

    try:
        text = store.read_text(path)
    except (OSError, ValueError) as err:
        raise GenotypeError(f"cannot read genotype file {path}: {getattr(err, 'strerror', None) or err}") from None
    return Genotype.from_json(text, source=str(path))


def _print_config(args: argparse.Namespace, cfg, run: str) -> int:
    from orchestrator.config.loading import config_sources

    sources = config_sources(args.config, args.overrides)
    if args.arch:
        sources["retrain.filter_multiplier"] = f"--arch {args.arch}"
    return print_config(cfg, sources, f"adl retrain: run folder {run}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl retrain``."""
    args = parse_args(argv, prog)
    with user_errors():
        from orchestrator.config import config_hash, load_config, with_overrides
        from search_space import AUTODEEPLAB, VARIANTS

        cfg = load_config(args.config, args.overrides)
        if args.arch:
            genotype, label = AUTODEEPLAB, args.arch
            cfg = with_overrides(cfg, {"retrain.filter_multiplier": VARIANTS[args.arch[-1]]}, f"--arch {args.arch}")
        else:
            genotype = read_genotype(args.genotype)
            label = hashlib.sha256(genotype.to_json(indent=None).encode()).hexdigest()[:8]
        name = args.name or f"retrain-{label}-{config_hash(cfg)}"
        storage = args.storage_path or cfg.storage_path
        if args.print_config:
            return _print_config(args, cfg, store.join(storage, name))
        from orchestrator.data.preflight import check_retrain_data
        from orchestrator.data.roles import describe
        from orchestrator.train.resume import check_retrain_folder
        from orchestrator.train.trainers import check_diverged, check_resources, run_dir, run_retrain

        check_retrain_data(cfg)
        store.check_writable(storage, storage_label(args.storage_path))
        check_retrain_folder(run_dir(storage, name), genotype.to_dict())
        connect_ray(args.address)
        check_resources(cfg, cfg.retrain.num_workers, "retrain.num_workers")
        print(f"retraining {genotype} with F={cfg.retrain.filter_multiplier} for {cfg.retrain.epochs} epochs",
              flush=True)
        result = run_retrain(cfg, genotype, storage, name)
        if result.error:
            raise result.error
        check_diverged(run_dir(storage, name), (result.metrics or {}).get("epoch", 0))
    metrics = result.metrics or {}
    directory = run_dir(storage, name)
    print(f"\nrun folder:  {directory}")
    print(f"checkpoint:  {result.checkpoint.path if result.checkpoint else None}")
    print(f"tensorboard: tensorboard --logdir {store.join(directory, 'tensorboard')}")
    splits = {role: describe(cfg.data, role) for role in ("select", "report")}
    print(f"after {metrics.get('epoch')} epochs; val is {splits['select']}, test is {splits['report']}")
    print(f"val_miou={metrics.get('val_miou')}")
    if "test_miou" in metrics:
        print(f"test_miou={metrics['test_miou']}")
    return 0
