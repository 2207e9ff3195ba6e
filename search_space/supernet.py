"""The Auto-DeepLab supernet: stem, the L x 4 trellis of searchable cells, ASPP heads (paper Sec. 3, 4.1).

The hidden state at (layer l, level j) is
``sum over incoming edges e: P[e] * Cell(pre_e(H^{l-1}_src), pre_pp(H^{l-2}_j); alpha)``, where P is beta
normalized over each source node's outgoing edges (`trellis.transition_probs`). The cell's mixed ops are
shared by the node's incoming paths; each path has its own preprocessing to the node's block width
F * 2^j: a stride-2 3x3 conv from the finer level, a 1x1 conv from the same level, bilinear upsampling then
a 1x1 conv from the coarser level. Where H^{l-2} has no node at level j (early layers) the existing tensor
of layer l-2 closest in size is bilinearly resampled. A node's output has B * F * 2^j channels.

Only reachable nodes are built. Alpha and beta are registered parameters kept apart from the weights:
`arch_parameters()` and `weight_parameters()` partition `parameters()`.

Heads. ``head="aspp"`` is the paper's: an ASPP per level of layer L, upsampled to the input and summed.
``head="decoder"`` (a documented departure, `HEADS`) makes the search score what the retrain network computes:
the per-level ASPPs give ``decoder_channels`` features, summed at rate 4, and a DeepLabv3+ decoder fuses them
with the stem's rate-4 output before the classifier. Without it a stride-32 map of a small crop predicts alone
and deep paths cannot pay in the search, while the retrain's decoder restores their detail.

Head mix. ``head_mix="sum"`` is the paper's: every level's head counts fully, whatever beta says, so the
relaxation can use stride-32 context with beta untouched and beta's gradient only reallocates each node's inputs.
``head_mix="reach"`` (a documented departure, `HEAD_MIXES`) weights each level's head by the probability that
beta's path ends there (`trellis.end_level_probs`): the heads' outputs become a mixture over where the path ends,
so a level whose head predicts better pulls beta toward paths that reach it.

`forward(x, genotype)` scores one architecture with the shared weights (alpha and beta fixed to it): alpha is the
genotype's one-hot op per kept edge, every node on the genotype's path takes its input from the path's previous
node alone, and only the head of the path's last level predicts. Nodes off the path still run, since the path's
cells take their H^{l-2} input from the trellis as in training.

`forward` runs each node's cell batched over its paths, edges and ops (`cell_batched.SearchCell.forward`);
`forward_reference` is the plain per-path, per-edge forward with the same math on the same weights
(`cell_search.Cell.forward_paths`), kept for tests and FLOP counting. ``checkpoint_cells`` recomputes the cells
of chosen levels in backward instead of keeping their activations (memory for time). Activation memory per node
halves with each level down (channels double, pixels quarter), so level 0 (stride 4) alone holds about half of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from search_space.cell_batched import SearchCell
from search_space.cell_edges import num_edges
from search_space.decoding import decode_cell, decode_path
from search_space.genotypes import RATES, Genotype
from search_space.heads import DeepLabDecoder, SearchASPP
from search_space.operations import PRIMITIVES, ReLUConvBN, check_family
from search_space.stem import Stem, level_sizes
from search_space.trellis import NUM_LEVELS, end_level_probs, incoming, reachable_levels, transition_probs


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


HEADS = ("aspp", "decoder")
"""Search heads: the paper's per-level ASPPs summed ("aspp"), or those ASPPs feeding a DeepLabv3+ decoder."""


HEAD_MIXES = ("sum", "reach")
"""How the heads of layer L's levels combine: summed (the paper) or weighted by beta's end-level probabilities."""


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"unknown search head {head!r}: expected one of {', '.join(HEADS)}")
    return head


def check_head_mix(head_mix: str) -> str:
    if head_mix not in HEAD_MIXES:
        raise ValueError(f"unknown head mix {head_mix!r}: expected one of {', '.join(HEAD_MIXES)}")
    return head_mix


def genotype_weights(genotype: Genotype, edges: int) -> torch.Tensor:
    """``[edges, len(PRIMITIVES)]`` op weights of a decoded cell: 1 for each kept (edge, op), 0 elsewhere."""
    weights = torch.zeros(edges, len(PRIMITIVES))
    start = 0
    for block, pairs in enumerate(genotype.cell):
        for op, inp in pairs:
            weights[start + inp, PRIMITIVES.index(op)] = 1.0
        start += block + 2
    if start != edges:
        raise ValueError(f"genotype has {genotype.blocks} blocks ({start} edges); the supernet's cell has {edges}")
    return weights


def initial_arch_parameters(layers: int, blocks: int,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha ``[edges, len(PRIMITIVES)]`` and beta ``[layers, levels, 3]`` as a search starts: 1e-3 N(0, 1) each
    (the public port's init: every softmax near uniform). Decoded untouched, they give what a search whose alpha
    and beta were never updated would decode (the ``frozen`` arm of the arm study)."""
    alpha = 1e-3 * torch.randn(num_edges(blocks), len(PRIMITIVES), generator=generator)
    return alpha, 1e-3 * torch.randn(layers, NUM_LEVELS, 3, generator=generator)


def checkpoint_level_set(checkpoint_cells: bool | Iterable[int]) -> frozenset[int]:
    """The levels whose cells are recomputed in backward: all for True, none for False, else those given."""
    if isinstance(checkpoint_cells, bool):
        return frozenset(range(NUM_LEVELS)) if checkpoint_cells else frozenset()
    levels = frozenset(int(v) for v in checkpoint_cells)
    if not levels <= set(range(NUM_LEVELS)):
        raise ValueError(f"checkpoint_cells levels must be in 0..{NUM_LEVELS - 1}, got {sorted(levels)}")
    return levels


def closest_level(available: tuple[int, ...], level: int) -> int:
    """The available level nearest to ``level`` (the finer one on ties)."""
    return min(available, key=lambda a: (abs(a - level), a))


class Node(nn.Module):
    """One trellis node: per-path preprocessing, H^{l-2} preprocessing and the shared searchable cell."""

    def __init__(self, level: int, sources: dict[int, int], pp_channels: int, blocks: int, width: int,
                 ops: str):
        super().__init__()
        self.level = level
        self.pre = nn.ModuleDict()
        for src, c_src in sources.items():
            stride, kernel = (2, 3) if src < level else (1, 1)
            self.pre[str(src)] = ReLUConvBN(c_src, width, kernel, stride)
        self.pre_pp = ReLUConvBN(pp_channels, width, 1)
        self.cell = SearchCell(width, blocks, ops)

    def _inputs(self, prev: dict[int, torch.Tensor], pp: torch.Tensor, sources: list[int],
                size: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        paths = [self.pre[str(src)](resize(prev[src], size) if src > self.level else prev[src])
                 for src in sources]
        return self.pre_pp(resize(pp, size)), paths

    def forward(self, prev: dict[int, torch.Tensor], pp: torch.Tensor, probs: dict[int, torch.Tensor],
                weights: torch.Tensor, size: tuple[int, int], checkpointed: bool = False) -> torch.Tensor:
        s0, paths = self._inputs(prev, pp, list(probs), size)
        s1, p = torch.stack(paths, dim=1), torch.stack(list(probs.values()))
        if not checkpointed:
            return self.cell(s0, s1, weights, p)
        calls = 0  # the recomputation in backward must not update the running statistics a second time

        def run(s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return self.cell(s0, s1, weights, p, update_stats=calls == 1)

        return checkpoint(run, s0, s1, weights, p, use_reentrant=False, preserve_rng_state=False)

    def forward_reference(self, prev: dict[int, torch.Tensor], pp: torch.Tensor, probs: dict[int, torch.Tensor],
                          weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        s0, paths = self._inputs(prev, pp, list(probs), size)
        outs = self.cell.forward_paths(s0, paths, weights)
        total = probs[next(iter(probs))] * outs[0]
        for p, out in zip(list(probs.values())[1:], outs[1:], strict=True):
            total = total + p * out
        return total


class SuperNet(nn.Module):
    """The continuous relaxation of the Auto-DeepLab search space.

    Args:
        num_classes: output channels of the heads.
        layers: L, the number of cell layers after the stem.
        blocks: B, blocks per cell.
        filter_multiplier: F; a node at rate s has B * F * s / 4 channels.
        ops: op family, "paper" or "darts" (see `operations`).
        stem_channels: filters of the three stem convs.
        checkpoint_cells: in training, recompute cells during backward instead of storing their activations:
            True for every level, or the levels to recompute (0 = stride 4, ..., 3 = stride 32). All levels
            cost about one more forward of time; level 0 alone about half the activation memory for a third
            of that time.
        recompute_units: in training, the batched cells' depthwise-pointwise-BN units store only their input
            and recompute the rest in backward (`cell_autograd.separable_bn`): at L=12, F=8, crop 129, batch 2
            on CPU, 0.75 GB less peak memory for one more depthwise conv and matmul per unit in backward (steps
            5-10% slower). False stores the depthwise outputs and BN inputs instead.
        head: "aspp" (the paper's search head) or "decoder" (see the module docstring).
        head_mix: "sum" (the paper's) or "reach" (see the module docstring).
    """

    def __init__(self, num_classes: int, layers: int = 12, blocks: int = 5, filter_multiplier: int = 8,
                 ops: str = "paper", stem_channels: tuple[int, int, int] = (64, 64, 128),
                 checkpoint_cells: bool | Iterable[int] = False, recompute_units: bool = True,
                 head: str = "aspp", head_mix: str = "sum"):
        super().__init__()
        if layers < 1 or blocks < 1 or filter_multiplier < 1 or num_classes < 1:
            raise ValueError("SuperNet needs layers, blocks, filter_multiplier and num_classes >= 1, got "
                             f"{layers}, {blocks}, {filter_multiplier}, {num_classes}")
        self.num_classes, self.layers, self.blocks = num_classes, layers, blocks
        self.filter_multiplier, self.ops, self.head = filter_multiplier, check_family(ops), check_head(head)
        self.head_mix = check_head_mix(head_mix)
        self.checkpoint_levels = checkpoint_level_set(checkpoint_cells)
        self.stem = Stem(stem_channels)
        self.nodes = nn.ModuleDict()
        self.pp_source: dict[tuple[int, int], int] = {}
        # Channels per (layer, level); the stem's rate-2 output is layer -1 at "level -1".
        channels = {(-1, -1): stem_channels[1], (0, 0): stem_channels[2]}
        for layer in range(1, layers + 1):
            for level in reachable_levels(layer):
                width = filter_multiplier * 2**level
                sources = {src: channels[(layer - 1, src)] for src, _ in incoming(layer, level)}
                pp_levels = reachable_levels(layer - 2) if layer >= 2 else (-1,)
                pp = closest_level(pp_levels, level)
                self.pp_source[(layer, level)] = pp
                self.nodes[f"{layer}_{level}"] = Node(level, sources, channels[(layer - 2, pp)], blocks,
                                                      width, ops)
                channels[(layer, level)] = blocks * width
        head_out = num_classes if head == "aspp" else self.decoder_channels
        self.heads = nn.ModuleDict({
            str(level): SearchASPP(channels[(layers, level)], head_out, 96 // RATES[level])
            for level in reachable_levels(layers)
        })
        if head == "decoder":
            d = self.decoder_channels
            self.decoder = DeepLabDecoder(stem_channels[2], d, num_classes, channels=d, low_channels=min(48, d))
        for node in self.nodes.values():
            node.cell.recompute_units = recompute_units
        alpha, beta = initial_arch_parameters(layers, blocks)
        self.alpha, self.beta = nn.Parameter(alpha), nn.Parameter(beta)

    @property
    def decoder_channels(self) -> int:
        """Width of the decoder head: the cell output width at rate 16 (4 B F)."""
        return 4 * self.blocks * self.filter_multiplier

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def genotype(self) -> Genotype:
        return Genotype(cell=decode_cell(self.alpha), path=decode_path(self.beta))

    def forward(self, x: torch.Tensor, genotype: Genotype | None = None) -> torch.Tensor:
        """Logits of the continuous relaxation, or with ``genotype`` of that one architecture (alpha and beta
        fixed to it, see the module docstring)."""
        return self._forward(x, reference=False, genotype=genotype)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same math as `forward`, one module call per path, edge and op (for tests and FLOP counts)."""
        return self._forward(x, reference=True)

    def _check_genotype(self, genotype: Genotype) -> None:
        if genotype.layers != self.layers or genotype.blocks != self.blocks:
            raise ValueError(f"genotype has L={genotype.layers}, B={genotype.blocks}; the supernet has "
                             f"L={self.layers}, B={self.blocks}")

    def _forward(self, x: torch.Tensor, reference: bool, genotype: Genotype | None = None) -> torch.Tensor:
        rate2, rate4 = self.stem(x)
        sizes = level_sizes(tuple(rate4.shape[2:]), NUM_LEVELS)
        if genotype is None:
            weights = torch.softmax(self.alpha, dim=-1)
        else:
            self._check_genotype(genotype)
            weights = genotype_weights(genotype, self.alpha.shape[0]).to(self.alpha)
        trans = transition_probs(self.beta)
        checkpointing = self.training and torch.is_grad_enabled() and not reference
        prev_prev, prev = {-1: rate2}, {0: rate4}
        for layer in range(1, self.layers + 1):
            cur = {}
            for level in reachable_levels(layer):
                probs = {src: trans[layer - 1, src, d] for src, d in incoming(layer, level)}
                if genotype is not None and level == genotype.path[layer - 1]:
                    src = genotype.path[layer - 2] if layer > 1 else 0
                    probs = {src: torch.ones((), dtype=trans.dtype, device=trans.device)}
                pp = prev_prev[self.pp_source[(layer, level)]]
                node = self.nodes[f"{layer}_{level}"]
                if reference:
                    cur[level] = node.forward_reference(prev, pp, probs, weights, sizes[level])
                else:
                    checkpointed = checkpointing and level in self.checkpoint_levels
                    cur[level] = node(prev, pp, probs, weights, sizes[level], checkpointed)
            prev_prev, prev = prev, cur
        return self._head(prev, self._head_scales(trans, genotype), rate4, tuple(x.shape[2:]))

    def _head_scales(self, trans: torch.Tensor, genotype: Genotype | None) -> dict[int, torch.Tensor | None]:
        """The levels whose heads predict, each with its weight (None: 1): the genotype's last level alone, or
        every level of layer L, weighted by beta's end-level probabilities under ``head_mix="reach"``."""
        if genotype is not None:
            return {genotype.path[-1]: None}
        ends = end_level_probs(trans) if self.head_mix == "reach" else None
        return {int(level): None if ends is None else ends[int(level)] for level in self.heads}

    def _head(self, last: dict[int, torch.Tensor], scales: dict[int, torch.Tensor | None], rate4: torch.Tensor,
              out_size: tuple[int, int]) -> torch.Tensor:
        """The heads of the levels in ``scales`` on layer L's nodes ``last``, each times its scale (None: 1),
        summed (at the input size for "aspp", at rate 4 before the decoder for "decoder"); logits at
        ``out_size``."""
        size = out_size if self.head == "aspp" else tuple(rate4.shape[2:])
        total = None
        for level, scale in scales.items():
            y = resize(self.heads[str(level)](last[level]), size)
            y = y if scale is None else scale * y
            total = y if total is None else total + y
        if self.head == "aspp":
            return total
        return resize(self.decoder(total, rate4), out_size)
