"""The plots of `python -m orchestrator.analyze`, each a PNG written atomically (`orchestrator.io.atomic.save_figure`)
into a local folder or a URI:

- ``curves.png``: the sweep's metric (and ``val_loss``) per epoch, one line per trial; an ``x`` marks the last
  epoch of a trial the scheduler stopped early.
- ``alpha-<trial>.png``: softmax(alpha) over epochs, one panel per cell edge (rows: ops, columns: epochs;
  the colour scale spans the values drawn).
- ``beta-<trial>.png``: the transition probabilities of beta over epochs, one panel per layer (rows: the legal
  edges ``rate -> next rate`` out of that layer, columns: epochs).
- ``paths.png``: the decoded paths of the best trials on the L x 4 trellis.
- ``hparams.png``: each swept hyperparameter against the final (filled) and best (hollow) score.

Alpha and beta plots are drawn for the ``top`` best trials of the leaderboard (all trials when ``top`` is 0).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator.analysis.figures import paths_figure  # noqa: E402
from orchestrator.analysis.leaderboard import param_keys  # noqa: E402
from orchestrator.io import storage  # noqa: E402
from orchestrator.io.atomic import save_figure  # noqa: E402
from search_space.cell_edges import blocks_for_edges, edge_inputs  # noqa: E402
from search_space.genotypes import RATES, Genotype, GenotypeError  # noqa: E402
from search_space.operations import PRIMITIVES  # noqa: E402
from search_space.trellis import DIRECTIONS, NUM_LEVELS, reachable_levels  # noqa: E402


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def trial_label(row: dict[str, Any]) -> str:
    """``#rank trial key=value ...`` with the last part of each dotted key."""
    hp = " ".join(f"{_short(k)}={v:.3g}" if isinstance(v, float) else f"{_short(k)}={v}"
                  for k, v in sorted(row["config"].items()))
    return f"#{row['rank']} {row['trial_id']} {hp}".rstrip()


def _trial_frame(frame: pd.DataFrame, trial_id: str) -> pd.DataFrame:
    return frame[frame["trial_id"] == trial_id].sort_values("epoch")


def curves_figure(frame: pd.DataFrame, rows: list[dict[str, Any]], metric: str):
    """The metric (and val_loss, if recorded) per epoch, one line per trial in rank order."""
    keys = [metric] + [k for k in ("val_loss",) if k in frame and k != metric]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, key in zip(axes[0], keys, strict=True):
        for i, row in enumerate(r for r in rows if r["epochs"] > 0):
            group = _trial_frame(frame, row["trial_id"])
            ax.plot(group["epoch"], group[key], "-o", markersize=3, color=colors(i % 10),
                    label=trial_label(row) if ax is axes[0][0] else None)
            if row["stopped_early"]:
                ax.plot(group["epoch"].iloc[-1], group[key].iloc[-1], "x", color=colors(i % 10), markersize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_title(f"{metric} per trial (x: stopped early)")
    if len(rows) <= 20:
        fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.nanmax(x, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def edge_labels(edges: int) -> list[str]:
    """``B<b> <- <input>`` for each row of alpha (block b has inputs H(l-2), H(l-1) and blocks before it)."""
    try:
        blocks = blocks_for_edges(edges)
    except ValueError:
        return [f"edge {e}" for e in range(edges)]
    names = ["H(l-2)", "H(l-1)"] + [f"B{b + 1}" for b in range(blocks)]
    return [f"B{b + 1} <- {names[i]}" for b, i in edge_inputs(blocks)]


def _epoch_ticks(ax, epochs: list[int]) -> None:
    step = max(1, math.ceil(len(epochs) / 8))
    ax.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]], fontsize=7)


def _panels(count: int, cols: int, width: float, height: float):
    ncols = min(count, cols)
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 1.2, height * nrows + 0.8), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, axes.flat[:count]


def alpha_figure(group: pd.DataFrame, title: str):
    """softmax(alpha) per cell edge over epochs: a panel per edge, ops down, epochs across."""
    probs = _softmax(np.array(group["alpha"].tolist(), dtype=float))  # [epochs, edges, ops]
    epochs = [int(e) for e in group["epoch"]]
    ops = PRIMITIVES if probs.shape[2] == len(PRIMITIVES) else [str(k) for k in range(probs.shape[2])]
    fig, axes = _panels(probs.shape[1], 5, 2.3, 2.1)
    vmin, vmax = float(np.nanmin(probs)), float(np.nanmax(probs))  # the colour bar gives the scale
    for e, (ax, label) in enumerate(zip(axes, edge_labels(probs.shape[1]), strict=True)):
        im = ax.imshow(probs[:, e, :].T, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_yticks(range(len(ops)), ops if e % 5 == 0 else [""] * len(ops), fontsize=6)
        _epoch_ticks(ax, epochs)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="softmax(alpha)")
    fig.suptitle(title + " (columns: epochs)", fontsize=10)
    return fig


def beta_probs(beta: np.ndarray) -> np.ndarray:
    """Transition probabilities ``[..., L, 4, 3]`` of beta, as `search_space.trellis.transition_probs`."""
    import torch

    from search_space.trellis import transition_probs

    flat = torch.as_tensor(beta.reshape(-1, *beta.shape[-3:]), dtype=torch.float64)
    return np.stack([transition_probs(b).numpy() for b in flat]).reshape(beta.shape)


def layer_edges(layer: int) -> list[tuple[int, int]]:
    """``(level, direction)`` of every legal edge leaving ``layer`` (0 = stem)."""
    return [(level, d) for level in reachable_levels(layer) for d, step in enumerate(DIRECTIONS)
            if 0 <= level + step < NUM_LEVELS]


def beta_figure(group: pd.DataFrame, title: str):
    """Beta's transition probabilities over epochs: a panel per layer, its legal edges down, epochs across."""
    probs = beta_probs(np.array(group["beta"].tolist(), dtype=float))  # [epochs, L, 4, 3]
    epochs = [int(e) for e in group["epoch"]]
    layers = probs.shape[1]
    fig, axes = _panels(layers, 4, 3.0, 2.4)
    for layer, ax in enumerate(axes):
        edges = layer_edges(layer)
        grid = np.stack([probs[:, layer, level, d] for level, d in edges])
        im = ax.imshow(grid, aspect="auto", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_yticks(range(len(edges)), [f"1/{RATES[lv]} -> 1/{RATES[lv + DIRECTIONS[d]]}" for lv, d in edges],
                      fontsize=6)
        ax.set_title(f"{'stem' if layer == 0 else f'layer {layer}'} -> layer {layer + 1}", fontsize=8)
        _epoch_ticks(ax, epochs)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="transition probability")
    fig.suptitle(title + " (columns: epochs)", fontsize=10)
    return fig


def _log_scale(values: list[float], spec: dict[str, Any] | None) -> bool:
    if spec and "loguniform" in spec:
        return True
    return all(v > 0 for v in values) and max(values) / min(values) >= 10


def hparams_figure(rows: list[dict[str, Any]], keys: list[str], metric: str,
                   param_space: dict[str, dict] | None = None):
    """Each hyperparameter (x) against the final (filled) and best (hollow) score of every trial."""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys), 3.4), squeeze=False, sharey=True)
    scored = [r for r in rows if r["final"] is not None or r["best"] is not None]
    for ax, key in zip(axes[0], keys, strict=True):
        values = [r["config"].get(key) for r in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and values
        cats = sorted({str(v) for v in values})
        xs = [float(v) for v in values] if numeric else [cats.index(str(v)) for v in values]
        for x, r in zip(xs, scored, strict=True):
            if r["final"] is not None:
                ax.plot(x, r["final"], "o", color="tab:blue")
            if r["best"] is not None:
                ax.plot(x, r["best"], "o", mfc="none", color="tab:orange")
            ax.annotate(f"#{r['rank']}", (x, r["final"] if r["final"] is not None else r["best"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
        if numeric and _log_scale(xs, (param_space or {}).get(key)):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if numeric and len(set(xs)) <= 6:  # a grid: label exactly the values tried
            ax.set_xticks(sorted(set(xs)), [f"{v:g}" for v in sorted(set(xs))], fontsize=7)
        if not numeric:
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][0].plot([], [], "o", color="tab:blue", label=f"final {metric}")
    axes[0][0].plot([], [], "o", mfc="none", color="tab:orange", label=f"best {metric}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("hyperparameters against the score (#: leaderboard rank)", fontsize=10)
    fig.tight_layout()
    return fig


def _genotype(row: dict[str, Any]) -> Genotype | None:
    try:
        return Genotype.from_json(row["genotype"]) if row.get("genotype") else None
    except (GenotypeError, json.JSONDecodeError):
        return None


def write_plots(exp, rows: list[dict[str, Any]], out: str | os.PathLike, top: int) -> list[Path | str]:
    """Every plot of this module for an `orchestrator.analysis.experiment.Experiment` into ``out`` (a local
    folder or a URI); returns the files (a `Path` each, or a URI each)."""
    frame = exp.frame
    recorded = [r for r in rows if r["epochs"] > 0]
    chosen = recorded if top <= 0 else recorded[:top]
    files = [save_figure(curves_figure(frame, rows, exp.metric), storage.join(out, "curves.png"))] \
        if exp.metric in frame else []
    for row in chosen:
        group = _trial_frame(frame, row["trial_id"])
        label = trial_label(row)
        if "alpha" in group and group["alpha"].map(lambda a: isinstance(a, list)).all():
            figure = alpha_figure(group, f"alpha of {label}")
            files.append(save_figure(figure, storage.join(out, f"alpha-{row['trial_id']}.png")))
        if "beta" in group and group["beta"].map(lambda b: isinstance(b, list)).all():
            figure = beta_figure(group, f"beta of {label}")
            files.append(save_figure(figure, storage.join(out, f"beta-{row['trial_id']}.png")))
    paths = [(trial_label(r), g) for r in chosen if (g := _genotype(r)) is not None]
    if paths:
        files.append(save_figure(paths_figure(paths, f"decoded paths of the best {len(paths)} trials"),
                                 storage.join(out, "paths.png")))
    keys = param_keys(rows)
    if keys:
        figure = hparams_figure(rows, keys, exp.metric, exp.sweep.get("param_space"))
        files.append(save_figure(figure, storage.join(out, "hparams.png")))
    return files
