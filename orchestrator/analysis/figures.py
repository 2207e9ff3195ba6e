"""Pictures of a decoded architecture: the network path over the L x 4 trellis, several paths on one trellis
(the best trials of a sweep), and the cell's DAG.

Each returns a matplotlib figure (Agg backend, no display needed); `orchestrator.io.atomic.save_figure` writes them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from search_space.genotypes import RATES, Genotype  # noqa: E402
from search_space.trellis import reachable_levels  # noqa: E402


def trellis_axes(ax, layers: int, title: str) -> None:
    """Layers left to right (the stem first), downsample rates top to bottom."""
    ax.set_xticks(range(layers + 1), ["stem", *[str(i) for i in range(1, layers + 1)]])
    ax.set_yticks(range(len(RATES)), [f"1/{r}" for r in RATES])
    ax.invert_yaxis()
    ax.set_xlabel("layer")
    ax.set_ylabel("downsample rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def path_figure(genotype: Genotype, title: str = "decoded network path"):
    """The trellis (layers x rates) with reachable nodes as dots and the decoded path drawn over it."""
    layers = genotype.layers
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * layers + 1.5), 3.0))
    for layer in range(layers + 1):
        for level in reachable_levels(layer):
            ax.plot(layer, level, "o", color="0.8", markersize=6, zorder=1)
    xs = list(range(layers + 1))
    ys = [0, *genotype.path]
    ax.plot(xs, ys, "-o", color="tab:red", linewidth=2.5, markersize=8, zorder=2)
    trellis_axes(ax, layers, title)
    return fig


def cell_figure(genotype: Genotype, title: str = "decoded cell"):
    """The cell as a DAG: inputs H^{l-2}, H^{l-1} on the left, blocks in order, concat on the right."""
    blocks = genotype.blocks
    names = ["H(l-2)", "H(l-1)"] + [f"B{b + 1}" for b in range(blocks)]
    pos = {0: (0.0, 1.6), 1: (0.0, -1.6)}
    for b in range(blocks):
        pos[b + 2] = (1.8 + 1.8 * b, 0.7 if b % 2 == 0 else -0.7)
    out = (1.8 + 1.8 * blocks, 0.0)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * blocks, 3.6))
    colors = plt.get_cmap("tab10")
    ops = sorted({op for block in genotype.cell for op, _ in block})
    for b, block in enumerate(genotype.cell):
        for op, inp in block:
            (x0, y0), (x1, y1) = pos[inp], pos[b + 2]
            color = colors(ops.index(op) % 10)
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", color=color, lw=1.8, shrinkA=14, shrinkB=14,
                                        connectionstyle="arc3,rad=0.15"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, op, fontsize=7, color=color, ha="center", va="center",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))
        ax.annotate("", xy=out, xytext=pos[b + 2],
                    arrowprops=dict(arrowstyle="->", color="0.7", lw=0.8, shrinkA=14, shrinkB=14))
    for k, (x, y) in pos.items():
        ax.text(x, y, names[k], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", facecolor="lightyellow" if k < 2 else "lightblue"))
    ax.text(*out, "concat", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", facecolor="0.9"))
    ax.set_xlim(-0.8, out[0] + 0.8)
    ax.set_ylim(-2.2, 2.2)
    ax.axis("off")
    ax.set_title(title)
    return fig


def paths_figure(paths: list[tuple[str, Genotype]], title: str = "decoded paths"):
    """Several decoded paths on one trellis (e.g. the best trials of a sweep), each in its colour, slightly
    offset so shared segments stay visible; the labels go to the legend."""
    layers = max(g.layers for _, g in paths)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * layers + 1.5), 3.0 + 0.25 * len(paths)))
    for layer in range(layers + 1):
        for level in reachable_levels(layer):
            ax.plot(layer, level, "o", color="0.8", markersize=6, zorder=1)
    colors = plt.get_cmap("tab10")
    for i, (label, genotype) in enumerate(paths):
        offset = 0.08 * (i - (len(paths) - 1) / 2)
        ys = [level + offset for level in (0, *genotype.path)]
        ax.plot(range(genotype.layers + 1), ys, "-o", color=colors(i % 10), linewidth=2, markersize=5,
                label=label, zorder=2 + i)
    trellis_axes(ax, layers, title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, frameon=False)
    return fig


def validation_figure(result: dict):
    """Retrain mIoU of every random architecture (dots, one per architecture's mean) with each searched
    genotype marked (a line at its mean, its seeds as crosses)."""
    fig, ax = plt.subplots(figsize=(7.0, 3.0))
    rows = result["architectures"]
    random_means = [r["mean"] for r in rows if r["label"].startswith("random-")]
    ax.plot(random_means, [0] * len(random_means), "o", color="0.5", alpha=0.7, label="random (mean over seeds)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(result["searched"]):
        color = colors[i % len(colors)]
        ax.axvline(s["mean"], color=color, linewidth=2,
                   label=f"{s['experiment']} (percentile {s['percentile']:.0f})")
        ax.plot(s["test_miou"], [0.1 + 0.05 * i] * len(s["test_miou"]), "x", color=color)
    ax.set_yticks([])
    ax.set_ylim(-0.3, 0.6)
    ax.set_xlabel("retrain test mIoU (evaluation seeds)")
    ax.set_title("searched genotypes against random ones from the same space")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
