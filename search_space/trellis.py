"""The network-level search space: the L x 4 trellis over downsample rates {4, 8, 16, 32} (paper Sec. 3.2).

beta has shape ``[L, 4, 3]``: ``beta[l, i, d]`` is the logit of the edge leaving node (layer l, level i)
in direction ``d`` (0: to level i-1, i.e. rate halves; 1: same level; 2: to level i+1, rate doubles).
Layer 0 is the stem (level 0 only); row ``l`` holds the transitions from layer l to layer l+1.

beta is normalized over each node's *outgoing* edges, so a row of `transition_probs` is a probability
distribution over where the path goes next (two edges at levels 0 and 3, three elsewhere, no extra
constant). Entries for unreachable nodes and impossible directions are 0.

Read as a Markov chain that starts at the stem (layer 0, level 0), these transitions give every layer a
distribution over the levels a path occupies; `end_level_probs` is that distribution at layer L, the chance that
beta's path ends at each level (what the ``reach`` head mix of the supernet weights its heads by).
"""

from __future__ import annotations

import torch

from search_space.genotypes import RATES

NUM_LEVELS = len(RATES)
DIRECTIONS = (-1, 0, 1)
"""Level change of each beta direction."""


def reachable_levels(layer: int) -> tuple[int, ...]:
    """Levels a path can occupy at ``layer`` (0 = stem): layer 1 {0, 1}, layer 2 {0, 1, 2}, then all."""
    return tuple(range(min(layer, NUM_LEVELS - 1) + 1))


def beta_mask(layers: int) -> torch.Tensor:
    """Boolean ``[L, 4, 3]`` mask of the beta entries that are real edges of the trellis."""
    mask = torch.zeros(layers, NUM_LEVELS, len(DIRECTIONS), dtype=torch.bool)
    for layer in range(layers):
        for level in reachable_levels(layer):
            for d, step in enumerate(DIRECTIONS):
                mask[layer, level, d] = 0 <= level + step < NUM_LEVELS
    return mask


def transition_probs(beta: torch.Tensor) -> torch.Tensor:
    """Softmax of beta over each reachable node's legal outgoing edges; 0 elsewhere. Differentiable."""
    mask = beta_mask(beta.shape[0]).to(beta.device)
    logits = beta.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    # Rows of unreachable nodes are all -inf -> NaN after softmax; they carry no edge.
    return torch.where(mask, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))


def end_level_probs(trans: torch.Tensor) -> torch.Tensor:
    """``[4]``: the probability that a path following the transitions ``trans`` (`transition_probs`, ``[L, 4, 3]``)
    from the stem ends at each level of layer L. Sums to 1; differentiable in ``trans``."""
    reach = trans.new_zeros(NUM_LEVELS)
    reach[0] = 1.0
    for layer in range(trans.shape[0]):
        moved = reach.unsqueeze(1) * trans[layer]  # [source level, direction]
        nxt = []
        for level in range(NUM_LEVELS):
            terms = [moved[level - step, d] for d, step in enumerate(DIRECTIONS) if 0 <= level - step < NUM_LEVELS]
            nxt.append(torch.stack(terms).sum())
        reach = torch.stack(nxt)
    return reach


def incoming(layer: int, level: int) -> tuple[tuple[int, int], ...]:
    """``(source_level, direction)`` of every edge into node (layer, level) from layer-1's reachable nodes."""
    sources = reachable_levels(layer - 1)
    edges = []
    for d, step in enumerate(DIRECTIONS):
        src = level - step
        if src in sources:
            edges.append((src, d))
    return tuple(edges)
