"""Decoding a searched supernet into a discrete architecture (paper Sec. 3.3 / 4.1, "Decoding").

- `decode_cell`: per block, the two strongest distinct predecessors, ranked by their largest non-zero op
  weight, each with its argmax non-zero op. Ties break towards the lower input index and the op listed
  first in `PRIMITIVES`, so decoding is deterministic.
- `decode_path`: Viterbi over the beta transition probabilities, starting from level 0 (rate 4) after the
  stem: the path with the highest product of transition probabilities.
"""

from __future__ import annotations

import torch

from search_space.cell_edges import blocks_for_edges, edge_offsets
from search_space.genotypes import Block
from search_space.operations import PARAMETER_FREE, PRIMITIVES
from search_space.trellis import DIRECTIONS, NUM_LEVELS, transition_probs


def decode_cell(alpha: torch.Tensor) -> tuple[Block, ...]:
    """The discrete cell for alpha of shape ``[edges, len(PRIMITIVES)]``."""
    if alpha.dim() != 2 or alpha.shape[1] != len(PRIMITIVES):
        raise ValueError(f"alpha must have shape [edges, {len(PRIMITIVES)}], got {list(alpha.shape)}")
    weights = torch.softmax(alpha.detach().float().cpu(), dim=-1)
    nonzero = [k for k, name in enumerate(PRIMITIVES) if name != "none"]
    weights = weights[:, nonzero]
    cell = []
    for block, start in enumerate(edge_offsets(blocks_for_edges(alpha.shape[0]))):
        inputs = block + 2
        w = weights[start:start + inputs]
        strength, best = w.max(dim=1)  # max returns the first maximum: lowest PRIMITIVES index on ties
        ranked = sorted(range(inputs), key=lambda j: (-float(strength[j]), j))[:2]
        cell.append(tuple((PRIMITIVES[nonzero[int(best[j])]], j) for j in sorted(ranked)))
    return tuple(cell)


def cap_param_free(cell: tuple[Block, ...], alpha: torch.Tensor, cap: int) -> tuple[Block, ...]:
    """``cell`` with at most ``cap`` parameter-free ops (`PARAMETER_FREE`: pools and skip): the weakest of the
    others (by softmax weight on their edge) each take the strongest op with weights on the same edge, inputs
    unchanged. A departure from the paper (P-DARTS and DARTS+ cap skip connections at 2 per cell against DARTS'
    collapse to parameter-free ops); `decode_cell` alone is the paper's decoding."""
    weights = torch.softmax(alpha.detach().float().cpu(), dim=-1)
    offsets = edge_offsets(len(cell))
    chosen = [(b, i, op, inp) for b, block in enumerate(cell) for i, (op, inp) in enumerate(block)]
    free = sorted((c for c in chosen if c[2] in PARAMETER_FREE),
                  key=lambda c: (float(weights[offsets[c[0]] + c[3], PRIMITIVES.index(c[2])]), c[0], c[1]))
    blocks = [list(block) for block in cell]
    with_weights = [k for k, name in enumerate(PRIMITIVES) if name != "none" and name not in PARAMETER_FREE]
    for b, i, _, inp in free[:max(len(free) - cap, 0)]:
        row = weights[offsets[b] + inp, with_weights]
        blocks[b][i] = (PRIMITIVES[with_weights[int(row.argmax())]], inp)
    return tuple(tuple(block) for block in blocks)


def decode_path(beta: torch.Tensor) -> tuple[int, ...]:
    """Viterbi: the level sequence (layers 1..L) with the highest product of transition probabilities."""
    return _viterbi(torch.log(transition_probs(beta.detach().float().cpu()).double()))


def _viterbi(log_p: torch.Tensor) -> tuple[int, ...]:
    """The path from level 0 with the largest sum of ``log_p[layer, source level, direction]`` (-inf: no edge);
    ties go to the lower source level, then (at the end) the lower level."""
    score = torch.full((NUM_LEVELS,), float("-inf"), dtype=torch.float64)
    score[0] = 0.0
    back = []
    for layer in range(log_p.shape[0]):
        new = torch.full((NUM_LEVELS,), float("-inf"), dtype=torch.float64)
        arg = [0] * NUM_LEVELS
        for level in range(NUM_LEVELS):
            for d, step in sorted(enumerate(DIRECTIONS), key=lambda e: -e[1]):  # the lower source first on ties
                src = level - step
                if 0 <= src < NUM_LEVELS:
                    cand = score[src] + log_p[layer, src, d]
                    if cand > new[level]:
                        new[level], arg[level] = cand, src
        score = new
        back.append(arg)
    level = int(torch.argmax(score))
    path = [level]
    for arg in reversed(back[1:]):
        level = arg[level]
        path.append(level)
    return tuple(reversed(path))


def centred_logits(beta: torch.Tensor) -> torch.Tensor:
    """beta minus, per node, the mean over its legal outgoing edges: ``[L, 4, 3]``, -inf on illegal edges. The
    softmax of a node's row is unchanged by the shift, but a sum of these along a path has no preference for the
    levels with two outgoing edges (rates 4 and 32), which the log transition probabilities have when beta is
    flat (each of their edges starts at log 1/2, the other levels' at log 1/3)."""
    logits = beta.detach().float().cpu().double()
    out = torch.full_like(logits, float("-inf"))
    for level in range(NUM_LEVELS):
        legal = [d for d, step in enumerate(DIRECTIONS) if 0 <= level + step < NUM_LEVELS]
        row = logits[:, level, legal]
        out[:, level, legal] = row - row.mean(dim=-1, keepdim=True)
    return out


def decode_path_centred(beta: torch.Tensor) -> tuple[int, ...]:
    """The path with the largest sum of `centred_logits`: Viterbi without the prior of per-node normalisation
    (``selection.path: centred``, a departure from the paper). Ties go to the lower levels."""
    return _viterbi(centred_logits(beta))


def top_paths(beta: torch.Tensor, n: int) -> list[tuple[tuple[int, ...], float]]:
    """The ``n`` most probable paths under beta's transition probabilities, best first, with their log
    probabilities: Viterbi keeping the ``n`` best partial paths into each node (exact k-best, since a k-best
    path's prefix is among the k best into its node). Ties break towards the smaller level sequence."""
    if n < 1:
        raise ValueError(f"top_paths needs n >= 1, got {n}")
    log_p = torch.log(transition_probs(beta.detach().float().cpu()).double()).tolist()
    best: dict[int, list[tuple[float, tuple[int, ...]]]] = {0: [(0.0, ())]}
    for layer in range(len(log_p)):
        new: dict[int, list[tuple[float, tuple[int, ...]]]] = {}
        for src, partials in best.items():
            for d, step in enumerate(DIRECTIONS):
                level, lp = src + step, log_p[layer][src][d]
                if 0 <= level < NUM_LEVELS and lp > float("-inf"):
                    new.setdefault(level, []).extend((score + lp, path + (level,)) for score, path in partials)
        best = {level: sorted(c, key=lambda t: (-t[0], t[1]))[:n] for level, c in new.items()}
    ranked = sorted((c for cands in best.values() for c in cands), key=lambda t: (-t[0], t[1]))[:n]
    return [(path, score) for score, path in ranked]
