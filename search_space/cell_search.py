"""The searchable cell (paper Sec. 3.1): B blocks, every edge a mixed op weighted by softmax(alpha).

Alpha has one row per edge (block i takes H^{l-2}, H^{l-1} and blocks 0..i-1: i + 2 edges) and one column
per entry of `PRIMITIVES`; it is owned by the `SuperNet` and shared by every cell.

A node of the trellis applies the same cell to up to three preprocessed H^{l-1} inputs (one per incoming
path) with one shared H^{l-2}. The edges that read H^{l-2} therefore compute the same tensor for every
path; `SearchCell.forward` computes them once and reuses them (exact: same input, same weights).
"""

from __future__ import annotations

import torch
from torch import nn

from search_space.operations import OPS, PRIMITIVES


class MixedOp(nn.Module):
    """sum_k w_k * op_k(x) over PRIMITIVES. The zero op adds nothing and is skipped (exact)."""

    def __init__(self, channels: int, ops: str):
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = OPS[ops][name](channels, 1, False)
            if "pool" in name:  # DARTS: rescale pooled features, which have no weights of their own
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
            self.ops.append(op)
        self.active = [k for k, name in enumerate(PRIMITIVES) if name != "none"]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = weights[self.active[0]] * self.ops[self.active[0]](x)
        for k in self.active[1:]:
            out = out + weights[k] * self.ops[k](x)
        return out


class SearchCell(nn.Module):
    """B blocks of mixed ops on inputs already preprocessed to ``channels``; output concatenates blocks."""

    def __init__(self, channels: int, blocks: int, ops: str):
        super().__init__()
        self.blocks = blocks
        self.edges = nn.ModuleList(MixedOp(channels, ops) for b in range(blocks) for _ in range(b + 2))
        self.offsets = [sum(i + 2 for i in range(b)) for b in range(blocks)]

    def forward(self, s0: torch.Tensor, s1_paths: list[torch.Tensor], weights: torch.Tensor
                ) -> list[torch.Tensor]:
        """Apply the cell to (s0, s1) for each s1 in ``s1_paths``; ``weights`` is softmax(alpha)."""
        from_s0 = [self.edges[o](s0, weights[o]) for o in self.offsets]
        outs = []
        for s1 in s1_paths:
            states = [s0, s1]
            for b, o in enumerate(self.offsets):
                total = from_s0[b]
                for j in range(1, b + 2):
                    total = total + self.edges[o + j](states[j], weights[o + j])
                states.append(total)
            outs.append(torch.cat(states[2:], dim=1))
        return outs
