"""The searchable cell of Auto-DeepLab (Liu et al. 2019, Sec. 3.1), written as DARTS writes it.

As in DARTS (Liu, Simonyan, Yang 2019; quark0/darts ``cnn/model_search.py``), every edge of the cell is a
mixed op: the sum of all candidate ops of `PRIMITIVES`, each weighted by softmax(alpha). Block i sums the
mixed ops of its i + 2 edges, from H^{l-2}, H^{l-1} and blocks 0..i-1; the cell's output concatenates its
B blocks. Alpha has one row per edge and one column per op; the `SuperNet` owns it and every cell shares it.

A trellis node applies its cell to one H^{l-2} (``s0``) and to up to three preprocessed H^{l-1} inputs, one
per incoming path (``s1``, ``[N, G, C, H, W]`` for G paths), and sums the paths' outputs weighted by beta's
transition probabilities: ``cell(s0, s1, weights, probs)``.

This file is the plain reference, one module call per path, edge and op. `cell_batched.SearchCell` is the
same cell with a fast forward behind the same interface: it computes the same numbers on the same weights,
and `SuperNet.forward` runs it (`SuperNet.forward_reference` runs this code instead). The tests in
tests/test_supernet_equivalence.py check that the two agree.
"""

from __future__ import annotations

import torch
from torch import nn

from search_space.cell_edges import edge_inputs, edge_offsets
from search_space.operations import OPS, PRIMITIVES, Zero


class MixedOp(nn.Module):
    """One edge: ``sum_k w_k * op_k(x)`` over `PRIMITIVES` (DARTS' MixedOp)."""

    def __init__(self, channels: int, ops: str):
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = OPS[ops][name](channels, 1, False)
            if "pool" in name:  # DARTS: rescale pooled features, which have no weights of their own
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # The zero op adds exactly nothing, so it is not run.
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True) if not isinstance(op, Zero))


class Cell(nn.Module):
    """B blocks of mixed ops on inputs already preprocessed to ``channels``; the output concatenates the blocks.

    The edges are numbered block by block: block b's edges start at ``offsets[b]`` and read s0, s1, block 0,
    ..., block b - 1, in that order.
    """

    def __init__(self, channels: int, blocks: int, ops: str):
        super().__init__()
        self.channels, self.blocks = channels, blocks
        self.edges = nn.ModuleList(MixedOp(channels, ops) for _ in edge_inputs(blocks))
        self.offsets = edge_offsets(blocks)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor,
                update_stats: bool = True) -> torch.Tensor:
        """``sum_g probs[g] * Cell(s0, s1[:, g])``.

        Args:
            s0: H^{l-2}, preprocessed, ``[N, C, H, W]``.
            s1: H^{l-1} of each incoming path, preprocessed, ``[N, G, C, H, W]``.
            weights: softmax(alpha), ``[edges, len(PRIMITIVES)]``.
            probs: the paths' transition probabilities, ``[G]``.
            update_stats: False asks the batched cell to leave the running statistics alone (a checkpointed
                recomputation); this forward updates them through its BN modules regardless.
        """
        outs = self.forward_paths(s0, list(s1.unbind(1)), weights)
        return sum(p * out for p, out in zip(probs.unbind(0), outs, strict=True))

    def forward_paths(self, s0: torch.Tensor, s1_paths: list[torch.Tensor], weights: torch.Tensor
                      ) -> list[torch.Tensor]:
        """The cell on (s0, s1) for each s1 in ``s1_paths``.

        The edges that read s0 run once for all paths: same input and weights, so the same tensor for every
        path (and their BNs update their running statistics once per call, as in the batched cell).
        """
        from_s0 = [self.edges[o](s0, weights[o]) for o in self.offsets]
        outs = []
        for s1 in s1_paths:
            states = [s0, s1]
            for b, o in enumerate(self.offsets):  # DARTS: s = sum(edge_j(h_j) for every earlier state h_j)
                rest = (self.edges[o + j](h, weights[o + j]) for j, h in enumerate(states[1:], start=1))
                states.append(sum(rest, from_s0[b]))
            outs.append(torch.cat(states[2:], dim=1))
        return outs
