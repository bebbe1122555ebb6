"""Backbones returning four feature maps at strides 4, 8, 16, 32.

* ResNet-18/34 from torchvision (64/128/256/512 channels), optional ImageNet weights.
* DarkNet-53 written here per the released TTFNet (128/256/512/1024 channels).
* DLA-34 written here (64/128/256/512 channels), the classification trunk of the DLA paper as
  CenterNet and the released TTFNet DLA configs use it (key names of timm's ``dla34``).
* Any timm model (``backbone=timm backbone.model=NAME``) through ``features_only``: the levels
  with reductions 4, 8, 16, 32 are picked from its ``feature_info`` (needs the ``timm`` extra).

All support ``frozen_stages`` (-1 none, 0 stem, 1 stem + stage 1 (default), ...): frozen
parameters get ``requires_grad=False`` and frozen modules stay in eval mode (their BN statistics
do not move), while BN elsewhere trains. ``weights=PATH`` loads a local state dict with strict key
checking: a mismatch raises an error listing the missing and unexpected keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, resnet18, resnet34

from ttfnet_lightning.core.models.base import (
    FreezableBackbone,
    WeightsError,
    load_checked,
    load_state_dict_strict,
    read_state_dict,
)
from ttfnet_lightning.core.models.dla import DLA34
from ttfnet_lightning.core.models.timm_backbone import TimmBackbone, import_timm

log = logging.getLogger(__name__)

__all__ = [
    "ResNetBackbone",
    "DarkNet53",
    "DLA34",
    "TimmBackbone",
    "BACKBONES",
    "build_backbone",
    "load_state_dict_strict",
    "WeightsError",
    "import_timm",
    "is_released_darknet",
    "released_darknet_key",
    "from_released_darknet",
]


_RESNETS = {
    18: (resnet18, ResNet18_Weights.IMAGENET1K_V1),
    34: (resnet34, ResNet34_Weights.IMAGENET1K_V1),
}


class ResNetBackbone(FreezableBackbone):
    """torchvision ResNet-18/34 trunk: (B, 3, H, W) -> 4 maps at strides 4, 8, 16, 32.

    Args:
        depth: 18 or 34.
        pretrained: start from torchvision's ImageNet weights (downloaded once into the torch hub
            cache; offline this fails with an error naming the ``weights=PATH`` alternative).
        weights: path to a local state dict (torchvision ResNet key names; ``fc.*`` is ignored),
            loaded strictly. Takes precedence over ``pretrained``.
        frozen_stages: -1 none, 0 stem, 1 stem + layer1 (default), up to 4.
    """

    def __init__(
        self, *, depth: int = 18, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1
    ) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        builder, tv_weights = _RESNETS[depth]
        net = builder(weights=None)
        if weights:
            load_state_dict_strict(net, weights, ignore_prefixes=("fc.",))
        elif pretrained:
            try:
                net.load_state_dict(tv_weights.get_state_dict(progress=False))
            except Exception as exc:  # URLError, HTTPError, socket errors, SSL errors...
                raise WeightsError(
                    f"could not download torchvision's {tv_weights} for ResNet-{depth} ({exc}). "
                    "This machine may be offline: download the file elsewhere and pass "
                    "backbone.weights=/path/to/resnet.pth, or set backbone.pretrained=false."
                ) from exc
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = (64, 128, 256, 512)
        self.frozen_stages = frozen_stages
        self._freeze()

    def _stage_modules(self) -> list[nn.Module]:
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def _conv_bn_leaky(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class _DarkResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_leaky(channels, channels // 2, 1)
        self.conv2 = _conv_bn_leaky(channels // 2, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


# the released DarknetV3 (ZJULearning/ttfnet mmdet/models/backbones/darknet.py) names each conv-BN-LeakyReLU
# cell's parts ``conv`` and ``bn``; here they are positions 0 and 1 of an nn.Sequential
_RELEASED_CELL = {"conv": "0", "bn": "1"}
_RELEASED_STEM = re.compile(r"stem\.(conv|bn)\.(\w+)")
_RELEASED_DOWN = re.compile(r"layer([1-5])\.0\.(conv|bn)\.(\w+)")
_RELEASED_BLOCK = re.compile(r"layer([1-5])\.(\d+)\.body\.([01])\.(conv|bn)\.(\w+)")
# its ImageNet classifier (``out_indices=None``: average pool + ``output`` Linear(1024, 1000)), not part of the trunk
_RELEASED_CLASSIFIER = "output."


def is_released_darknet(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` has the key layout of the released DarknetV3 (``stem.conv.*``, ``layerN.0.conv.*``,
    ``layerN.M.body.K.conv.*``): the official ``darknet53.pth`` ImageNet file and the released TTFNet
    checkpoints' ``backbone.*``."""
    return any(_RELEASED_STEM.fullmatch(k) or _RELEASED_DOWN.fullmatch(k) for k in state)


def released_darknet_key(key: str) -> str | None:
    """:class:`DarkNet53`'s name for a key of the released DarknetV3, None for a key it does not name:
    ``stem.{conv,bn}.P`` -> ``stem.{0,1}.P``; ``layerN.0.{conv,bn}.P`` (the stride-2 conv) ->
    ``stages.{N-1}.0.{0,1}.P``; ``layerN.M.body.K.{conv,bn}.P`` (residual block M, its 1x1 (K=0) and 3x3
    (K=1) cell) -> ``stages.{N-1}.M.conv{K+1}.{0,1}.P``."""
    if m := _RELEASED_STEM.fullmatch(key):
        return f"stem.{_RELEASED_CELL[m[1]]}.{m[2]}"
    if m := _RELEASED_DOWN.fullmatch(key):
        return f"stages.{int(m[1]) - 1}.0.{_RELEASED_CELL[m[2]]}.{m[3]}"
    if (m := _RELEASED_BLOCK.fullmatch(key)) and int(m[2]) > 0:
        return f"stages.{int(m[1]) - 1}.{m[2]}.conv{int(m[3]) + 1}.{_RELEASED_CELL[m[4]]}.{m[5]}"
    return None


def from_released_darknet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A released DarknetV3 state dict under :class:`DarkNet53`'s key names (:func:`released_darknet_key`;
    shapes are equal). The ImageNet classifier ``output.*`` is dropped; a key it does not name is kept as it
    is (a strict load then names it); a BN's ``num_batches_tracked`` the file lacks is 0 (files saved
    before PyTorch 0.4.1 have none)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_RELEASED_CLASSIFIER):
            continue
        out[released_darknet_key(key) or key] = value
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


class DarkNet53(FreezableBackbone):
    """DarkNet-53 (YOLOv3) trunk as in the released TTFNet.

    Stem: 3x3 conv 32 ch, stride 1. Five stages, each a 3x3 stride-2 conv followed by
    [1, 2, 8, 8, 4] residual blocks (1x1 to C/2, 3x3 back to C) with C = 64/128/256/512/1024;
    every conv is conv (no bias) + BN + LeakyReLU(0.1). Returns stages 2-5 (strides 4, 8, 16, 32;
    128, 256, 512, 1024 channels).

    Args:
        weights: local state dict path, loaded strictly (the released code used strict=False and
            missed key mismatches silently): this module's key names, or the released DarknetV3's
            (the official ``darknet53.pth`` ImageNet file: ``stem.conv``, ``layerN.M.body.K.conv``...,
            detected by the key layout and renamed, :func:`from_released_darknet`).
        pretrained: not available (torchvision has no DarkNet weights); raises with a hint.
        frozen_stages: -1 none, 0 stem, 1 stem + stage 1 (default), up to 5.
        init: ``pytorch`` (PyTorch's default conv init) or ``kaiming`` (the released code from scratch:
            mmcv's ``kaiming_init``, normal with fan-out for ReLU and zero bias; BN weight 1, bias 0); weights
            loaded from a file replace it.
    """

    BLOCKS = (1, 2, 8, 8, 4)
    CHANNELS = (64, 128, 256, 512, 1024)
    INITS = ("pytorch", "kaiming")

    def __init__(
        self, *, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1, init: str = "pytorch"
    ) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= 5:
            raise ValueError(f"frozen_stages must be in [-1, 5], got {frozen_stages}")
        if init not in self.INITS:
            raise ValueError(f"backbone.init must be one of {self.INITS} for DarkNet-53, got {init!r}")
        self.stem = _conv_bn_leaky(3, 32, 3)
        stages = []
        cin = 32
        for cout, n in zip(self.CHANNELS, self.BLOCKS):
            stages.append(
                nn.Sequential(_conv_bn_leaky(cin, cout, 3, stride=2), *[_DarkResidual(cout) for _ in range(n)])
            )
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = (128, 256, 512, 1024)
        self.frozen_stages = frozen_stages
        if init == "kaiming":
            self._kaiming_init()
        if weights:
            self._load_weights(weights)
        elif pretrained:
            raise WeightsError(
                "no downloadable ImageNet weights exist for DarkNet-53 here: pass "
                "backbone.weights=/path/to/darknet53.pth (a state dict with this module's keys), "
                "or set backbone.pretrained=false to train from scratch."
            )
        self._freeze()

    def _load_weights(self, weights: str) -> None:
        state = read_state_dict(weights)
        if not is_released_darknet(state):
            load_checked(self, state, source=weights)
            return
        try:
            load_checked(self, from_released_darknet(state), source=weights)
        except WeightsError as exc:
            raise WeightsError(
                f"{exc}\n  (the file has the released DarknetV3 key layout, renamed to this module's: stem.conv -> "
                "stem.0, layerN.0.conv -> stages.{N-1}.0.0, layerN.M.body.K.conv -> stages.{N-1}.M.conv{K+1}.0; "
                "its classifier output.* dropped)"
            ) from exc
        log.info("loaded the released DarkNet-53 layout from %s (renamed to DarkNet53's keys)", weights)

    def _kaiming_init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def released_norm_names(self) -> set[str]:
        """Every BatchNorm parameter: the released DarknetV3 names each cell's BN ``bn``
        (:data:`~ttfnet_lightning.core.models.base.RELEASED_NORM_NAME` matches all of them)."""
        return {
            f"{name}.{p}"
            for name, m in self.named_modules()
            if isinstance(m, nn.BatchNorm2d)
            for p, _ in m.named_parameters()
        }

    def _stage_modules(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs


BACKBONES = ("r18", "r34", "d53", "dla34", "timm")


def build_backbone(
    name: str,
    *,
    model: str | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    frozen_stages: int = 1,
    frozen_bn: str = "eval",
    init: str = "pytorch",
) -> FreezableBackbone:
    """Backbone by name: ``"r18"``, ``"r34"``, ``"d53"``, ``"dla34"`` or ``"timm"`` (with ``model``,
    a timm model name). ``frozen_bn``: see :class:`FreezableBackbone`; ``init``: DarkNet-53 only
    (:class:`DarkNet53`; the others keep their library's initialisation, torchvision's ResNets already
    Kaiming fan-out)."""
    if model and name != "timm":
        raise ValueError(f"backbone.model={model!r} is only used with backbone=timm (the backbone is {name!r})")
    if init != "pytorch" and name not in ("d53", "darknet53"):
        raise ValueError(f"backbone.init={init!r} is DarkNet-53's option; backbone {name!r} takes only 'pytorch'")
    backbone = _build(name, model=model, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages, init=init)
    if frozen_bn != "eval":
        backbone.set_frozen_bn(frozen_bn)
    return backbone


def _build(
    name: str, *, model: str | None, pretrained: bool, weights: str | None, frozen_stages: int, init: str
) -> FreezableBackbone:
    if name in ("r18", "resnet18"):
        return ResNetBackbone(depth=18, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name in ("r34", "resnet34"):
        return ResNetBackbone(depth=34, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name in ("d53", "darknet53"):
        return DarkNet53(pretrained=pretrained, weights=weights, frozen_stages=frozen_stages, init=init)
    if name == "dla34":
        return DLA34(pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name == "timm":
        return TimmBackbone(model=model, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    raise ValueError(f"unknown backbone {name!r}: expected one of {', '.join(repr(b) for b in BACKBONES)}")
