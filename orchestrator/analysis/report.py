"""The text sections of an experiment's report besides the leaderboard: header, search diagnostics, the final
retrain (with its candidates' short retrains) and the validation against random architectures."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.analysis.experiment import Experiment
from orchestrator.analysis.leaderboard import fmt, format_table, is_missing, rates_text
from search_space.genotypes import RATES, Genotype
from search_space.operations import PRIMITIVES


def header_text(exp: Experiment) -> str:
    """Where the experiment is, its state and why, its metric and how much was read."""
    trials = len(set(exp.frame["trial_id"])) if "trial_id" in exp.frame else 0
    return (f"experiment {exp.path}\nstate: {exp.state} ({exp.state_reason})\n"
            f"metric: {exp.metric} ({exp.mode}); epochs per trial: {fmt(exp.max_epochs)}; "
            f"{len(exp.frame)} epoch records from {trials} trials; {len(exp.tune_trials)} trials in Tune's state")


def cell_text(genotype: dict[str, Any] | Genotype) -> str:
    """``B1 = op(input) + op(input); ...`` for a genotype (object or its dict)."""
    cell = genotype.cell if isinstance(genotype, Genotype) else genotype["cell"]
    names = ["H(l-2)", "H(l-1)"] + [f"B{b + 1}" for b in range(len(cell))]
    return "; ".join(f"B{b + 1} = " + " + ".join(f"{op}({names[inp]})" for op, inp in block)
                     for b, block in enumerate(cell))


def final_text(exp: Experiment) -> str:
    """The final retrain result from final/summary.json, or a line saying there is none."""
    summary = exp.summary
    if summary is None:
        return "final retrain: none yet (no final/summary.json)"
    retrain, search = summary.get("retrain") or {}, summary.get("search") or {}
    genotype = summary.get("genotype") or {}
    hp = " ".join(f"{k}={fmt(v)}" for k, v in sorted((summary.get("hyperparameters") or {}).items()))
    lines = [f"final retrain of trial {summary.get('best_trial')} ({hp or 'no swept keys'}; search "
             f"{search.get('metric', exp.metric)}={fmt(search.get('value'))}):",
             f"  retrained {fmt(retrain.get('epochs'))} epochs in {fmt(retrain.get('seconds'))} s: "
             f"val_miou={fmt(retrain.get('val_miou'))}" + (f" test_miou={fmt(retrain['test_miou'])}"
                                                          if retrain.get("test_miou") is not None else "")]
    splits = summary.get("splits") or {}
    if splits:
        lines.append(f"  val_* on {splits.get('val')} (what selection reads); test_* on {splits.get('test')} "
                     "(read by nothing that chooses)")
    if retrain.get("error"):
        lines.append(f"  error: {retrain['error']}")
    if genotype.get("path"):
        lines.append("  path (rates): " + rates_text(genotype["path"]))
    if genotype.get("cell"):
        lines.append("  cell: " + cell_text(genotype))
    return "\n".join(lines + selection_lines(summary))


def selection_lines(summary: dict[str, Any]) -> list[str]:
    """The short retrains of the final step's candidates (summary's ``selection.short_retrains``), if any."""
    table = ((summary.get("selection") or {}).get("short_retrains")) or {}
    rows = table.get("candidates") or []
    if not rows:
        return []
    shown = ["val_miou", "val_loss", "train_loss"]
    body = [[r["label"] + (" (winner)" if r["label"] == table.get("winner") else ""), rates_text(r["path"]),
             fmt(r.get("epochs")), *(fmt(r.get(k)) for k in shown)] for r in rows]
    seeds = table.get("seeds", 1)
    each = f", {seeds} seeds each, their mean shown" if seeds > 1 else ""
    return [f"  selection: {len(rows)} candidates short-retrained ({table.get('short_epochs')} epochs{each}, ranked "
            f"by {table.get('metric', 'val_miou')}; candidate-0 is the decoded genotype):",
            "    " + format_table(["candidate", "path (rates)", "epochs", *shown], body).replace("\n", "\n    ")]


DIAGNOSTIC_WINDOW = 5
"""The last epochs in which `diagnostics_text` counts genotype changes."""

UNSETTLED = 0.98
"""Alpha entropy above this fraction of uniform's: the op weights have not moved enough to mean anything."""


def diagnostics_text(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    """Per trial, the search's health at its last epoch: parameter-free ops in the decoded cell (DARTS
    collapse), alpha and beta entropy, the path's deepest rate, and how many of the last epochs changed the
    genotype; then how many distinct genotypes the trials (e.g. search seeds) ended with."""
    frame = exp.frame
    if frame.empty or "param_free_ops" not in frame:
        return ""
    body = []
    for row in rows:
        group = frame[frame["trial_id"] == row["trial_id"]].sort_values("epoch")
        if group.empty:
            continue
        last, recent = group.iloc[-1], group.tail(DIAGNOSTIC_WINDOW)
        changed = int(recent["genotype_changed"].fillna(False).astype(bool).sum()) if "genotype_changed" in recent \
            else None
        depth = last.get("path_depth")
        body.append([row["trial_id"], fmt(last.get("param_free_ops")), fmt(last.get("alpha_entropy"), 3),
                     fmt(last.get("beta_entropy"), 3),
                     "-" if is_missing(depth) else str(RATES[int(depth)]), f"{fmt(changed)}/{len(recent)}"])
    genotypes = [r["genotype"] for r in rows if r.get("genotype")]
    table = format_table(["trial", "param-free ops", "alpha H", "beta H", "deepest rate",
                          "genotype changes (last epochs)"], body)
    text = (f"search diagnostics at each trial's last epoch:\n{table}\n{len(genotypes)} trials ended with "
            f"{len(set(genotypes))} distinct genotypes")
    uniform = math.log(len(PRIMITIVES))
    last_alpha = frame.sort_values("epoch").groupby("trial_id")["alpha_entropy"].last()
    if len(last_alpha) and bool((last_alpha > UNSETTLED * uniform).all()):
        text += (f"\nalpha entropy is within {100 * (1 - UNSETTLED):.0f}% of uniform (ln {len(PRIMITIVES)} = "
                 f"{uniform:.2f}) in every trial: alpha has barely moved, so the decoded cell is close to a random "
                 "draw (more arch steps, a larger search.arch_lr or a longer search move it)")
    return text


def validation_text(exp: Experiment) -> str:
    """The searched genotype against random ones, from the summary's ``validation`` (experiments/validate.py)."""
    v = (exp.summary or {}).get("validation")
    if not v:
        return ""
    lines = [f"validation ({v.get('file')}): {v['random_count']} random architectures retrain to mIoU "
             f"{fmt(v['random_mean'])} +- {fmt(v['random_sd'])}"]
    for s in v["searched"]:
        lines.append(f"  searched {s['experiment']}: {fmt(s['mean'])} +- {fmt(s['sd'])}, percentile "
                     f"{fmt(s['percentile'], 3)} among the random ones")
    taus = ", ".join(fmt(t, 2) for t in v.get("kendall_tau") or [])
    if taus:
        lines.append(f"  supernet ranking: Kendall tau {taus} (supernet score vs retrained mIoU)")
    return "\n".join(lines)
