"""Does the supernet learn, and at what budget? Searches at several numbers of architecture steps and seeds.

    python experiments/studies/learning.py --config experiments/configs/learning.yaml \
        --budgets 64,384,1536 --seeds 0,1,2 --out results/learning
    python experiments/studies/learning.py --config experiments/configs/smoke.yaml --budgets 2,4 --seeds 0 \
        --out /tmp/learning --no-eval                                       # a smoke run

For each budget (Adam steps on alpha and beta after the warmup) and search seed, one search of the config
(`orchestrator.sweep.budget`). Reported per budget: alpha's and beta's entropy at the end (ln 8 = 2.0794 is
uniform alpha) and how far they moved, the mean norms of their gradients, the decoded path of each seed and
whether the seeds agree, parameter-free ops in the decoded cell (DARTS' collapse), and, unless --no-eval, each
decoded genotype retrained at the evaluation seeds on the report split (test mIoU), with the config's retrain
budget. --runs shares those retrains with `experiments/validate.py` (same space and retrain budget), whose random
arm is the chance level to read them against: --chance <arms.json> of such a study adds, per budget, the decoded
genotypes' mean test mIoU minus the random draws' with a 95% bootstrap interval. That comparison is unpaired (the
random draws do not depend on a search seed) and the search's compute is not matched. Writes learning.json and
learning.png to --out.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from typing import Any

from orchestrator.cli import address_argument, connect_ray, int_list, user_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/learning.yaml", help="the search config "
                        "(default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every search")
    parser.add_argument("--budgets", type=int_list, default="64,384,1536",
                        help="architecture steps per search (default: %(default)s)")
    parser.add_argument("--seeds", type=int_list, default="0,1,2", help="search seeds (default: %(default)s)")
    parser.add_argument("--eval-seeds", type=int_list, default="100,101",
                        help="retrain seeds of the decoded genotypes (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder of the searches, retrains and learning.json")
    parser.add_argument("--runs", help="folder of the evaluation retrains (default: <out>/runs)")
    parser.add_argument("--no-eval", action="store_true", help="skip the retrains of the decoded genotypes")
    parser.add_argument("--chance", metavar="ARMS_JSON", help="an arm study's arms.json at the same retrain budget "
                        "and evaluation seeds: its random arm is the chance level each budget is compared with")
    address_argument(parser)
    return parser.parse_args(argv)


def agreement(paths: list[list[int]]) -> dict[str, Any]:
    """Do the seeds' decoded paths agree: identical pairs, and the mean share of layers on the same level."""
    pairs = list(itertools.combinations(paths, 2))
    same = [sum(a == b for a, b in zip(p, q, strict=True)) / len(p) for p, q in pairs]
    return {"identical_pairs": sum(p == q for p, q in pairs), "pairs": len(pairs),
            "layer_agreement": statistics.fmean(same) if same else math.nan}


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """What one search ends with (its last epoch) and how its architecture parameters moved."""
    last, arch = run["epochs"][-1], [e for e in run["epochs"] if e.get("arch_updates")]
    return {"seed": run["seed"], "arch_steps": run["arch_steps_done"], "path": run["genotype"]["path"],
            "genotype": run["genotype"], "alpha_entropy": last["alpha_entropy"], "beta_entropy": last["beta_entropy"],
            "alpha_range": [min(min(r) for r in last["alpha"]), max(max(r) for r in last["alpha"])],
            "beta_abs_max": max(abs(v) for layer in last["beta"] for row in layer for v in row),
            "param_free_ops": last["param_free_ops"], "path_depth": last["path_depth"],
            "alpha_grad_norm": statistics.fmean(e["alpha_grad_norm"] for e in arch) if arch else math.nan,
            "beta_grad_norm": statistics.fmean(e["beta_grad_norm"] for e in arch) if arch else math.nan,
            "supernet_val_miou": last["val_miou"], "seconds": run["seconds"],
            "curve": [{k: e.get(k) for k in ("epoch", "alpha_entropy", "beta_entropy", "path", "val_miou")}
                      for e in run["epochs"]]}


def evaluate(cfg, rows: list[dict[str, Any]], eval_seeds: list[int], runs: str) -> None:
    """Retrain every decoded genotype at the evaluation seeds; adds ``test_miou`` (per seed) to each row."""
    from orchestrator.sweep.arms import genotype_label
    from orchestrator.sweep.retrain_trials import run_trials

    distinct = {genotype_label(r["genotype"]): r["genotype"] for r in rows}
    trials = [{"label": label, "genotype": g, "seed": s} for label, g in distinct.items() for s in eval_seeds]
    metrics = run_trials(cfg, trials, runs, in_process=cfg.selection.in_process, report=True)
    for r in rows:
        r["test_miou"] = [(metrics.get((genotype_label(r["genotype"]), s)) or {}).get("test_miou", math.nan)
                          for s in eval_seeds]


def read_chance(path: str, cfg, eval_seeds: list[int]) -> list[float]:
    """The random arm of an arm study (``arms.json``): each random architecture's mean test mIoU over the evaluation
    seeds. Refused unless that study retrained with this config's retrain budget at the same evaluation seeds."""
    import json

    from orchestrator.io import storage
    from orchestrator.sweep.arms import check_scored_alike
    from orchestrator.sweep.retrain_trials import retrain_inputs

    arms = json.loads(storage.read_text(path))
    check_scored_alike(arms, path, retrain_inputs(cfg), eval_seeds, "--chance")
    return [statistics.fmean(a["test_miou"]) for a in arms["architectures"] if a["arm"] == "random"]


def against_chance(result: dict[str, Any], chance: list[float]) -> None:
    """Per budget: the decoded genotypes (one per search seed, mean over evaluation seeds) against the random draws."""
    from orchestrator.analysis.paired import unpaired_difference

    for b in result["budgets"]:
        decoded = [statistics.fmean(r["test_miou"]) for r in b["runs"] if r.get("test_miou")]
        b["decoded_minus_random"] = unpaired_difference(decoded, chance)
    result["random_test_miou"] = chance


def figure(result: dict[str, Any]):
    """Alpha and beta entropy against architecture steps, one line per seed, per budget's final point."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for b in result["budgets"]:
        for r in b["runs"]:
            axes[0].scatter(r["arch_steps"], r["alpha_entropy"], color="C0")
            axes[1].scatter(r["arch_steps"], r["beta_entropy"], color="C1")
            if r.get("test_miou"):
                axes[2].scatter(r["arch_steps"], statistics.fmean(r["test_miou"]), color="C2")
    if result.get("random_test_miou"):
        axes[2].axhline(statistics.fmean(result["random_test_miou"]), color="0.5", linestyle="--",
                        label="random draws (mean)")
        axes[2].legend(fontsize=8, loc="lower right")
    for ax, title in zip(axes, ("alpha entropy (uniform 2.079)", "beta entropy", "decoded genotype: test mIoU"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("architecture steps")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        from orchestrator.config import load_config
        from orchestrator.io import storage
        from orchestrator.io.atomic import save_figure, write_json
        from orchestrator.sweep.budget import search_at_budget

        cfg = load_config(args.config, args.overrides)
        chance = read_chance(args.chance, cfg, args.eval_seeds) if args.chance else None
        connect_ray(args.address)
        result: dict[str, Any] = {"config": args.config, "overrides": args.overrides, "budgets": []}
        for budget in args.budgets:
            rows = [run_row(search_at_budget(cfg, budget, seed, storage.join(args.out, "searches")))
                    for seed in args.seeds]
            result["budgets"].append({"arch_steps": budget, "runs": rows, **agreement([r["path"] for r in rows])})
            write_json(storage.join(args.out, "learning.json"), result)
        if not args.no_eval:
            evaluate(cfg, [r for b in result["budgets"] for r in b["runs"]], args.eval_seeds,
                     args.runs or storage.join(args.out, "runs"))
            if chance:
                against_chance(result, chance)
        write_json(storage.join(args.out, "learning.json"), result)
        save_figure(figure(result), storage.join(args.out, "learning.png"))
    for b in result["budgets"]:
        print(f"budget {b['arch_steps']}: paths {[r['path'] for r in b['runs']]}, alpha entropy "
              f"{[round(r['alpha_entropy'], 4) for r in b['runs']]}, beta entropy "
              f"{[round(r['beta_entropy'], 4) for r in b['runs']]}, identical pairs {b['identical_pairs']}/{b['pairs']}"
              + (f", test mIoU {[round(statistics.fmean(r['test_miou']), 4) for r in b['runs']]}"
                 if "test_miou" in b["runs"][0] else "")
              + (f", decoded - random {b['decoded_minus_random']['mean']:+.4f} "
                 f"[{b['decoded_minus_random']['ci95'][0]:+.4f}, {b['decoded_minus_random']['ci95'][1]:+.4f}]"
                 if "decoded_minus_random" in b else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
