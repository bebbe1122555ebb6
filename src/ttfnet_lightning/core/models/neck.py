"""TTFNet neck: three up-sampling stages (stride 32 -> 4) with shortcut connections.

Each stage: modulated deformable 3x3 conv (offsets and masks from a zero-initialised conv; computed
by ``deform.deform_conv2d_native`` (grid_sample + matmul, the default) or, equivalently,
``torchvision.ops.deform_conv2d``) + BN + ReLU + bilinear x2 (align_corners=True), channels
256 -> 128 -> 64. After each up-sampling the shortcut from the backbone map of the same stride is
added: plain 3x3 convs (no BN), ReLU between them but not after the last, with 1, 2, 3 convs from
the stride-16, 8, 4 maps by default (the paper's "3, 2, 1 for stages 2, 3, 4"). A stage with 0
convs has no shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from ttfnet_lightning.core.models.deform import deform_conv2d_native

__all__ = ["ModulatedDeformConv2d", "UpsampleNeck", "NECK_CHANNELS", "SHORTCUT_CONVS"]

#: the paper's neck (Fig. 2): up-sampling widths for strides 16, 8, 4 and shortcut convs for backbone stages 2, 3, 4
NECK_CHANNELS = (256, 128, 64)
SHORTCUT_CONVS = (3, 2, 1)


DEFORM_IMPLS = ("native", "torchvision")


def _check_deform_impl(deform_impl: str) -> None:
    if deform_impl not in DEFORM_IMPLS:
        raise ValueError(f"deform_impl must be one of {DEFORM_IMPLS}, got {deform_impl!r}")


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable conv (DCNv2).

    Offsets (2*k*k channels) and masks (k*k channels, sigmoid) come from a conv initialised to
    zero, so at initialisation it is a plain conv with every tap scaled by 0.5.

    Args:
        in_channels, out_channels, kernel_size, padding: as ``nn.Conv2d`` (stride 1).
        deform_impl: ``"native"`` (``deform_conv2d_native``: grid_sample + matmul, several times
            faster on CPU, padding 1 only) or ``"torchvision"`` (``torchvision.ops.deform_conv2d``).
            Same parameters (state dicts are interchangeable) and same results up to float rounding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        *,
        deform_impl: str = "native",
    ) -> None:
        super().__init__()
        _check_deform_impl(deform_impl)
        if deform_impl == "native" and padding != 1:
            raise ValueError(f"deform_impl='native' supports padding=1 only, got padding={padding}; use 'torchvision'")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.offset_mask = nn.Conv2d(in_channels, 3 * kernel_size * kernel_size, kernel_size, padding=padding)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.padding = padding
        self.deform_impl = deform_impl

    def extra_repr(self) -> str:
        return f"deform_impl={self.deform_impl!r}"

    def forward(self, x: Tensor) -> Tensor:
        o1, o2, mask = self.offset_mask(x).chunk(3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        if self.deform_impl == "native":
            return deform_conv2d_native(x, offset, self.conv.weight, self.conv.bias, mask=mask.sigmoid())
        return deform_conv2d(
            x, offset, self.conv.weight, self.conv.bias, padding=(self.padding, self.padding), mask=mask.sigmoid()
        )


class _Shortcut(nn.Sequential):
    def __init__(self, cin: int, cout: int, num_convs: int) -> None:
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1))
            if i < num_convs - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class UpsampleNeck(nn.Module):
    """Backbone maps (strides 4, 8, 16, 32) -> one stride-4 map.

    Args:
        in_channels: channels of the four backbone maps (stride 4 first).
        channels: output channels of the three up-sampling stages (256, 128, 64).
        shortcut_convs: number of shortcut convs for backbone stages 2, 3, 4 (strides 4, 8, 16),
            i.e. the paper's (3, 2, 1); (0, 0, 0) disables shortcuts (Table 4 sweeps them).
        deformable: modulated deformable convs (True, the paper) or plain 3x3 convs (faster on
            CPUs; also an ablation).
        deform_impl: implementation of the deformable convs, ``"native"`` (grid_sample + matmul,
            default, much faster on CPU) or ``"torchvision"``; see ``ModulatedDeformConv2d``.
    Shapes:
        input: 4 maps (B, in_channels[i], H/2^(i+2), W/2^(i+2)); output (B, channels[-1], H/4, W/4).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        channels: Sequence[int] = NECK_CHANNELS,
        shortcut_convs: Sequence[int] = SHORTCUT_CONVS,
        deformable: bool = True,
        deform_impl: str = "native",
    ) -> None:
        super().__init__()
        _check_deform_impl(deform_impl)
        if len(in_channels) != 4 or len(channels) != 3 or len(shortcut_convs) != 3:
            raise ValueError(
                "UpsampleNeck needs 4 in_channels, 3 channels and 3 shortcut_convs, got "
                f"{list(in_channels)}, {list(channels)}, {list(shortcut_convs)}"
            )
        if any(n < 0 for n in shortcut_convs):
            raise ValueError(f"shortcut_convs must be >= 0, got {list(shortcut_convs)}")
        self.deformable = deformable
        self.deform_impl = deform_impl
        ups = []
        cin = in_channels[3]
        for cout in channels:
            if deformable:
                conv: nn.Module = ModulatedDeformConv2d(cin, cout, deform_impl=deform_impl)
            else:
                conv = nn.Conv2d(cin, cout, 3, padding=1)
            bn = nn.BatchNorm2d(cout)
            ups.append(nn.Sequential(conv, bn, nn.ReLU(inplace=True)))
            cin = cout
        self.upsample = nn.ModuleList(ups)
        # shortcut i joins after up-sampling stage i: from stride 16, 8, 4 = backbone maps 2, 1, 0
        convs_by_stage = list(shortcut_convs)[::-1]  # paper order is stages 2, 3, 4
        self.shortcuts = nn.ModuleList(
            _Shortcut(in_channels[2 - i], channels[i], n) if n > 0 else nn.Identity()
            for i, n in enumerate(convs_by_stage)
        )
        self._has_shortcut = [n > 0 for n in convs_by_stage]
        self.out_channels = channels[-1]

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[3]
        for i, up in enumerate(self.upsample):
            x = F.interpolate(up(x), scale_factor=2, mode="bilinear", align_corners=True)
            if self._has_shortcut[i]:
                x = x + self.shortcuts[i](feats[2 - i])
        return x
