"""The released TTFNet DLA-34 neck: CenterNet's deep-layer-aggregation up-sampling (``DLASeg`` less its trunk).

The released DLA-34 configs (``ttfnet_dla34_2x.py`` and its 7x/10x variants) give the TTFNet head no
up-sampling neck of TTFNet's kind: the backbone is CenterNet's ``DLASeg`` (the DLA-34 trunk, then ``DLAUp``, then
one ``IDAUp``) and the head reads its stride-4, 64-channel map. This module is that up-sampling, written from the
architecture (same modules, same order, same initialisation when the trunk is pretrained):

* a **node** (released ``DeformConv``): modulated deformable 3x3 conv (bias; weights uniform +-1/sqrt(9 Cin),
  bias 0, offsets/masks from a zero-initialised conv, as mmdetection 1.x's ``ModulatedDeformConvPack``) + BN +
  ReLU; ``deformable=False`` makes it a plain 3x3 conv;
* an **IDA step** (``IDAUp``) over maps ``x_0, x_1, ...`` (strides growing): for i >= 1,
  ``x_i = node_i(up_i(proj_i(x_i)) + x_{i-1})``, where ``proj_i`` is a node to the step's width and ``up_i`` a
  depthwise transposed conv (kernel 2f, stride f, padding f/2, no bias) initialised as bilinear interpolation;
* **DLAUp**: IDA steps from the deepest pair down, each leaving the deepest map at the next finer stride
  (widths 256, 128, 64 for DLA-34's levels 2-5), then one more IDA step (``ida_up``) over the three finest
  results, to the stride-4 map of ``in_channels[0]`` channels.

Module names follow the released checkpoint (``dla_up.ida_0.proj_1.conv ...``, ``ida_up.up_2``), the deformable
conv's own parameters under ``conv.conv`` / ``conv.offset_mask`` as in :class:`~.neck.ModulatedDeformConv2d`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ttfnet_lightning.core.models.neck import ModulatedDeformConv2d

__all__ = ["DLAUpNeck", "bilinear_up_weights"]


def bilinear_up_weights(up: nn.ConvTranspose2d) -> None:
    """Set a depthwise transposed conv (C, 1, k, k) to bilinear interpolation, the same kernel for every channel
    (CenterNet's ``fill_up_weights``)."""
    k = up.weight.shape[2]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
    with torch.no_grad():
        up.weight.copy_((ramp[:, None] * ramp[None, :]).to(up.weight.dtype).expand_as(up.weight))


class _Node(nn.Module):
    """(B, cin, h, w) -> (B, cout, h, w): deformable (or plain) 3x3 conv + BN + ReLU (released ``DeformConv``)."""

    def __init__(self, cin: int, cout: int, *, deformable: bool, deform_impl: str) -> None:
        super().__init__()
        if deformable:
            self.conv: nn.Module = ModulatedDeformConv2d(cin, cout, deform_impl=deform_impl)
            weight, bias = self.conv.conv.weight, self.conv.conv.bias
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
            weight, bias = self.conv.weight, self.conv.bias
        bound = 1.0 / math.sqrt(cin * 9)  # mmdetection 1.x ModulatedDeformConv.reset_parameters
        nn.init.uniform_(weight, -bound, bound)
        nn.init.zeros_(bias)
        self.actf = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.actf(self.conv(x))


class _IDAUp(nn.Module):
    """One iterative-deep-aggregation step: maps (x_0, x_1, ..., x_n) of ``channels`` and relative up-sampling
    factors ``factors`` (x_i is ``factors[i]`` times coarser than x_0) -> the same list with x_1..x_n replaced by
    ``width``-channel maps at x_0's stride, each the aggregation of the previous one and its own input."""

    def __init__(
        self, width: int, channels: Sequence[int], factors: Sequence[int], *, deformable: bool, deform_impl: str
    ) -> None:
        super().__init__()
        self.steps = len(channels) - 1
        for i in range(1, len(channels)):
            f = int(factors[i])
            up = nn.ConvTranspose2d(width, width, 2 * f, stride=f, padding=f // 2, groups=width, bias=False)
            bilinear_up_weights(up)
            setattr(self, f"proj_{i}", _Node(channels[i], width, deformable=deformable, deform_impl=deform_impl))
            setattr(self, f"up_{i}", up)
            setattr(self, f"node_{i}", _Node(width, width, deformable=deformable, deform_impl=deform_impl))

    def forward(self, maps: list[Tensor], start: int) -> None:
        """Aggregate ``maps[start:]`` in place (``maps[start]`` is x_0)."""
        for i in range(1, self.steps + 1):
            up = getattr(self, f"up_{i}")(getattr(self, f"proj_{i}")(maps[start + i]))
            maps[start + i] = getattr(self, f"node_{i}")(up + maps[start + i - 1])


class _DLAUp(nn.Module):
    """CenterNet's ``DLAUp`` over maps of strides 1, 2, 4, ... (relative): IDA steps ``ida_0`` (deepest pair) to
    ``ida_{n-2}`` (all maps); returns the finest-first list of each step's deepest result, then the deepest input."""

    def __init__(self, channels: Sequence[int], *, deformable: bool, deform_impl: str) -> None:
        super().__init__()
        n = len(channels)
        ins, scales = list(channels), [2**i for i in range(n)]
        for i in range(n - 1):
            j = n - 2 - i  # this step aggregates maps j..n-1 into channels[j] channels at map j's stride
            factors = [s // scales[j] for s in scales[j:]]
            ida = _IDAUp(channels[j], ins[j:], factors, deformable=deformable, deform_impl=deform_impl)
            setattr(self, f"ida_{i}", ida)
            scales[j + 1 :] = [scales[j]] * (n - 1 - j)
            ins[j + 1 :] = [channels[j]] * (n - 1 - j)
        self.num_steps = n - 1

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        maps = list(maps)
        out = [maps[-1]]
        for i in range(self.num_steps):
            getattr(self, f"ida_{i}")(maps, len(maps) - i - 2)
            out.insert(0, maps[-1])
        return out


class DLAUpNeck(nn.Module):
    """Backbone maps (strides 4, 8, 16, 32) -> one stride-4 map: the released TTFNet DLA-34 neck (``DLAUp`` +
    ``IDAUp`` of CenterNet's ``DLASeg``, ``down_ratio=4``, ``last_level=5``).

    Args:
        in_channels: channels of the four backbone maps, stride 4 first ((64, 128, 256, 512) for DLA-34); any
            backbone's four maps work (the neck's widths are the inputs').
        deformable: modulated deformable nodes (released) or plain 3x3 convs.
        deform_impl: ``"native"`` or ``"torchvision"`` (:class:`~.neck.ModulatedDeformConv2d`).
    Shapes:
        input: 4 maps (B, in_channels[i], H/2^(i+2), W/2^(i+2)), H and W multiples of 32;
        output (B, in_channels[0], H/4, W/4).
    """

    def __init__(self, *, in_channels: Sequence[int], deformable: bool = True, deform_impl: str = "native") -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"DLAUpNeck needs the backbone's 4 maps (strides 4-32), got in_channels {in_channels}")
        chans = [int(c) for c in in_channels]
        self.dla_up = _DLAUp(chans, deformable=deformable, deform_impl=deform_impl)
        self.ida_up = _IDAUp(chans[0], chans[:3], [1, 2, 4], deformable=deformable, deform_impl=deform_impl)
        self.out_channels = chans[0]
        self.deformable = deformable
        self.deform_impl = deform_impl

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        maps = self.dla_up(list(feats))[:3]  # strides 4, 8, 16 (the stride-32 input is not re-used)
        self.ida_up(maps, 0)
        return maps[-1]
