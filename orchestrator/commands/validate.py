"""Does the search beat chance? Honest answers, on a test split that nothing upstream read.

Two modes:

    # The five arms at equal compute, paired by search seed (orchestrator/sweep/arms.py): the shipped chain, its
    # decoded genotype alone, the decoding of alpha/beta never updated (frozen), random search through the same
    # filter, single random draws; search seeds 10-14
    adl validate --config experiments/configs/default.yaml --out results/arms
    adl validate --config experiments/configs/smoke.yaml --search-seeds 0,1 --out /tmp/arms
    adl validate --config experiments/configs/smoke.yaml --print-config      # the arms' config, and why
    # Does the sweep pay? Its pick against one trial at the config's values given the same compute (single)
    adl validate --config experiments/configs/learning.yaml --arms pipeline,single --out results/sweep-arms

    # Finished experiments against K random genotypes (orchestrator/sweep/validation.py)
    adl validate --experiment results/default-<hash>                 # K=8, 2 seeds
    adl validate --experiment results/a --experiment results/b --out results/ab-validation

``python experiments/validate.py`` takes the same arguments. Every architecture is retrained with the config's (or
the experiment's) full retrain budget at evaluation seeds 100, 101, ... (disjoint from every seed used to choose)
and scored on the report split (test_miou). The arm mode writes arms.json, arms.png and yardstick.png (per arm
the mean test mIoU, every pair's mean paired difference with a 95% bootstrap interval over search seeds, the
yardstick's agreement between evaluation seeds, the supernets' Kendall tau); the experiment mode writes
validation.json and validation.png. Running the same command again reuses what finished; --runs shares the
evaluation retrains between studies of one space and budget. Output folders are checked (reachable,
writable) before Ray starts.
"""

from __future__ import annotations

import argparse

from orchestrator.cli import (
    address_argument,
    command_parser,
    connect_ray,
    int_list,
    print_config,
    print_config_argument,
    user_errors,
)


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, prog)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="arm mode: the experiment config whose chain is the pipeline arm")
    which.add_argument("--experiment", action="append", metavar="DIR",
                       help="experiment mode: a finished experiment folder (repeat for several searches of one space)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="arm mode: config overrides")
    parser.add_argument("--search-seeds", type=int_list, default="10,11,12,13,14",
                        help="arm mode: search seeds, one paired comparison each (default: 10,11,12,13,14: none of "
                        "them was used when the shipped default was chosen)")
    parser.add_argument("--eval-seeds", type=int_list, default="100,101",
                        help="arm mode: retrain seeds of every chosen architecture (default: 100,101)")
    parser.add_argument("--eval-override", action="append", default=[], metavar="retrain.KEY=VALUE",
                        help="arm mode: a retrain override for the evaluation retrains only (repeatable); the "
                        "searches and both filters' short retrains keep the config (docs/validation.md, the "
                        "yardstick; default: none, the config's retrain)")
    parser.add_argument("--draws", type=int, default=2, help="arm mode: random draws per search seed (default 2)")
    parser.add_argument("--arms", default="pipeline,decoded,frozen,random-search,random",
                        help="arm mode: which arms (default: pipeline,decoded,frozen,random-search,random; frozen: "
                        "the search's alpha/beta never updated, decoded; single, for a config that sweeps: one "
                        "trial at the config's values, the sweep's extra time spent on its filter)")
    parser.add_argument("--random", type=int, default=8, help="experiment mode: random architectures (default 8)")
    parser.add_argument("--seeds", type=int, default=2, help="experiment mode: seeds per searched genotype (default 2)")
    parser.add_argument("--random-seeds", type=int, default=1, help="experiment mode: seeds per random one (default 1)")
    parser.add_argument("--sample-seed", type=int, default=0, help="experiment mode: seed of the draw (default 0)")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder; arm mode: required; experiment mode: default <experiment>/final")
    parser.add_argument("--runs", metavar="DIR", help="folder of the evaluation retrains; default <out>/runs (arm "
                        "mode) or <out>/validation; studies of one space and budget can share it")
    parser.add_argument("--no-ranking", action="store_true", help="skip the supernets' ranking (Kendall tau)")
    address_argument(parser)
    print_config_argument(parser)
    return parser.parse_args(argv)


def _check_outputs(out: str, runs: str | None, given: bool = True) -> None:
    """The output folders, reachable and writable, before Ray starts (``given``: ``out`` came from ``--out``)."""
    from orchestrator.io.storage import check_writable

    check_writable(out, "--out" if given else "output folder")
    if runs:
        check_writable(runs, "--runs")


def run_arm_mode(args: argparse.Namespace) -> str | None:
    from orchestrator.analysis.arms_report import arms_text
    from orchestrator.config import load_config
    from orchestrator.data.preflight import check_data, check_retrain_data
    from orchestrator.sweep.arms import ArmsError, Plan, check_plan, evaluation_config, run_arms

    if args.print_config:
        from orchestrator.config.loading import config_sources

        cfg = load_config(args.config, args.overrides)
        print_config(cfg, config_sources(args.config, args.overrides), "adl validate: the pipeline arm's config")
        return None
    if not args.out:
        raise ArmsError("--config (arm mode) needs --out: the folder of the study's searches, retrains and arms.json")
    cfg = load_config(args.config, args.overrides)
    plan = Plan(tuple(args.search_seeds), tuple(args.eval_seeds), args.draws,
                tuple(a.strip() for a in args.arms.split(",") if a.strip()))
    evaluation = evaluation_config(cfg, args.eval_override)
    check_plan(cfg, plan)
    check_data(cfg)
    check_retrain_data(cfg)
    if evaluation is not cfg:
        check_retrain_data(evaluation)
    _check_outputs(args.out, args.runs)
    connect_ray(args.address)
    result = run_arms(cfg, plan, args.out, args.runs, ranking=not args.no_ranking, evaluation=evaluation)
    return arms_text(result) + f"\n\narms: {args.out}/arms.json, arms.png, yardstick.png ({result['seconds']:.0f} s)"


def run_experiment_mode(args: argparse.Namespace) -> str:
    from orchestrator.io import storage
    from orchestrator.sweep.validation import ValidationError, format_result, validate_experiments

    if args.print_config:
        raise ValidationError("--print-config goes with --config (arm mode); an experiment's config is its "
                              "final/summary.json")
    for name, value in (("--random", args.random), ("--seeds", args.seeds), ("--random-seeds", args.random_seeds)):
        if value < 1:
            raise ValidationError(f"{name} {value}: expected an integer >= 1")
    if args.overrides:
        raise ValidationError(f"key=value overrides ({' '.join(args.overrides)}) go with --config, not --experiment")
    if args.out is None and len(args.experiment) > 1:
        raise ValidationError("several --experiment folders need --out (where the common result goes)")
    for directory in args.experiment:
        storage.check_reachable(directory, "--experiment")
        if not storage.is_dir(directory):
            raise ValidationError(f"--experiment {directory}: no such folder")
    out = args.out or storage.join(args.experiment[0], "final")
    _check_outputs(out, args.runs, given=args.out is not None)
    connect_ray(args.address)
    result = validate_experiments(args.experiment, out, args.random, args.seeds, args.random_seeds,
                                  args.sample_seed, ranking=not args.no_ranking, runs=args.runs)
    return (format_result(result) + f"\n\nvalidation: {storage.join(out, 'validation.json')}, "
            f"{storage.join(out, 'validation.png')}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl validate``."""
    args = parse_args(argv, prog)
    with user_errors():
        text = run_arm_mode(args) if args.config else run_experiment_mode(args)
    if text is not None:
        print("\n" + text)
    return 0
