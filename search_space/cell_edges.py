"""How a cell's edges are numbered (Auto-DeepLab Sec. 3.1, DARTS): block b has b + 2 inputs, H^{l-2}, H^{l-1}
and blocks 0..b-1, and its edges follow those of the blocks before it. Alpha has one row per edge in this order;
the cell, decoding and the plots all use this one layout.
"""

from __future__ import annotations


def num_edges(blocks: int) -> int:
    """Edges in a cell of ``blocks`` blocks: 2 + 3 + ... + (B + 1)."""
    return sum(b + 2 for b in range(blocks))


def edge_offsets(blocks: int) -> list[int]:
    """The first edge (alpha row) of each block."""
    return [num_edges(b) for b in range(blocks)]


def edge_inputs(blocks: int) -> list[tuple[int, int]]:
    """(block, input) of every edge in order; input 0 is H^{l-2}, 1 is H^{l-1}, i + 2 is block i."""
    return [(b, i) for b in range(blocks) for i in range(b + 2)]


def blocks_for_edges(edges: int) -> int:
    """The number of blocks of a cell with ``edges`` edges (alpha's rows); ValueError when none has that many."""
    blocks = 0
    while num_edges(blocks) < edges:
        blocks += 1
    if num_edges(blocks) != edges:
        raise ValueError(f"alpha has {edges} rows, which is no cell's edge count (2, 5, 9, 14, 20, ...)")
    return blocks
