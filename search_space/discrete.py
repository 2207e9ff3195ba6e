"""The discrete network rebuilt from a genotype for retraining (paper Sec. 4.2; authors' nas_network.py
`hnasnet`, nas_cell.py), and the published Auto-DeepLab-S/M/L.

Stem (64, 64, 128; strides 2, 1, 2), then one cell per layer along the genotype's path, a DeepLabv3+ ASPP
(rates (1, 2, 3) * 96 / s at the last cell's rate s: 6, 12, 18 at rate 16) and the DeepLabv3+ decoder on the
last rate-4 cell's output (the stem's when the path never stays at rate 4), logits upsampled to the input.
With ``head="search"`` the ASPP and decoder are replaced by the search head of the last cell's rate (the
3-branch `SearchASPP` with rate 96/s, no decoder): the single-path network the supernet scores during search.

Cell rules from the authors' code: H^{l-1} passes ReLU-1x1 conv-BN to the block width F * 2^level; H^{l-2}
is bilinearly resized to H^{l-1}'s size when it differs and projected the same way when its width differs.
When the path descends a level, the ops on the two cell inputs carry stride 2; when it ascends, H^{l-1} is
bilinearly upsampled before the cell. The cell output concatenates its B blocks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from search_space.genotypes import AUTODEEPLAB, RATES, VARIANTS, Block, Genotype
from search_space.heads import DeepLabASPP, DeepLabDecoder, SearchASPP
from search_space.operations import OPS, ReLUConvBN, check_family
from search_space.stem import Stem, level_sizes
from search_space.supernet import resize

HEADS = ("deeplabv3+", "search")
"""`DiscreteNet` heads: the retrain network's ASPP and decoder, or the search head of the supernet."""


class DiscreteCell(nn.Module):
    """A cell with one op per block input, as decoded."""

    def __init__(self, cell: tuple[Block, ...], c_prev: int, c_prev_prev: int, width: int, stride: int,
                 ops: str):
        super().__init__()
        self.cell = cell
        self.pre = ReLUConvBN(c_prev, width, 1)
        self.pre_pp = nn.Identity() if c_prev_prev == width else ReLUConvBN(c_prev_prev, width, 1)
        self.ops = nn.ModuleList(
            OPS[ops][op](width, stride if inp < 2 else 1, True) for block in cell for op, inp in block
        )

    def forward(self, prev: torch.Tensor, prev_prev: torch.Tensor) -> torch.Tensor:
        states = [self.pre_pp(resize(prev_prev, tuple(prev.shape[2:]))), self.pre(prev)]
        k = 0
        for block in self.cell:
            total = None
            for _, inp in block:
                y = self.ops[k](states[inp])
                total = y if total is None else total + y
                k += 1
            states.append(total)
        return torch.cat(states[2:], dim=1)


class DiscreteNet(nn.Module):
    """The retrain network for ``genotype``.

    Args:
        genotype: the cell and path to build.
        num_classes: output classes.
        filter_multiplier: F; the block width at rate s is F * s / 4.
        ops: op family, "paper" or "darts".
        stem_channels: filters of the three stem convs.
        aspp_channels: width of ASPP and decoder.
        head: "deeplabv3+" (the retrain network: DeepLabv3+ ASPP and decoder) or "search" (the supernet's
            search head at the last cell's rate, `SearchASPP` with rate 96/s and no decoder: the single-path
            network the supernet scores during search; ``aspp_channels`` is then unused).
    """

    def __init__(self, genotype: Genotype, num_classes: int, filter_multiplier: int = 20, ops: str = "paper",
                 stem_channels: tuple[int, int, int] = (64, 64, 128), aspp_channels: int = 256,
                 head: str = "deeplabv3+"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}: expected one of {', '.join(HEADS)}")
        self.genotype, self.num_classes, self.head = genotype, num_classes, head
        check_family(ops)
        self.stem = Stem(stem_channels)
        blocks = genotype.blocks
        c_pp, c_prev, prev_level = stem_channels[1], stem_channels[2], 0
        self.cells = nn.ModuleList()
        self.low_index = -1  # index of the last rate-4 cell; -1 = the stem's output
        for i, level in enumerate(genotype.path):
            width = filter_multiplier * 2**level
            stride = 2 if level > prev_level else 1
            self.cells.append(DiscreteCell(genotype.cell, c_prev, c_pp, width, stride, ops))
            c_pp, c_prev, prev_level = c_prev, blocks * width, level
            if level == 0:
                self.low_index = i
        rate = 96 // RATES[genotype.path[-1]]
        if head == "search":
            self.search_head = SearchASPP(c_prev, num_classes, rate)
            return
        c_low = stem_channels[2] if self.low_index < 0 else blocks * filter_multiplier
        self.aspp = DeepLabASPP(c_prev, (rate, 2 * rate, 3 * rate), aspp_channels)
        self.decoder = DeepLabDecoder(c_low, aspp_channels, num_classes, aspp_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev_prev, prev = self.stem(x)
        sizes = level_sizes(tuple(prev.shape[2:]))
        low, prev_level = prev, 0
        for i, (cell, level) in enumerate(zip(self.cells, self.genotype.path, strict=True)):
            if level < prev_level:
                prev = F.interpolate(prev, size=sizes[level], mode="bilinear", align_corners=False)
            prev_prev, prev = prev, cell(prev, prev_prev)
            prev_level = level
            if i == self.low_index:
                low = prev
        logits = self.search_head(prev) if self.head == "search" else self.decoder(self.aspp(prev), low)
        return resize(logits, tuple(x.shape[2:]))


def autodeeplab(variant: str, num_classes: int, **kwargs) -> DiscreteNet:
    """Auto-DeepLab-S, -M or -L (F = 20, 32, 48) with the published genotype."""
    key = variant.upper().removeprefix("AUTODEEPLAB-")
    if key not in VARIANTS:
        raise ValueError(f"unknown Auto-DeepLab variant {variant!r}: expected one of S, M, L")
    return DiscreteNet(AUTODEEPLAB, num_classes, filter_multiplier=VARIANTS[key], **kwargs)
