"""DLA-34 (64/128/256/512 channels), the classification trunk of the DLA paper as CenterNet and the released
TTFNet DLA configs use it (key names of timm's ``dla34``)."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from ttfnet_lightning.core.models.base import FreezableBackbone, WeightsError, load_checked, load_state_dict_strict

log = logging.getLogger(__name__)

__all__ = ["DLA34"]


class _DlaBasic(nn.Module):
    """DLA's BasicBlock: 3x3 conv (stride) + BN + ReLU + 3x3 conv + BN, plus the shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        shortcut = x if shortcut is None else shortcut
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + shortcut)


class _DlaRoot(nn.Module):
    """Aggregation node: 1x1 conv over the concatenated children + BN + ReLU (DLA-34: no residual)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, children: list[Tensor]) -> Tensor:
        return self.relu(self.bn(self.conv(torch.cat(children, 1))))


class _DlaTree(nn.Module):
    """Hierarchical deep aggregation tree (DLA's ``Tree``, basic blocks, no root residual).

    The official code (and its ``dla34-ba72cf86.pth``) also builds a 1x1 ``project`` in trees of
    depth > 1 whose output is never used; as in timm it is left out here, and those keys are
    ignored when loading such a file (:data:`DLA34.UNUSED_OFFICIAL_KEYS`).
    """

    def __init__(
        self, levels: int, cin: int, cout: int, stride: int = 1, *, level_root: bool = False, root_dim: int = 0
    ) -> None:
        super().__init__()
        if root_dim == 0:
            root_dim = 2 * cout
        if level_root:
            root_dim += cin
        self.downsample: nn.Module = nn.MaxPool2d(stride, stride=stride) if stride > 1 else nn.Identity()
        self.project: nn.Module = nn.Identity()
        self.root: _DlaRoot | None
        if levels == 1:
            self.tree1: nn.Module = _DlaBasic(cin, cout, stride)
            self.tree2: nn.Module = _DlaBasic(cout, cout, 1)
            if cin != cout:
                self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.root = _DlaRoot(root_dim, cout)
        else:
            self.tree1 = _DlaTree(levels - 1, cin, cout, stride, root_dim=0)
            self.tree2 = _DlaTree(levels - 1, cout, cout, root_dim=root_dim + cout)
            self.root = None
        self.level_root = level_root
        self.levels = levels

    def forward(self, x: Tensor, shortcut: Tensor | None = None, children: list[Tensor] | None = None) -> Tensor:
        children = [] if children is None else children
        bottom = self.downsample(x)
        if self.level_root:
            children.append(bottom)
        if self.root is not None:  # levels == 1
            x1 = self.tree1(x, self.project(bottom))
            x2 = self.tree2(x1)
            return self.root([x2, x1, *children])
        x1 = self.tree1(x)
        children.append(x1)
        return self.tree2(x1, None, children)


class DLA34(FreezableBackbone):
    """DLA-34 (Yu et al., "Deep Layer Aggregation", 2018) classification trunk, as CenterNet and the
    released TTFNet DLA configs build it: levels (1, 1, 1, 2, 2, 1), channels (16, 32, 64, 128, 256,
    512), basic blocks. Returns levels 2-5 (strides 4, 8, 16, 32; 64, 128, 256, 512 channels).

    The released TTFNet DLA config puts CenterNet's IDA-up (``DLASeg``) and its own FPN on this
    trunk; here it feeds the TTFNet neck like every other backbone.

    Args:
        pretrained: the official ImageNet weights ``dla34-ba72cf86.pth`` (the file the released
            configs load), downloaded once into the torch hub cache; offline this fails with an
            error naming the ``weights=PATH`` alternative.
        weights: local state dict, loaded strictly: the official file's key names (``fc.*`` and
            the unused ``project`` of depth-2 trees ignored) or timm's ``dla34`` (same names).
        frozen_stages: -1 none, 0 stem (base_layer, level0, level1: stride 2), 1 stem + level2
            (default), up to 4.
    """

    LEVELS = (1, 1, 1, 2, 2, 1)
    CHANNELS = (16, 32, 64, 128, 256, 512)
    URL = "http://dl.yf.io/dla/models/imagenet/dla34-ba72cf86.pth"
    # built by the official code but never used in its forward pass (see _DlaTree)
    UNUSED_OFFICIAL_KEYS = ("level3.project.", "level4.project.")

    def __init__(self, *, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        ch, lv = self.CHANNELS, self.LEVELS
        self.base_layer = nn.Sequential(
            nn.Conv2d(3, ch[0], 7, padding=3, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True)
        )
        self.level0 = self._conv_level(ch[0], ch[0], lv[0])
        self.level1 = self._conv_level(ch[0], ch[1], lv[1], stride=2)
        self.level2 = _DlaTree(lv[2], ch[1], ch[2], 2, level_root=False)
        self.level3 = _DlaTree(lv[3], ch[2], ch[3], 2, level_root=True)
        self.level4 = _DlaTree(lv[4], ch[3], ch[4], 2, level_root=True)
        self.level5 = _DlaTree(lv[5], ch[4], ch[5], 2, level_root=True)
        for m in self.modules():  # the official initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.out_channels = (64, 128, 256, 512)
        self.frozen_stages = frozen_stages
        ignore = ("fc.", *self.UNUSED_OFFICIAL_KEYS)
        if weights:
            load_state_dict_strict(self, weights, ignore_prefixes=ignore)
        elif pretrained:
            try:
                state = torch.hub.load_state_dict_from_url(self.URL, map_location="cpu", progress=False)
            except Exception as exc:  # URLError, HTTPError, socket errors, SSL errors...
                raise WeightsError(
                    f"could not download the DLA-34 ImageNet weights {self.URL} ({exc}). This machine may be "
                    "offline: download the file elsewhere and pass backbone.weights=/path/to/dla34-ba72cf86.pth, "
                    "or set backbone.pretrained=false."
                ) from exc
            load_checked(
                self,
                {k: v for k, v in state.items() if not k.startswith(ignore)},
                source=self.URL,
                ignore_prefixes=ignore,
            )
        self._freeze()

    @staticmethod
    def _conv_level(cin: int, cout: int, convs: int, stride: int = 1) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        return nn.Sequential(*layers)

    def _stage_modules(self) -> list[nn.Module]:
        return [
            nn.ModuleList([self.base_layer, self.level0, self.level1]),
            self.level2,
            self.level3,
            self.level4,
            self.level5,
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.level1(self.level0(self.base_layer(x)))
        c2 = self.level2(x)
        c3 = self.level3(c2)
        c4 = self.level4(c3)
        c5 = self.level5(c4)
        return [c2, c3, c4, c5]
