"""Validate a search: retrain its genotype and K genotypes drawn uniformly from the same space, compare.

    python experiments/validate.py --experiment results/default-<hash>                 # K=8, 2 seeds
    python experiments/validate.py --experiment results/a --experiment results/b --out results/ab-validation
    python experiments/validate.py --experiment results/default-<hash> --random 16 --seeds 3

Each architecture is retrained at the experiment's retrain budget (its config's ``retrain`` section) as a Ray
Tune trial; the searched genotypes at ``--seeds`` seeds, the random ones at ``--random-seeds``. Running the same
command again reuses finished retrains and continues unfinished ones. Writes ``validation.json`` and
``validation.png`` to ``--out`` (default: the experiment's ``final/``) and notes the result in each experiment's
``final/summary.json``. Several experiments of one space (e.g. search seeds) share one random baseline.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.cli import address_argument, connect_ray, user_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", action="append", required=True,
                        help="a finished experiment folder (repeat for several searches of one space)")
    parser.add_argument("--random", type=int, default=8, help="random architectures to retrain (default 8)")
    parser.add_argument("--seeds", type=int, default=2, help="retrain seeds per searched genotype (default 2)")
    parser.add_argument("--random-seeds", type=int, default=1, help="retrain seeds per random one (default 1)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the random draw (default 0)")
    parser.add_argument("--out", help="output folder; default: <experiment>/final (required for several)")
    parser.add_argument("--runs", help="folder of the retrain runs; default <out>/validation. Validations of one "
                        "space that share it retrain each architecture and seed once")
    parser.add_argument("--no-ranking", action="store_true", help="skip the supernet's ranking (Kendall tau)")
    address_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        from orchestrator.io import storage
        from orchestrator.sweep.validation import ValidationError, format_result, validate_experiments

        for name, value, low in (("--random", args.random, 1), ("--seeds", args.seeds, 1),
                                 ("--random-seeds", args.random_seeds, 1)):
            if value < low:
                raise ValidationError(f"{name} {value}: expected an integer >= {low}")
        if args.out is None and len(args.experiment) > 1:
            raise ValidationError("several --experiment folders need --out (where the common result goes)")
        for directory in args.experiment:
            if not storage.is_dir(directory):
                raise ValidationError(f"--experiment {directory}: no such folder")
        out = args.out or storage.join(args.experiment[0], "final")
        connect_ray(args.address)
        result = validate_experiments(args.experiment, out, args.random, args.seeds, args.random_seeds,
                                      args.sample_seed, ranking=not args.no_ranking, runs=args.runs)
    print("\n" + format_result(result))
    print(f"\nvalidation: {storage.join(out, 'validation.json')}, {storage.join(out, 'validation.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
