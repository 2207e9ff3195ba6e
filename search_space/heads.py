"""Segmentation heads: the 3-branch ASPP of the search (paper Sec. 4.1) and the DeepLabv3+ ASPP and
decoder of the retrain network (paper Sec. 4.2, authors' research/deeplab/model.py).

Every conv is followed by batch norm and has no bias, except the final classifiers. The image-pooling
branches use no batch norm (a 1x1 map with batch 1 per worker has no batch statistics); their conv has
a bias instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ImagePool(nn.Module):
    """Global average pooling, 1x1 conv, ReLU, broadcast back to the input's size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[2], x.shape[3])


class SearchASPP(nn.Module):
    """Search head at one rate: 1x1 conv, 3x3 atrous conv with rate 96/s, image pooling -> class logits."""

    def __init__(self, c_in: int, num_classes: int, rate: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(c_in, c_in, 1), conv_bn_relu(c_in, c_in, 3, dilation=rate), ImagePool(c_in, c_in)]
        )
        self.classifier = nn.Conv2d(3 * c_in, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabASPP(nn.Module):
    """DeepLabv3+ ASPP: 1x1, three 3x3 atrous branches, image pooling, 1x1 projection; 256 channels."""

    def __init__(self, c_in: int, rates: tuple[int, int, int], channels: int = 256):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(c_in, channels, 1)]
            + [conv_bn_relu(c_in, channels, 3, dilation=r) for r in rates]
            + [ImagePool(c_in, channels)]
        )
        self.project = conv_bn_relu(5 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabDecoder(nn.Module):
    """DeepLabv3+ decoder: 48-channel projection of rate-4 features, concat, two 3x3 convs, classifier."""

    def __init__(self, c_low: int, c_aspp: int, num_classes: int, channels: int = 256, low_channels: int = 48):
        super().__init__()
        self.low = conv_bn_relu(c_low, low_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(c_aspp + low_channels, channels, 3), conv_bn_relu(channels, channels, 3)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        aspp = F.interpolate(aspp, size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([aspp, self.low(low)], dim=1)))
