"""Arms of different arm studies, compared paired by search seed: a departure's arm against the faithful one's.

    python experiments/studies/compare_arms.py \\
        --arm reach=results/arms-learning384-reach:decoded \\
        --arm faithful=results/arms-learning384-faithful:decoded \\
        --arm random-search=results/arms-learning384-faithful:random-search --out results/reach-vs-faithful.json

Each ``--arm NAME=FOLDER:ARM`` reads one arm (``pipeline``, ``decoded``, ``random-search``, ...) of the arm study
in FOLDER (the ``--out`` of ``experiments/validate.py --config``; its ``arms.json``). The studies must have scored
their architectures the same way, the same evaluation seeds and evaluation retrain (the retrain and data sections
with their --eval-override); otherwise the command refuses and says which study and what differs. Printed, and
written to ``--out`` as JSON: per arm the mean test and val mIoU over the search seeds every named arm has, and
every pair's paired difference on the test split with a 95% bootstrap interval (the arm study's statistics).
Reads files only: no Ray, no training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli import user_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=FOLDER:ARM",
                        help="an arm of a finished arm study, under a name of your own (repeat: at least two)")
    parser.add_argument("--out", help="write the comparison to this JSON file")
    return parser.parse_args(argv)


def parse_arm(spec: str) -> tuple[str, str, str]:
    """``NAME=FOLDER:ARM`` -> (name, folder, arm)."""
    from orchestrator.sweep.arms import ArmsError

    name, _, rest = spec.partition("=")
    folder, _, arm = rest.rpartition(":")
    if not name or not folder or not arm:
        raise ArmsError(f"--arm {spec}: expected NAME=FOLDER:ARM, e.g. reach=results/arms-reach:decoded")
    return name, folder, arm


def read_study(folder: str) -> dict[str, Any]:
    from orchestrator.sweep.arms import ARMS_FILE, ArmsError

    path = Path(folder) / ARMS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArmsError(f"--arm {folder}: no {ARMS_FILE} there; expected the --out folder of a finished "
                        "`experiments/validate.py --config` run") from None
    except (OSError, ValueError) as err:
        raise ArmsError(f"--arm {path}: cannot read it ({err})") from None


def per_seed(study: dict[str, Any], arm: str, key: str) -> dict[int, float]:
    """search seed -> the arm's score there: the mean over its architectures of their mean over evaluation seeds."""
    from orchestrator.analysis.paired import mean_or_nan

    seeds: dict[int, list[float]] = {}
    for row in study["architectures"]:
        if row["arm"] == arm:
            seeds.setdefault(int(row["search_seed"]), []).append(mean_or_nan(row[key]))
    return {seed: mean_or_nan(values) for seed, values in seeds.items()}


def compare(specs: list[str]) -> dict[str, Any]:
    """The named arms' scores on their common search seeds and every pair's paired difference."""
    from orchestrator.analysis.paired import compare_arms, mean_or_nan
    from orchestrator.config import config_from_dict
    from orchestrator.sweep.arms import ArmsError, check_scored_alike
    from orchestrator.sweep.retrain_trials import retrain_inputs

    arms = [parse_arm(spec) for spec in specs]
    names = [name for name, _, _ in arms]
    if len(arms) < 2 or len(set(names)) != len(names):
        raise ArmsError(f"--arm: expected at least two arms with distinct names, got {names}")
    studies = {folder: read_study(folder) for _, folder, _ in arms}
    first, reference = next(iter(studies.items()))
    evaluated = dict(reference["config"], retrain=reference.get("evaluation_retrain", reference["config"]["retrain"]))
    inputs = retrain_inputs(config_from_dict(evaluated, first))
    for folder, study in studies.items():
        check_scored_alike(study, folder, inputs, reference["eval_seeds"], f"--arm (against {first})")
    for name, folder, arm in arms:
        if arm not in studies[folder]["arms"]:
            raise ArmsError(f"--arm {name}={folder}:{arm}: that study has no arm {arm!r}; it has "
                            f"{', '.join(studies[folder]['arms'])}")
    test = {name: per_seed(studies[folder], arm, "test_miou") for name, folder, arm in arms}
    val = {name: per_seed(studies[folder], arm, "val_miou") for name, folder, arm in arms}
    common = sorted(set.intersection(*(set(t) for t in test.values())))
    if not common:
        raise ArmsError(f"--arm: the arms share no search seed ({ {n: sorted(t) for n, t in test.items()} })")
    test = {n: {s: t[s] for s in common} for n, t in test.items()}
    return {"eval_seeds": reference["eval_seeds"], "search_seeds": common,
            "sources": {name: {"folder": folder, "arm": arm} for name, folder, arm in arms},
            "arms": {n: {"test_miou": mean_or_nan(list(test[n].values())),
                         "val_miou": mean_or_nan([val[n].get(s, math.nan) for s in common]),
                         "per_seed_test_miou": test[n]} for n in names},
            "paired_test_miou": compare_arms(test), "yardstick": {}}


def main(argv: list[str] | None = None) -> int:
    from orchestrator.analysis.arms_report import arms_text
    from orchestrator.io.atomic import write_json

    args = parse_args(argv)
    with user_errors():
        result = compare(args.arm)
    print("\n".join(f"{n}: {s['folder']} ({s['arm']})" for n, s in result["sources"].items()))
    print(arms_text(result), flush=True)
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
