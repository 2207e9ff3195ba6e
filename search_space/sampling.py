"""Uniform random genotypes: the random-search baseline of NAS (Li and Talwalkar 2019, "Random Search and
Reproducibility for Neural Architecture Search"; Yu et al. 2020, "Evaluating the Search Phase of NAS").

The space is that of `Genotype` in its canonical form, the form `decode_cell` and `decode_path` produce:

- path: a level sequence over the L layers that starts from level 0 (the stem) and moves at most one level
  per layer (`_check_path` in search_space/genotypes.py). Paths are counted by dynamic programming and drawn
  exactly uniformly, one layer at a time, each next level weighted by how many legal paths continue from it.
- cell: per block, two distinct inputs among the ``block + 2`` available (an unordered pair, listed by input
  index) and on each a non-zero op of `PRIMITIVES`, all drawn uniformly and independently.

Every function takes an explicit `random.Random`, or a seed, so a draw is reproducible.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable

from search_space.genotypes import Block, Genotype
from search_space.operations import PRIMITIVES
from search_space.trellis import DIRECTIONS, NUM_LEVELS

CELL_OPS: tuple[str, ...] = tuple(op for op in PRIMITIVES if op != "none")
"""The ops a sampled (or decoded) cell may hold: every primitive but the zero op."""


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _next_levels(level: int) -> tuple[int, ...]:
    """Levels reachable from ``level`` in one layer, lowest first."""
    return tuple(level + step for step in sorted(DIRECTIONS) if 0 <= level + step < NUM_LEVELS)


def _continuations(layers: int) -> list[list[int]]:
    """``ways[l][level]``: legal ways to fill layers l+1..L when layer l (0 = stem) is at ``level``."""
    ways = [[1] * NUM_LEVELS]
    for _ in range(layers):
        after = ways[0]
        ways.insert(0, [sum(after[nxt] for nxt in _next_levels(level)) for level in range(NUM_LEVELS)])
    return ways


def count_paths(layers: int) -> int:
    """Number of legal paths through ``layers`` layers, by dynamic programming (no enumeration)."""
    _check_positive("layers", layers)
    return _continuations(layers)[0][0]


def legal_paths(layers: int) -> list[tuple[int, ...]]:
    """Every legal path through ``layers`` layers, in lexicographic order (use for small ``layers``)."""
    _check_positive("layers", layers)
    paths: list[tuple[int, ...]] = [()]
    for _ in range(layers):
        paths = [p + (nxt,) for p in paths for nxt in _next_levels(p[-1] if p else 0)]
    return paths


def sample_path(layers: int, rng: random.Random) -> tuple[int, ...]:
    """A path drawn uniformly among the `count_paths` legal ones (exactly: integer weights, no floats)."""
    _check_positive("layers", layers)
    ways = _continuations(layers)
    level, path = 0, []
    for layer in range(layers):
        pick = rng.randrange(ways[layer][level])
        for nxt in _next_levels(level):
            if pick < ways[layer + 1][nxt]:
                break
            pick -= ways[layer + 1][nxt]
        level = nxt
        path.append(level)
    return tuple(path)


def count_cells(blocks: int) -> int:
    """Number of distinct canonical cells of ``blocks`` blocks: per block, C(block+2, 2) pairs x ops^2."""
    _check_positive("blocks", blocks)
    return math.prod(math.comb(b + 2, 2) * len(CELL_OPS) ** 2 for b in range(blocks))


def legal_cells(blocks: int) -> list[tuple[Block, ...]]:
    """Every canonical cell of ``blocks`` blocks (there are `count_cells`: use for ``blocks`` <= 2)."""
    _check_positive("blocks", blocks)
    per_block = [
        [((op_a, a), (op_b, b)) for a, b in itertools.combinations(range(i + 2), 2)
         for op_a in CELL_OPS for op_b in CELL_OPS]
        for i in range(blocks)
    ]
    return list(itertools.product(*per_block))


def sample_cell(blocks: int, rng: random.Random) -> tuple[Block, ...]:
    """A cell drawn uniformly: per block an unordered pair of distinct inputs, each with a uniform non-zero op."""
    _check_positive("blocks", blocks)
    cell = []
    for b in range(blocks):
        first, second = sorted(rng.sample(range(b + 2), 2))
        cell.append(((rng.choice(CELL_OPS), first), (rng.choice(CELL_OPS), second)))
    return tuple(cell)


def space_size(layers: int, blocks: int) -> int:
    """Number of distinct genotypes `sample_genotype` can return: paths x cells."""
    return count_paths(layers) * count_cells(blocks)


def sample_genotype(layers: int, blocks: int, rng: random.Random) -> Genotype:
    """A genotype drawn uniformly from the space of `space_size` genotypes."""
    return Genotype(cell=sample_cell(blocks, rng), path=sample_path(layers, rng))


def _canonical(genotype: Genotype) -> Genotype:
    """``genotype`` with each block's pair listed by input index, as `decode_cell` and `sample_cell` list it."""
    cell = tuple(tuple(sorted(block, key=lambda pair: (pair[1], pair[0]))) for block in genotype.cell)
    return Genotype(cell=cell, path=genotype.path)


def _in_space(genotype: Genotype, layers: int, blocks: int) -> bool:
    return (genotype.layers == layers and genotype.blocks == blocks
            and all(block[0][1] != block[1][1] for block in genotype.cell))


def sample_genotypes(layers: int, blocks: int, k: int, seed: int,
                     exclude: Iterable[Genotype] = ()) -> list[Genotype]:
    """``k`` distinct uniform genotypes, none of them in ``exclude``; the same list for the same arguments.

    Args:
        layers: L, the path length.
        blocks: B, the blocks per cell.
        k: how many genotypes to return.
        seed: seeds the `random.Random` that draws them.
        exclude: genotypes never to return (e.g. already evaluated ones); the order of a block's two pairs
            does not matter.

    Raises:
        ValueError: when fewer than ``k`` genotypes of the space are left once ``exclude`` is taken out.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    seen = {_canonical(g) for g in exclude}
    excluded = sum(_in_space(g, layers, blocks) for g in seen)
    available = space_size(layers, blocks) - excluded
    if k > available:
        raise ValueError(
            f"cannot draw {k} distinct genotypes: the space of layers={layers}, blocks={blocks} holds "
            f"{space_size(layers, blocks)}, of which {excluded} are excluded, leaving {available}"
        )
    rng = random.Random(seed)
    drawn: list[Genotype] = []
    while len(drawn) < k:  # rejection: terminates, since k <= available
        genotype = sample_genotype(layers, blocks, rng)
        if genotype not in seen:
            seen.add(genotype)
            drawn.append(genotype)
    return drawn


# ------------------------------------------------------------------------------------------------ tilted
# Genotypes drawn from what a search learned, over the same canonical space: P(genotype) proportional to
# exp((sum of the centred beta logits on its path + sum of the alpha log-probabilities of its chosen (edge, op)
# pairs) / temperature). Beta is centred per node (minus the mean over the node's legal outgoing edges), alpha is
# log-softmaxed per edge over all of PRIMITIVES (so an edge strong in `none` is drawn less, as `decode_cell`
# ranks it lower). With flat alpha and beta this is exactly the uniform draw above; as the search learns it
# concentrates on what alpha and beta prefer. Unlike beta's transition probabilities (normalized per node, which
# favour the levels with two outgoing edges when beta is flat) it adds no prior of its own.


def _path_weights(beta: list, temperature: float) -> list[list[float]]:
    """``w[l][level]``: the summed tilt of the legal ways to fill layers l+1..L from ``level`` at layer l."""
    layers = len(beta)
    w = [[1.0] * NUM_LEVELS]
    for layer in reversed(range(layers)):
        after = w[0]
        w.insert(0, [sum(math.exp(beta[layer][level][d] / temperature) * after[level + step]
                         for d, step in enumerate(DIRECTIONS) if 0 <= level + step < NUM_LEVELS)
                     for level in range(NUM_LEVELS)])
    return w


def _centred_beta(beta: list) -> list:
    """Each node's legal outgoing logits minus their mean (softmax is blind to a per-node shift)."""
    out = []
    for layer in beta:
        rows = []
        for level, row in enumerate(layer):
            legal = [d for d, step in enumerate(DIRECTIONS) if 0 <= level + step < NUM_LEVELS]
            mean = sum(row[d] for d in legal) / len(legal)
            rows.append([v - mean for v in row])
        out.append(rows)
    return out


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


def _pick(weights: list[float], rng: random.Random) -> int:
    r, total = rng.random() * sum(weights), 0.0
    for i, weight in enumerate(weights):
        total += weight
        if r < total:
            return i
    return len(weights) - 1


def sample_tilted_path(beta: list, rng: random.Random, temperature: float = 1.0) -> tuple[int, ...]:
    """A path drawn with probability proportional to exp(sum of its beta logits / temperature); ``beta`` is
    ``[layers][levels][directions]`` (nested lists or a tensor)."""
    beta = _centred_beta(beta.tolist() if hasattr(beta, "tolist") else beta)
    w = _path_weights(beta, temperature)
    level, path = 0, []
    for layer in range(len(beta)):
        moves = [(level + step, math.exp(beta[layer][level][d] / temperature) * w[layer + 1][level + step])
                 for d, step in enumerate(DIRECTIONS) if 0 <= level + step < NUM_LEVELS]
        level = moves[_pick([m[1] for m in moves], rng)][0]
        path.append(level)
    return tuple(path)


def sample_tilted_cell(alpha: list, rng: random.Random, temperature: float = 1.0) -> tuple[Block, ...]:
    """A cell drawn with probability proportional to exp(sum of the alpha logits of its (edge, op) choices /
    temperature); ``alpha`` is ``[edges][len(PRIMITIVES)]`` (nested lists or a tensor), edges block by block."""
    alpha = [_log_softmax(row) for row in (alpha.tolist() if hasattr(alpha, "tolist") else alpha)]
    ops = [PRIMITIVES.index(op) for op in CELL_OPS]
    cell, start, block = [], 0, 0
    while start < len(alpha):
        inputs = block + 2
        op_w = [[math.exp(alpha[start + j][k] / temperature) for k in ops] for j in range(inputs)]
        pairs = list(itertools.combinations(range(inputs), 2))
        a, b = pairs[_pick([sum(op_w[a]) * sum(op_w[b]) for a, b in pairs], rng)]
        cell.append(((CELL_OPS[_pick(op_w[a], rng)], a), (CELL_OPS[_pick(op_w[b], rng)], b)))
        start, block = start + inputs, block + 1
    return tuple(cell)


def sample_tilted_genotypes(alpha: list, beta: list, k: int, seed: int, temperature: float = 1.0,
                            first: Genotype | None = None, max_draws: int = 10_000) -> list[Genotype]:
    """Up to ``k`` distinct genotypes: ``first`` (e.g. the decoded one) if given, then tilted draws, in the order
    drawn; fewer than ``k`` only when ``max_draws`` draws found no more distinct ones."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = random.Random(seed)
    drawn = [_canonical(first)] if first is not None else []
    seen = set(drawn)
    for _ in range(max_draws):
        if len(drawn) >= k:
            break
        genotype = Genotype(cell=sample_tilted_cell(alpha, rng, temperature),
                            path=sample_tilted_path(beta, rng, temperature))
        if genotype not in seen:
            seen.add(genotype)
            drawn.append(genotype)
    return drawn[:k]
