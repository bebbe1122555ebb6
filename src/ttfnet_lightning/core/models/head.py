"""TTFNet head: heatmap branch (C classes) and box branch (4 distances, or 4*C class-aware).

Heatmap: ``heatmap_convs`` x (3x3 conv ``heatmap_channels`` + ReLU) + 1x1 conv to C; convs init
normal(std 0.01), last bias -4.595 (prior 0.01). Box: ``box_convs`` x (3x3 conv ``box_channels`` +
ReLU) + 1x1 conv to 4; convs init normal(std 0.001); output ``relu(x) * wh_scale`` (s = 16).

:class:`CenterNetHead`: CenterNet's three branches (heatmap, size, offset) from the same building block,
for ``method="centernet"`` (:mod:`ttfnet_lightning.core.centernet`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TTFHead", "CenterNetHead"]


def _branch(cin: int, mid: int, num_convs: int, cout: int, std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(cin if i == 0 else mid, mid, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(mid if num_convs > 0 else cin, cout, 1))
    branch = nn.Sequential(*layers)
    for m in branch.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    return branch


class TTFHead(nn.Module):
    """(B, in_channels, h, w) -> heatmap logits (B, C, h, w), distances (B, 4 or 4C, h, w).

    Args:
        in_channels: channels of the neck output (64).
        num_classes: C.
        heatmap_convs, heatmap_channels: 2 x 128 in the paper.
        box_convs, box_channels: 1 (ResNet-18) or 2 (ResNet-34, DarkNet-53) x 64.
        class_aware: 4*C box channels (Table 2 "Aware").
        wh_scale: s in equation (5) (16).
        prior_prob: initial heatmap probability (0.01 -> bias -4.595).
    """

    def __init__(
        self,
        *,
        in_channels: int = 64,
        num_classes: int,
        heatmap_convs: int = 2,
        heatmap_channels: int = 128,
        box_convs: int = 1,
        box_channels: int = 64,
        class_aware: bool = False,
        wh_scale: float = 16.0,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.wh_scale = wh_scale
        self.heatmap = _branch(in_channels, heatmap_channels, heatmap_convs, num_classes, std=0.01)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - prior_prob) / prior_prob))
        self.box = _branch(in_channels, box_channels, box_convs, 4 * num_classes if class_aware else 4, std=0.001)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heatmap(x), F.relu(self.box(x)) * self.wh_scale


class CenterNetHead(nn.Module):
    """CenterNet's head: (B, in_channels, h, w) -> heatmap logits (B, C, h, w), regression (B, 4, h, w).

    Three branches built like TTFNet's (``convs`` x (3x3 conv + ReLU) + 1x1 conv; CenterNet's ResNet
    head is one 64-channel conv per branch, ``head_conv=64``): heatmap (C channels, weights normal(std
    0.01), last bias -2.19 as CenterNet), size (2: w, h on the output map) and offset (2: x, y), weights
    normal(std 0.001), biases 0; no activation on the size and offset. The regression output holds the
    size in channels 0-1 and the offset in 2-3, the layout :mod:`ttfnet_lightning.core.centernet` reads.

    Args:
        in_channels: channels of the neck output (64).
        num_classes: C.
        heatmap_convs, heatmap_channels: hidden convs and width of the heatmap branch.
        box_convs, box_channels: hidden convs and width of the size and offset branches.
        heatmap_bias: the heatmap's last bias (-2.19).
    """

    def __init__(
        self,
        *,
        in_channels: int = 64,
        num_classes: int,
        heatmap_convs: int = 1,
        heatmap_channels: int = 64,
        box_convs: int = 1,
        box_channels: int = 64,
        heatmap_bias: float = -2.19,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.heatmap = _branch(in_channels, heatmap_channels, heatmap_convs, num_classes, std=0.01)
        nn.init.constant_(self.heatmap[-1].bias, heatmap_bias)
        self.wh = _branch(in_channels, box_channels, box_convs, 2, std=0.001)
        self.offset = _branch(in_channels, box_channels, box_convs, 2, std=0.001)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heatmap(x), torch.cat((self.wh(x), self.offset(x)), dim=1)
