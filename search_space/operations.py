"""The eight candidate operations of the Auto-DeepLab cell (Liu et al. 2019, Sec. 3.1).

`PRIMITIVES` is the one ordered list of op names: alpha's second axis, the mixed op and decoding all loop
over it. `OPS[family][name](C, stride, affine)` builds an op. Two families:

- ``"paper"`` follows the authors' TensorFlow code (research/deeplab/core/nas_cell.py): a separable op is
  two stacked ReLU-separable-conv-BN units, an atrous op is ReLU, a *full* 3x3/5x5 conv with rate 2, BN.
- ``"darts"`` follows DARTS and the public PyTorch port: an atrous op is ReLU, a depthwise dilated conv,
  a pointwise conv, BN. Separable ops are the same as in ``"paper"``. Used to compare identical math with
  the port in benchmarks.

Pooling and skip ops are shared by both families. At stride 2, skip is a factorized reduction (two
offset 1x1 stride-2 convs), as in DARTS; zero returns zeros of the strided shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""Op names, in alpha's column order. ``none`` is the zero op; ``dil_conv`` is the paper's atrous conv."""

PARAMETER_FREE: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")
"""The non-zero ops without weights (at stride 1: a stride-2 skip is a factorized reduction, with weights)."""

OP_FAMILIES: tuple[str, ...] = ("paper", "darts")


class ReLUConvBN(nn.Sequential):
    """ReLU, conv (optionally dilated/grouped), BN: the unit every conv op is made of."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, affine: bool = True):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepUnit(nn.Sequential):
    """ReLU, depthwise conv, pointwise conv, BN: one separable-conv unit."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int = 1,
                 affine: bool = True):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked separable units; only the first carries the stride (authors' code and DARTS)."""

    def __init__(self, c: int, kernel: int, stride: int, affine: bool = True):
        super().__init__(SepUnit(c, c, kernel, stride, affine=affine), SepUnit(c, c, kernel, 1, affine=affine))


class Zero(nn.Module):
    """The "no connection" op: zeros of the output shape (strided when stride is 2)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 identity substitute: two 1x1 stride-2 convs on offset grids, concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        a = self.conv_a(x)
        # The offset grid needs one extra row/column on odd inputs so both halves have the same size.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        b = self.conv_b(shifted)
        return self.bn(torch.cat([a, b], dim=1))


def _pool(kind: str, stride: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def _skip(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)


def _atrous_paper(kernel: int) -> Callable[[int, int, bool], nn.Module]:
    return lambda c, stride, affine: ReLUConvBN(c, c, kernel, stride, dilation=2, affine=affine)


def _atrous_darts(kernel: int) -> Callable[[int, int, bool], nn.Module]:
    return lambda c, stride, affine: SepUnit(c, c, kernel, stride, dilation=2, affine=affine)


_SHARED: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: _pool("max", stride),
    "avg_pool_3x3": lambda c, stride, affine: _pool("avg", stride),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, 3, stride, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, 5, stride, affine),
}

OPS: dict[str, dict[str, Callable[[int, int, bool], nn.Module]]] = {
    "paper": {**_SHARED, "dil_conv_3x3": _atrous_paper(3), "dil_conv_5x5": _atrous_paper(5)},
    "darts": {**_SHARED, "dil_conv_3x3": _atrous_darts(3), "dil_conv_5x5": _atrous_darts(5)},
}
"""``OPS[family][name](channels, stride, affine) -> nn.Module``; every family covers every PRIMITIVE."""


def check_family(ops: str) -> str:
    """Return ``ops`` if it names an op family, else raise a ValueError listing the valid ones."""
    if ops not in OPS:
        raise ValueError(f"unknown op family {ops!r}: expected one of {', '.join(OPS)}")
    return ops
