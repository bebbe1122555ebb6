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
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, resnet18, resnet34

log = logging.getLogger(__name__)

__all__ = [
    "ResNetBackbone", "DarkNet53", "DLA34", "TimmBackbone", "BACKBONES", "build_backbone", "load_state_dict_strict",
    "WeightsError", "import_timm",
]


class WeightsError(RuntimeError):
    """Backbone weights could not be obtained or do not match the architecture."""


def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":  # timm / Hugging Face hub checkpoints
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as exc:
        raise WeightsError(f"reading {path} needs the safetensors package (pip install safetensors)") from exc
    except Exception as exc:  # corrupt or non-tensor pickle (torch's advice to load it unsafely is not passed on)
        why = "a corrupt file, or Python objects other than tensors (never loaded)" if "Weights only" in str(exc) else exc
        raise WeightsError(f"could not read backbone weights from {path}: {type(exc).__name__}: {why}") from exc
    # accept a bare state dict or the usual checkpoint wrappers
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    state = dict(obj)
    for prefix in ("module.", "backbone."):  # DataParallel / detector checkpoints
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict_strict(
    module: nn.Module, path: str | Path, *, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load a local state dict into ``module`` with strict key and shape checking.

    Keys starting with one of ``ignore_prefixes`` (e.g. a classifier ``fc.`` the backbone does not
    have) are dropped first. Anything else missing, unexpected or of the wrong shape raises
    :class:`WeightsError` naming the file and listing the offending keys.
    """
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    _load_checked(module, state, source=path, ignore_prefixes=ignore_prefixes)


def _load_checked(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str | Path, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``module`` after checking keys and shapes (the body of
    :func:`load_state_dict_strict`; ``source`` names the weights in the error)."""
    path = source
    state = dict(state)
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shape:

        def fmt(keys: list[str]) -> str:
            return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")

        parts = [f"backbone weights {path} do not match {type(module).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {fmt(unexpected)}")
        if shape:
            parts.append(f"shape mismatches ({len(shape)}): {fmt(shape)}")
        raise WeightsError("\n  ".join(parts))
    # every key outside ignore_prefixes was checked above; strict=False only tolerates those
    module.load_state_dict(state, strict=not ignore_prefixes)
    log.info("loaded backbone weights from %s (%d tensors)", path, len(state))


class _FreezableBackbone(nn.Module):
    """Common freezing logic: subclasses list their stages (stem first) in ``self.stages``."""

    out_channels: tuple[int, int, int, int]
    frozen_stages: int

    def _stage_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _freeze(self) -> None:
        for stage in self._stage_modules()[: self.frozen_stages + 1]:
            stage.eval()
            for p in stage.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> _FreezableBackbone:
        super().train(mode)
        self._freeze()  # frozen stages keep eval-mode BN whatever the caller asks
        return self


_RESNETS = {
    18: (resnet18, ResNet18_Weights.IMAGENET1K_V1),
    34: (resnet34, ResNet34_Weights.IMAGENET1K_V1),
}


class ResNetBackbone(_FreezableBackbone):
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


class DarkNet53(_FreezableBackbone):
    """DarkNet-53 (YOLOv3) trunk as in the released TTFNet.

    Stem: 3x3 conv 32 ch, stride 1. Five stages, each a 3x3 stride-2 conv followed by
    [1, 2, 8, 8, 4] residual blocks (1x1 to C/2, 3x3 back to C) with C = 64/128/256/512/1024;
    every conv is conv (no bias) + BN + LeakyReLU(0.1). Returns stages 2-5 (strides 4, 8, 16, 32;
    128, 256, 512, 1024 channels).

    Args:
        weights: local state dict path, loaded strictly (the released code used strict=False and
            missed key mismatches silently).
        pretrained: not available (torchvision has no DarkNet weights); raises with a hint.
        frozen_stages: -1 none, 0 stem, 1 stem + stage 1 (default), up to 5.
    """

    BLOCKS = (1, 2, 8, 8, 4)
    CHANNELS = (64, 128, 256, 512, 1024)

    def __init__(self, *, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= 5:
            raise ValueError(f"frozen_stages must be in [-1, 5], got {frozen_stages}")
        self.stem = _conv_bn_leaky(3, 32, 3)
        stages = []
        cin = 32
        for cout, n in zip(self.CHANNELS, self.BLOCKS):
            stages.append(nn.Sequential(_conv_bn_leaky(cin, cout, 3, stride=2), *[_DarkResidual(cout) for _ in range(n)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = (128, 256, 512, 1024)
        self.frozen_stages = frozen_stages
        if weights:
            load_state_dict_strict(self, weights)
        elif pretrained:
            raise WeightsError(
                "no downloadable ImageNet weights exist for DarkNet-53 here: pass "
                "backbone.weights=/path/to/darknet53.pth (a state dict with this module's keys), "
                "or set backbone.pretrained=false to train from scratch."
            )
        self._freeze()

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


# ------------------------------------------------------------------------------------- DLA-34
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

    def __init__(self, levels: int, cin: int, cout: int, stride: int = 1, *, level_root: bool = False, root_dim: int = 0) -> None:
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


class DLA34(_FreezableBackbone):
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
        self.base_layer = nn.Sequential(nn.Conv2d(3, ch[0], 7, padding=3, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True))
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
            _load_checked(self, {k: v for k, v in state.items() if not k.startswith(ignore)}, source=self.URL, ignore_prefixes=ignore)
        self._freeze()

    @staticmethod
    def _conv_level(cin: int, cout: int, convs: int, stride: int = 1) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        return nn.Sequential(*layers)

    def _stage_modules(self) -> list[nn.Module]:
        return [nn.ModuleList([self.base_layer, self.level0, self.level1]), self.level2, self.level3, self.level4, self.level5]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.level1(self.level0(self.base_layer(x)))
        c2 = self.level2(x)
        c3 = self.level3(c2)
        c4 = self.level4(c3)
        c5 = self.level5(c4)
        return [c2, c3, c4, c5]


# ------------------------------------------------------------------------------------ timm
TIMM_EXTRA_HINT = "pip install 'ttfnet-lightning[timm]' (or: pip install 'timm>=1.0')"


def import_timm() -> Any:
    """``timm``, imported on first use (the core library does not need it), or an ImportError
    naming the extra to install."""
    try:
        import timm
    except ImportError as exc:
        raise ImportError(f"backbone=timm needs the timm package, which is not installed: {TIMM_EXTRA_HINT}") from exc
    return timm


def _norm_key(key: str) -> str:
    # timm's FeatureListNet flattens nested Sequentials into names joined by "_" (stem.0 -> stem_0)
    return key.replace("_", ".")


class TimmBackbone(_FreezableBackbone):
    """Any timm model as a backbone: ``timm.create_model(model, features_only=True, out_indices=...)``
    with the out indices whose ``feature_info`` reductions are 4, 8, 16 and 32 (picked automatically;
    a model without all four, e.g. a plain ViT, is refused with its reductions). Channels come from
    ``feature_info``, so the neck takes them as they are. NHWC feature maps are permuted to NCHW.

    Args:
        model: a timm model name (``timm.list_models()``), e.g. ``resnet18d``, ``mobilenetv3_large_100``,
            ``resnet50d``, ``convnext_atto``, ``efficientnet_b0``.
        pretrained: timm's default pretrained weights (Hugging Face hub, cached by timm); offline this
            fails with an error naming the ``weights=PATH`` alternative. Loaded strictly.
        weights: local state dict (``.pth``/``.bin`` or ``.safetensors``) with the key names of the timm
            classification model (what the hub holds; its classifier and other layers past the last
            feature level are ignored) or of the ``features_only`` model (what
            :func:`~ttfnet_lightning.checkpoints.export_backbone_weights` writes), loaded strictly.
        frozen_stages: -1 none, 0 stem (everything before the stride-4 level), 1 stem + the stride-4
            level (default), ..., 4 all. A stage ends with the module that timm names for its level.
    """

    REDUCTIONS = (4, 8, 16, 32)

    def __init__(self, *, model: str | None, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1) -> None:
        super().__init__()
        if not model:
            raise ValueError("backbone=timm needs a timm model name: backbone.model=<name>, e.g. backbone.model=resnet18d")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        timm = import_timm()
        self.model_name = model
        out_indices = self._pick_levels(timm, model)
        self.net = timm.create_model(model, features_only=True, out_indices=out_indices, pretrained=False)
        info = self.net.feature_info
        if tuple(info.reduction()) != self.REDUCTIONS:  # pragma: no cover - timm honours out_indices
            raise ValueError(f"timm model {model!r} gave reductions {info.reduction()} for out_indices {out_indices}")
        self.out_channels = tuple(int(c) for c in info.channels())
        self.nhwc = str(getattr(self.net, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.frozen_stages = frozen_stages
        self._stage_of_module = self._assign_stages()
        if weights:
            state = _read_state_dict(weights)
            self._load_timm_state(timm, state, source=weights)
        elif pretrained:
            try:
                full = timm.create_model(model, pretrained=True)
            except Exception as exc:  # offline hub, no weights for this model, ...
                raise WeightsError(
                    f"could not download timm's pretrained weights for {model!r} ({type(exc).__name__}: {exc}). This "
                    f"machine may be offline: download the file elsewhere (e.g. the model's model.safetensors on the "
                    f"Hugging Face hub) and pass backbone.weights=/path/to/{model}.safetensors, or set backbone.pretrained=false."
                ) from exc
            self._load_timm_state(timm, full.state_dict(), source=f"timm pretrained {model}", full=full)
        self._freeze()

    @classmethod
    def _pick_levels(cls, timm: Any, model: str) -> tuple[int, ...]:
        """timm out indices of the levels with reductions 4, 8, 16, 32 (from a model built on the
        meta device: no memory, no initialisation)."""
        try:
            try:
                with torch.device("meta"):
                    probe = timm.create_model(model, features_only=True, pretrained=False)
            except RuntimeError as exc:
                if "Unknown model" in str(exc):
                    raise
                probe = timm.create_model(model, features_only=True, pretrained=False)  # a model that cannot init on meta
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"unknown timm model {model!r} (timm.list_models('*pattern*') lists the names)") from exc
            raise
        info = probe.feature_info
        reductions, indices = list(info.reduction()), list(info.out_indices)
        if not all(r in reductions for r in cls.REDUCTIONS):
            raise ValueError(
                f"timm model {model!r} has feature levels with reductions {reductions}; TTFNet needs one each at "
                f"{list(cls.REDUCTIONS)} (a pyramid backbone: ResNets, MobileNets, EfficientNets, ConvNeXts, DLA, RegNets, ...)"
            )
        return tuple(int(indices[reductions.index(r)]) for r in cls.REDUCTIONS)

    # ----------------------------------------------------------------------- frozen stages
    def _assign_stages(self) -> dict[str, int]:
        """Stage (0 stem ... 4) of every module of the features model, in registration order: stage
        i >= 1 ends with the module timm names for the i-th level (stride 4, 8, 16, 32)."""
        names = [n for n, _ in self.net.named_modules()]
        pos = {n: i for i, n in enumerate(names)}
        starts, ends = [], []
        for level in self.net.feature_info.module_name():
            cands = [c for c in (level, level.replace(".", "_"), f"model.{level}") if c in pos]
            if not cands:  # pragma: no cover - every timm feature class names its modules
                raise ValueError(f"timm model {self.model_name!r}: feature module {level!r} not found; frozen_stages cannot be applied")
            name = cands[0]
            starts.append(pos[name])
            ends.append(max(i for i, n in enumerate(names) if n == name or n.startswith(name + ".")))

        def stage(i: int) -> int:
            return 0 if i < starts[0] else min(4, 1 + sum(e < i for e in ends[:-1]))

        return {n: stage(i) for i, n in enumerate(names)}

    def _stage_modules(self) -> list[nn.Module]:
        stages: list[list[nn.Module]] = [[] for _ in range(5)]
        for name, m in self.net.named_modules():
            if not any(True for _ in m.children()):  # leaves (containers span stages)
                stages[self._stage_of_module[name]].append(m)
        return [nn.ModuleList(s) for s in stages]

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        for name, m in self.net.named_modules():
            if self._stage_of_module[name] <= self.frozen_stages:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
                if not any(True for _ in m.children()):
                    m.eval()

    # ------------------------------------------------------------------------------ weights
    def _load_timm_state(self, timm: Any, state: Mapping[str, Tensor], *, source: str | Path, full: nn.Module | None = None) -> None:
        """Strictly load ``state`` (classification-model or features-model key names) into the
        features model; the classification model's layers past the last level are ignored."""
        own = set(self.net.state_dict())
        if full is None and not set(state) <= own:
            full = timm.create_model(self.model_name, pretrained=False)
        to_own: dict[str, str] = {}
        extra: set[str] = set()
        if full is not None:
            full_keys = list(full.state_dict())
            by_norm: dict[str, str | None] = {}
            for k in full_keys:
                by_norm[_norm_key(k)] = None if _norm_key(k) in by_norm else k  # None: ambiguous
            for k in own:
                for cand in (k, k[len("model.") :] if k.startswith("model.") else None):
                    if cand is not None and by_norm.get(_norm_key(cand)):
                        to_own[by_norm[_norm_key(cand)]] = k  # type: ignore[index]
                        break
            extra = set(full_keys) - set(to_own)  # classifier, conv_head, ... (not in the features model)
        translated: dict[str, Tensor] = {}
        for k, v in state.items():
            if k in own:
                translated[k] = v
            elif k in to_own:
                translated[to_own[k]] = v
            elif k not in extra:
                translated[k] = v  # reported as unexpected
        _load_checked(self.net, translated, source=source)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = list(self.net(x))
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats


BACKBONES = ("r18", "r34", "d53", "dla34", "timm")


def build_backbone(
    name: str, *, model: str | None = None, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1
) -> _FreezableBackbone:
    """Backbone by name: ``"r18"``, ``"r34"``, ``"d53"``, ``"dla34"`` or ``"timm"`` (with ``model``,
    a timm model name)."""
    if model and name != "timm":
        raise ValueError(f"backbone.model={model!r} is only used with backbone=timm (the backbone is {name!r})")
    if name in ("r18", "resnet18"):
        return ResNetBackbone(depth=18, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name in ("r34", "resnet34"):
        return ResNetBackbone(depth=34, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name in ("d53", "darknet53"):
        return DarkNet53(pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name == "dla34":
        return DLA34(pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    if name == "timm":
        return TimmBackbone(model=model, pretrained=pretrained, weights=weights, frozen_stages=frozen_stages)
    raise ValueError(f"unknown backbone {name!r}: expected one of {', '.join(repr(b) for b in BACKBONES)}")
