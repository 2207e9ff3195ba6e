"""Read an experiment folder without Ray: a leaderboard, the per-epoch table, plots and a TensorBoard hparams view.

    adl analyze results/<name>                          # leaderboard, results.parquet, plots
    adl analyze results/a --compare results/b           # two sweeps side by side
    adl analyze --experiment 's3://bucket/adl/<name>?endpoint_override=127.0.0.1:5055&scheme=http' --out /tmp/a
    python -m orchestrator.analyze RESULTS_DIR [--compare OTHER_DIR] [--out DIR] [--top K] [--rank-by final|best]

``RESULTS_DIR`` (or ``--experiment DIR``) is ``<storage>/<name>`` of a sweep (finished, running or interrupted):
a local folder or a URI (``s3://bucket/prefix/<name>``, with ``?endpoint_override=host:port&scheme=http`` or
``AWS_ENDPOINT_URL`` for a server of your own), as are ``--out`` and ``--compare``; every file is read and written
through `orchestrator.io.storage`. The command prints the experiment's state and why, a leaderboard (trial,
hyperparameters, best and final supernet score, epochs run, status, decoded path) and the final retrain result
when ``final/summary.json`` exists, and writes into ``--out`` (default ``RESULTS_DIR/analysis/``):
``leaderboard.csv``, ``results.parquet`` (one row per trial-epoch) and the PNG plots of
`orchestrator.analysis.plots`. It also (re)writes ``RESULTS_DIR/tensorboard/hparams/``: one TensorBoard hparams
session per trial (`write_hparams_view`). Nothing else in the experiment folder is touched.

This module ties the others together: `orchestrator.analysis.read` (the sources read),
`orchestrator.analysis.state` (finished, running or interrupted, and how that is decided),
`orchestrator.analysis.trials` and `orchestrator.analysis.leaderboard` (trial status, ranking, the table),
`orchestrator.analysis.report` (the other text sections) and `orchestrator.analysis.outputs` (the files written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.analysis.experiment import Experiment, NotAnExperimentError, base_name, folder
from orchestrator.analysis.leaderboard import fmt, format_table, leaderboard_text, rates_text
from orchestrator.analysis.outputs import ANALYSIS_DIR, write_compare_csv, write_hparams_view, write_outputs
from orchestrator.analysis.read import load_experiment
from orchestrator.analysis.report import cell_text, diagnostics_text, final_text, header_text, validation_text
from orchestrator.analysis.trials import rank_trials
from orchestrator.io import storage


@dataclass
class Analysis:
    """What `analyze` read and wrote for one experiment."""

    experiment: Experiment
    rows: list[dict[str, Any]]
    files: list[Path | str]  # a URI for each file written to one
    text: str


def analyze(path: str | os.PathLike, out: str | os.PathLike | None = None, top: int = 3, rank_by: str = "final",
            now: float | None = None, hparams_view: bool = True) -> Analysis:
    """Read one experiment, write its outputs into ``out`` (default ``<path>/analysis``) and return the report.

    Args:
        path: the experiment folder, local or a URI.
        out: where leaderboard.csv, results.parquet and the plots go, local or a URI.
        top: draw alpha, beta and paths for this many best trials (0: all).
        rank_by: ``final`` (last reported score, as the sweep picks its best trial) or ``best`` (peak score).
        now: judge running/interrupted against this time (default: the clock).
        hparams_view: also (re)write the TensorBoard hparams view in ``<path>/tensorboard/hparams``.
    """
    exp = load_experiment(path, now)
    rows = rank_trials(exp, rank_by)
    parts = [header_text(exp)]
    if exp.table.num_rows == 0:
        known = "; Tune knows the trials listed below" if exp.tune_trials else ""
        parts.append("no epoch records yet (no records/, trial-*/result.json or train-*/epochs/ entries): nothing "
                     f"to plot{known}")
    parts += [leaderboard_text(rows, exp.metric, exp.mode, rank_by) if rows else "", diagnostics_text(exp, rows),
              final_text(exp), validation_text(exp)]
    out = folder(out) if out is not None else folder(storage.join(exp.path, ANALYSIS_DIR))
    files = write_outputs(exp, rows, out, top)
    parts.append(f"wrote to {out}: " + ", ".join(_relative(f, out) for f in files))
    if hparams_view and exp.table.num_rows:
        try:
            files.append(write_hparams_view(exp, rows))
            parts[-1] += f"\nTensorBoard hparams view: tensorboard --logdir {files[-1]}"
        except OSError as err:
            parts.append(f"warning: no TensorBoard hparams view ({err})")
    return Analysis(exp, rows, files, "\n\n".join(p for p in parts if p))


def _relative(file: str | os.PathLike, base: str | os.PathLike) -> str:
    """``file`` relative to the folder ``base``: `os.path.relpath` locally, the part of a URI's path after
    ``base``'s (both built by `orchestrator.io.storage.join`, so both end in the same query)."""
    if storage.local_path(base) is not None:
        return os.path.relpath(file, base)
    inner, outer = storage.resolve(file)[1], storage.resolve(base)[1]
    return inner[len(outer):].lstrip("/") if inner.startswith(outer + "/") else os.fspath(file)


def _best_row(analysis: Analysis) -> dict[str, Any] | None:
    top = analysis.rows[0] if analysis.rows else None
    return top if top is not None and (top["final"] is not None or top["best"] is not None) else None


def compare_rows(a: Analysis, b: Analysis) -> list[list[str]]:
    """Side-by-side facts of two experiments: state, best trial and score, final retrain, decoded genotype."""
    def facts(an: Analysis) -> dict[str, str]:
        exp, best, summary = an.experiment, _best_row(an), an.experiment.summary or {}
        genotype = summary.get("genotype") or (json.loads(best["genotype"]) if best and best["genotype"] else {})
        return {
            "state": exp.state, "trials": str(len(an.rows)), "metric": f"{exp.metric} ({exp.mode})",
            "best trial": best["trial_id"] if best else "-",
            "hyperparameters": " ".join(f"{k}={fmt(v)}" for k, v in sorted(best["config"].items())) if best else "-",
            "final score": fmt(best["final"]) if best else "-", "best score": fmt(best["best"]) if best else "-",
            "epochs": str(best["epochs"]) if best else "-",
            "retrain val_miou": fmt((summary.get("retrain") or {}).get("val_miou")),
            "path (rates)": rates_text(genotype.get("path")) or "-",
            "cell": cell_text(genotype) if genotype.get("cell") else "-",
        }

    fa, fb = facts(a), facts(b)
    same = "-" if "-" in (fa["cell"], fb["cell"]) else (
        "yes" if (fa["cell"], fa["path (rates)"]) == (fb["cell"], fb["path (rates)"]) else "no")
    return [[key, fa[key], fb[key]] for key in fa] + [["same genotype", same, same]]


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    from orchestrator.cli import command_parser

    parser = command_parser(__doc__.split("\n\nThis module")[0], prog or "python -m orchestrator.analyze")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?",
                        help="the experiment folder, <storage>/<name> (or give it as --experiment)")
    parser.add_argument("--experiment", metavar="DIR", help="the experiment folder, as RESULTS_DIR")
    parser.add_argument("--compare", metavar="OTHER_DIR", help="a second experiment to compare with")
    parser.add_argument("--out", metavar="DIR", help="output folder; default RESULTS_DIR/analysis (with --compare, "
                                                     "the other experiment's go to DIR/compare-<name>)")
    parser.add_argument("--top", type=int, default=3, help="alpha/beta/path plots for the K best trials (0: all)")
    parser.add_argument("--rank-by", choices=("final", "best"), default="final",
                        help="rank by the last reported score (default; what the sweep picks by with "
                             "tune.rank_by: supernet) or the peak score")
    args = parser.parse_args(argv)
    if args.experiment and args.results_dir and args.experiment != args.results_dir:
        parser.error(f"two experiment folders: RESULTS_DIR {args.results_dir} and --experiment {args.experiment}")
    args.results_dir = args.experiment = args.results_dir or args.experiment
    if not args.results_dir:
        parser.error("the experiment folder is required: RESULTS_DIR or --experiment DIR")
    for given in filter(None, (args.results_dir, args.compare, args.out)):
        try:
            folder(given)
        except ValueError as err:  # a URI that lost its '//' (to pathlib, say)
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl analyze`` (``python -m orchestrator.analyze``)."""
    args = parse_args(argv, prog)
    try:
        first = analyze(args.results_dir, args.out, args.top, args.rank_by)
        print(first.text, flush=True)
        if args.compare:
            other_out = storage.join(args.out, f"compare-{base_name(args.compare)}") if args.out else None
            second = analyze(args.compare, other_out, args.top, args.rank_by)
            print("\n" + "=" * 100 + "\n\n" + second.text, flush=True)
            rows = compare_rows(first, second)
            names = (str(first.experiment.path), str(second.experiment.path))
            out = args.out if args.out else storage.join(first.experiment.path, ANALYSIS_DIR)
            written = write_compare_csv(rows, names, storage.join(out, "compare.csv"))
            print("\n" + format_table(["", first.experiment.name, second.experiment.name], rows)
                  + f"\n\nwrote: {written}", flush=True)
    except NotAnExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the analysis: {err}; pass --out to write elsewhere", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
