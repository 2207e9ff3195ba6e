"""The stem shared by the supernet and the retrain network (paper Sec. 4.2; authors' nas_network.py):
three 3x3 convs with strides 2, 1, 2 (64, 64, 128 filters), each followed by BN and ReLU.

Returns the rate-2 tensor (H^{-1}, the first cell's H^{l-2}) and the rate-4 tensor (H^0).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Stem(nn.Module):
    def __init__(self, channels: tuple[int, int, int] = (64, 64, 128)):
        super().__init__()
        self.channels = tuple(channels)
        self.conv0 = _conv(3, channels[0], 2)
        self.conv1 = _conv(channels[0], channels[1], 1)
        self.conv2 = _conv(channels[1], channels[2], 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rate2 = self.conv1(self.conv0(x))
        return rate2, self.conv2(rate2)


def level_sizes(rate4: tuple[int, int], levels: int = 4) -> list[tuple[int, int]]:
    """Spatial size at each level given the rate-4 size: every stride-2 step rounds up (3x3, padding 1).

    In integer arithmetic, ``(h + 1) // 2 == ceil(h / 2)``: a trace or ``torch.export`` follows it on symbolic
    sizes, where ``math.ceil`` would be recorded as a constant (orchestrator/inference/export.py)."""
    sizes = [tuple(rate4)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes
