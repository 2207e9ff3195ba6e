"""Known-answer tasks: does the search decode the path a task is built for?

    python experiments/studies/known_answer.py --config experiments/configs/learning.yaml --budget 1536 \
        --seeds 0,1,2 --out results/known-answer
    python experiments/studies/known_answer.py --check-only --out results/known-answer   # the retrain check only
    python experiments/studies/known_answer.py --budget 384 --tasks context --out results/ka128 \
        data.crop_size=128 search.arch_lr=0.01 search_space.head_mix=reach   # the 128 px task, the departure
    python experiments/studies/known_answer.py --config experiments/configs/smoke.yaml --budget 2 --seeds 0 \
        --cells 1 --check-epochs 2 --out /tmp/ka                                          # a smoke run

Two variants of the synthetic task (`orchestrator/data/known_answer.py`): ``detail`` (only 2-4 px objects
matter: the right path stays at stride 4-8) and ``context`` (quadrants told apart only by averaging most of each:
built for paths that descend to stride 16-32). First the answer is checked, not assumed: single-path networks
with the supernet's search head, one per path ending at stride 4, 8, 16 and 32, are trained the same way with a
few random cells (`orchestrator.train.known_answer_check`) and compared cell by cell: the answer holds when the
right side wins with every cell (the margin's bootstrap interval over cells is printed too; measured, ``detail``
holds at 64 and 128 px, ``context`` only at 128 px: docs/validation.md). The check runs at the searches' crop,
``data.crop_size`` (``--check-size`` for another, with ``--check-only``). Then the config's search runs on each
task at the given number of architecture steps, per seed, and its decoded path is judged (shallow for detail,
deep for context).
Near-uniform beta decodes shallow paths by Viterbi's prior alone, so a shallow verdict on detail says little.
Writes known_answer.json to --out.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from orchestrator.cli import address_argument, connect_ray, int_list, user_errors

TASKS = ("detail", "context")


def task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(TASKS)}")
    return tasks


def image_side(text: str) -> int:
    side = int(text) if text.strip().isdigit() else 0
    if side < 32 or side % 32:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a multiple of 32 pixels (the trellis reaches stride 32)")
    return side


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/learning.yaml",
                        help="the search config; its data.options.task is set per task (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every search")
    parser.add_argument("--budget", type=int, default=1536, help="architecture steps per search (default: %(default)s)")
    parser.add_argument("--seeds", type=int_list, default="0,1,2", help="search seeds (default: %(default)s)")
    parser.add_argument("--tasks", type=task_list, default=",".join(TASKS),
                        help="the tasks to check and search, in this order (default: %(default)s)")
    parser.add_argument("--cells", type=int, default=6, help="random cells in the retrain check; each path is "
                        "compared with the others cell by cell (default: %(default)s)")
    parser.add_argument("--check-epochs", type=int, default=40, help="epochs per network in the retrain check "
                        "(64 fresh images each; default: %(default)s)")
    parser.add_argument("--check-size", type=image_side, help="image side in the retrain check, pixels: the "
                        "searches' data.crop_size (default: that crop; another size only with --check-only)")
    parser.add_argument("--check-only", action="store_true", help="only the retrain check, no searches")
    parser.add_argument("--out", required=True, help="folder of the searches and known_answer.json")
    address_argument(parser)
    return parser.parse_args(argv)


def check_size(args: argparse.Namespace, cfg: Any) -> int:
    """The check's image side: ``--check-size``, else the config's crop. The searches' tasks are drawn at
    data.crop_size, so with searches the check must use that size or it would judge another task."""
    from orchestrator.config import ConfigError

    crop = cfg.data.crop_size
    if args.check_size is None:
        try:
            return image_side(str(crop))
        except argparse.ArgumentTypeError as err:
            raise ConfigError(f"{args.config}: data.crop_size {err}; pass --check-size or data.crop_size") from None
    if not args.check_only and args.check_size != crop:
        raise ConfigError(f"--check-size {args.check_size} but the searches draw the task at data.crop_size {crop} "
                          f"({args.config}): the check would judge another task than the one searched; pass "
                          f"data.crop_size={args.check_size}, or --check-only")
    return args.check_size


def retrain_check(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.analysis.paired import bootstrap_interval
    from orchestrator.train.known_answer_check import Budget, check_task
    from search_space.sampling import sample_cell

    cells = [sample_cell(3, random.Random(1000 + i)) for i in range(args.cells)]
    budget = Budget(epochs=args.check_epochs, image_size=args.size)
    out = {}
    for task in args.tasks:
        out[task] = check = check_task(task, cells, budget)
        check["ci95"] = list(bootstrap_interval(check["cell_margins"]))
        means = ", ".join(f"{k} {v:.3f}" for k, v in check["means"].items())
        low, high = check["ci95"]
        spread = f"95% interval over {len(cells)} cells {low:+.3f} to {high:+.3f}" if len(cells) > 1 else "1 cell"
        print(f"check {task}: {means}; right side {check['right']} by {check['margin']:+.3f} ({spread}); "
              f"holds={check['holds']}", flush=True)
    return out


def search_row(run: dict[str, Any]) -> dict[str, Any]:
    """What a search ended with: its path and genotype, alpha and beta entropy, beta's largest logit, where beta's
    path ends (`end_level_probs`), the parameter-free ops of the cell, the supernet's val mIoU, the mean gradient
    norms over the architecture epochs and the search's seconds."""
    import json

    import torch

    from search_space.trellis import end_level_probs, transition_probs

    last = run["epochs"][-1]
    beta = torch.tensor(json.loads(last["beta"]) if isinstance(last["beta"], str) else last["beta"])
    arch = [e for e in run["epochs"] if e.get("arch_updates")] or [last]
    mean = lambda key: sum(float(e[key]) for e in arch) / len(arch)  # noqa: E731
    return {"path": run["genotype"]["path"], "alpha_entropy": last["alpha_entropy"],
            "beta_entropy": last["beta_entropy"], "beta_max_abs": float(beta.abs().max()),
            "end_level_probs": [round(float(p), 4) for p in end_level_probs(transition_probs(beta))],
            "param_free_ops": last["param_free_ops"], "supernet_val_miou": last["val_miou"],
            "alpha_grad_norm": mean("alpha_grad_norm"), "beta_grad_norm": mean("beta_grad_norm"),
            "arch_steps": run["arch_steps_done"], "seconds": run["seconds"], "genotype": run["genotype"]}


def searches(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from orchestrator.io import storage
    from orchestrator.sweep.budget import search_at_budget
    from orchestrator.train.known_answer_check import verdict

    connect_ray(args.address)
    out = {}
    for task in args.tasks:
        options = {**cfg.data.options, "task": task}
        rows = []
        for seed in args.seeds:
            run = search_at_budget(cfg, args.budget, seed, storage.join(args.out, "searches", task),
                                   overrides={"data.options": options})
            rows.append({"seed": seed, "right": verdict(task, run["genotype"]["path"]), **search_row(run)})
            r = rows[-1]
            print(f"search {task} seed {seed}: path {r['path']} right={r['right']} beta max {r['beta_max_abs']:.3f} "
                  f"ends {r['end_level_probs']} val_miou {r['supernet_val_miou']:.3f}", flush=True)
        out[task] = {"runs": rows, "right": sum(r["right"] for r in rows), "of": len(rows)}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        from orchestrator.config import load_config
        from orchestrator.io import storage
        from orchestrator.io.atomic import write_json

        cfg = load_config(args.config, args.overrides)
        args.size = check_size(args, cfg)
        path = storage.join(args.out, "known_answer.json")
        result: dict[str, Any] = {"check_size": args.size, "check": retrain_check(args)}
        write_json(path, result)
        if not args.check_only:
            result.update(budget=args.budget, config=args.config, overrides=args.overrides,
                          searches=searches(args, cfg))
            write_json(path, result)
    for task, s in result.get("searches", {}).items():
        print(f"{task}: {s['right']}/{s['of']} seeds decoded the right side ({[r['path'] for r in s['runs']]})")
    print(f"\nknown answer: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
