"""The departures in decoding, measured against the paper's on the same finished searches.

    python experiments/studies/decoding.py --searches results/learning/searches \
        --config experiments/configs/learning.yaml --out results/decoding --runs results/arms-default/runs

Each search's last checkpoint is decoded four ways: the paper's (Viterbi over beta's transition probabilities,
each edge's strongest op), ``selection.path: centred`` (no prior for rates 4 and 32), ``selection.max_param_free:
2`` (at most two pools or skips in the cell), and both. Every distinct genotype is retrained at the evaluation
seeds with the config's retrain budget and scored on the report split (test mIoU). Reported per decoding: the
mean test mIoU, the paired difference from the paper's decoding over the searches (mean and 95% bootstrap
interval), the parameter-free ops and the deepest rate. Writes decoding.json to --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli import address_argument, connect_ray, int_list, user_errors

DECODINGS = {"paper": ("viterbi", None), "centred": ("centred", None), "cap2": ("viterbi", 2),
             "centred+cap2": ("centred", 2)}
"""name -> (selection.path, selection.max_param_free)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searches", required=True, action="append",
                        help="a folder of finished search runs (repeat for several), e.g. results/learning/searches")
    parser.add_argument("--config", required=True, help="the config whose retrain section scores the genotypes")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--eval-seeds", type=int_list, default="100,101",
                        help="retrain seeds (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder of decoding.json")
    parser.add_argument("--runs", help="folder of the evaluation retrains (default: <out>/runs)")
    address_argument(parser)
    return parser.parse_args(argv)


def decode_all(folders: list[str]) -> list[dict[str, Any]]:
    """One row per search: its name and the genotype of each decoding of its newest checkpoint."""
    from orchestrator.io.checkpointing import latest_checkpoint_dir
    from orchestrator.sweep.final import genotype_from_checkpoint
    from orchestrator.train.metrics import param_free_ops

    rows = []
    for folder in folders:
        for run in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
            checkpoint = latest_checkpoint_dir(str(run))
            if checkpoint is None:
                continue
            decoded = {name: genotype_from_checkpoint(str(checkpoint), cap, path)
                       for name, (path, cap) in DECODINGS.items()}
            rows.append({"search": f"{Path(folder).name}/{run.name}", "checkpoint": str(checkpoint),
                         "genotypes": {n: g.to_dict() for n, g in decoded.items()},
                         "param_free_ops": {n: param_free_ops(g) for n, g in decoded.items()},
                         "path_depth": {n: max(g.path) for n, g in decoded.items()}})
    return rows


def summarize(rows: list[dict[str, Any]], metrics: dict, eval_seeds: list[int]) -> dict[str, Any]:
    from orchestrator.analysis.paired import mean_or_nan, paired_difference
    from orchestrator.sweep.arms import genotype_label

    for row in rows:
        row["test_miou"] = {n: mean_or_nan([(metrics.get((genotype_label(g), s)) or {}).get("test_miou", float("nan"))
                                            for s in eval_seeds]) for n, g in row["genotypes"].items()}
    scores = {n: {r["search"]: r["test_miou"][n] for r in rows} for n in DECODINGS}
    return {"searches": len(rows), "eval_seeds": eval_seeds, "rows": rows,
            "decodings": {n: {"test_miou": mean_or_nan(list(scores[n].values())),
                              "param_free_ops": statistics.fmean(r["param_free_ops"][n] for r in rows),
                              "path_depth": statistics.fmean(r["path_depth"][n] for r in rows),
                              "minus_paper": paired_difference(scores[n], scores["paper"])} for n in DECODINGS}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        from orchestrator.config import load_config
        from orchestrator.io import storage
        from orchestrator.io.atomic import write_json
        from orchestrator.sweep.arms import genotype_label
        from orchestrator.sweep.retrain_trials import run_trials

        cfg = load_config(args.config, args.overrides)
        rows = decode_all(args.searches)
        distinct = {genotype_label(g): g for r in rows for g in r["genotypes"].values()}
        connect_ray(args.address)
        trials = [{"label": k, "genotype": g, "seed": s} for k, g in distinct.items() for s in args.eval_seeds]
        metrics = run_trials(cfg, trials, args.runs or storage.join(args.out, "runs"),
                             in_process=cfg.selection.in_process, report=True)
        result = summarize(rows, metrics, args.eval_seeds)
        write_json(storage.join(args.out, "decoding.json"), result)
    print(f"{result['searches']} searches, {len(distinct)} distinct genotypes")
    for name, d in result["decodings"].items():
        low, high = d["minus_paper"]["ci95"]
        print(f"{name}: test mIoU {d['test_miou']:.4f}, minus paper {d['minus_paper']['mean']:+.4f} "
              f"[{low:+.4f}, {high:+.4f}], param-free ops {d['param_free_ops']:.1f}, deepest level "
              f"{d['path_depth']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
