"""How well do short retrains rank architectures? The proxy behind `selection` (short retrains pick the winner),
measured against full retrains.

    python experiments/studies/proxy_fidelity.py --validation results/<v>/validation.json \\
        --config results/<experiment>/config.yaml --epochs 5 8 --out results/proxy

Every architecture of a finished validation (searched and random ones, with their full-budget retrain mIoU) is
short-retrained at each ``--epochs`` budget (the config's retrain section with ``retrain.epochs`` set to it and
its poly schedule compressed to it, as ``selection.short_epochs`` does, at ``runtime.seed``), in process as Tune
trials. Reported per budget and per proxy metric (the short retrain's last ``val_miou``, ``val_loss`` and
``train_loss``, as ``selection.metric`` may rank them): Kendall's tau between the proxy and the full mIoU, and
where the proxy's best architecture ranks at full budget. Writes ``proxy_fidelity.json`` to ``--out``; reruns
reuse finished runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from orchestrator.cli import HelpFormatter, address_argument, connect_ray, user_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--validation", required=True, help="a validation.json written by experiments/validate.py")
    parser.add_argument("--config", required=True, help="the experiment's config.yaml (its data and retrain)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5], help="short-retrain budgets (default 5)")
    parser.add_argument("--out", required=True, help="output folder (runs and proxy_fidelity.json)")
    address_argument(parser)
    return parser.parse_args(argv)


def read_architectures(path: str) -> list[dict]:
    """(label, genotype, full-budget mean mIoU) of every architecture a validation retrained."""
    from orchestrator.sweep.validation import ValidationError

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rows = [{"label": a["label"], "genotype": a["genotype"], "full": float(a["mean"])}
                for a in data["architectures"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValidationError(f"--validation {path}: not a validation.json of experiments/validate.py ({err})") \
            from None
    if len(rows) < 3:
        raise ValidationError(f"--validation {path}: {len(rows)} architectures; a ranking needs at least 3")
    return rows


def fidelity(rows: list[dict], short: dict[str, float], mode: str = "max") -> dict:
    """Kendall's tau of the short retrains' metric (better when higher with ``mode`` max, lower with min) against
    the full mIoU, and the full-budget rank of the short retrains' best."""
    from orchestrator.sweep.validation import kendall_tau, percentile

    labels = [r["label"] for r in rows]
    full = [r["full"] for r in rows]
    sign = 1.0 if mode == "max" else -1.0
    scores = [sign * short.get(label, float("nan")) for label in labels]
    best = max(range(len(rows)), key=lambda i: scores[i] if scores[i] == scores[i] else -math.inf)
    return {"kendall_tau": kendall_tau(scores, full), "picked": labels[best], "picked_full": full[best],
            "picked_percentile": percentile(full[best], full[:best] + full[best + 1:]),
            "short": {label: sign * score for label, score in zip(labels, scores, strict=True)}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        from orchestrator.config import SELECTION_METRICS, load_config, with_overrides
        from orchestrator.io.atomic import write_json
        from orchestrator.io.numbers import finite_or_nan
        from orchestrator.io.storage import check_writable
        from orchestrator.sweep.retrain_trials import run_trials

        rows = read_architectures(args.validation)
        cfg = load_config(args.config)
        check_writable(args.out, "--out")
        connect_ray(args.address)
        result = {"validation": os.path.abspath(args.validation), "architectures": len(rows), "budgets": {}}
        for epochs in args.epochs:
            short_cfg = with_overrides(cfg, {"retrain.epochs": epochs}, f"--epochs {epochs}")
            trials = [{"label": r["label"], "genotype": r["genotype"], "seed": cfg.runtime.seed} for r in rows]
            metrics = run_trials(short_cfg, trials, os.path.join(args.out, f"epochs-{epochs}"), in_process=True)
            budget = result["budgets"][str(epochs)] = {}
            for metric, mode in SELECTION_METRICS.items():
                short = {label: finite_or_nan(m.get(metric)) for (label, _), m in metrics.items()}
                b = budget[metric] = fidelity(rows, short, mode)
                print(f"{epochs} epochs, {metric}: kendall tau {b['kendall_tau']:.3f}; its best, {b['picked']}, "
                      f"retrains to {b['picked_full']:.4f} at full budget (percentile {b['picked_percentile']:.0f} "
                      "of the others)", flush=True)
        write_json(os.path.join(args.out, "proxy_fidelity.json"), result)
    print(f"\nproxy fidelity: {os.path.join(args.out, 'proxy_fidelity.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
