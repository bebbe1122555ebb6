"""``TTFNet`` = backbone + neck + head; forward only (no targets, no losses)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ttfnet_lightning.core.models.backbones import build_backbone
from ttfnet_lightning.core.models.dla_up import DLAUpNeck
from ttfnet_lightning.core.models.head import CenterNetHead, TTFHead
from ttfnet_lightning.core.models.neck import NECK_CHANNELS, SHORTCUT_CONVS, UpsampleNeck

__all__ = ["TTFNet", "METHODS", "NECKS"]

# regression convs per backbone in the released configs (DLA-34: stacked_convs=(2, 1))
_DEFAULT_BOX_CONVS = {"r18": 1, "r34": 2, "d53": 2, "dla34": 1}

#: the heads (and training objectives) a network can have: TTFNet's, or CenterNet's (core/centernet.py)
METHODS = ("ttfnet", "centernet")
#: up-sampling necks: TTFNet's (paper Fig. 2) or the released DLA-34 configs' DLA up-sampling (core/models/dla_up.py)
NECKS = ("ttfnet", "dla_up")
_TTF_NECK_DEFAULTS = {"neck_channels": NECK_CHANNELS, "shortcut_convs": SHORTCUT_CONVS}


class TTFNet(nn.Module):
    """TTFNet detector network, built from plain hyper-parameters (Hydra- and checkpoint-friendly).

    Args:
        num_classes: C.
        backbone: ``"r18"``, ``"r34"``, ``"d53"``, ``"dla34"`` or ``"timm"``.
        backbone_model: the timm model name for ``backbone="timm"`` (e.g. ``"resnet18d"``).
        pretrained: ImageNet weights (torchvision for ResNets, the official file for DLA-34, timm's
            default for timm models).
        weights: local backbone state dict (strict keys).
        frozen_stages: backbone stages frozen (1 = stem + stage 1; -1 none).
        frozen_bn: ``eval`` (frozen stages' BN statistics fixed) or ``train`` (the released DarkNet-53).
        backbone_init: DarkNet-53's conv init, ``pytorch`` or ``kaiming`` (the released code from scratch).
        neck: ``"ttfnet"`` (:class:`~.neck.UpsampleNeck`) or ``"dla_up"`` (:class:`~.dla_up.DLAUpNeck`, the
            released DLA-34 configs' neck; its widths are the backbone's, so ``neck_channels`` and
            ``shortcut_convs`` must stay at their defaults).
        neck_channels: (256, 128, 64).
        shortcut_convs: shortcut convs for backbone stages 2, 3, 4 ((3, 2, 1); (0, 0, 0) = none).
        deformable: modulated deformable up-sampling convs (True) or plain convs.
        deform_impl: ``"native"`` (grid_sample + matmul, default, much faster on CPU) or
            ``"torchvision"`` (``torchvision.ops.deform_conv2d``) for the deformable convs; same
            parameters and results.
        heatmap_convs, heatmap_channels, box_convs, box_channels: head sizes; ``box_convs=None``
            takes the released value for the backbone (1 for r18, 2 otherwise).
        class_aware: 4*C regression channels.
        wh_scale: s = 16.
        prior_prob: initial heatmap probability (0.01).
        stride: output stride (fixed at 4 by the architecture; exposed for the encoder/decoder).
        method: ``"ttfnet"`` (the head above) or ``"centernet"``: CenterNet's head
            (:class:`~ttfnet_lightning.core.models.head.CenterNetHead`) with the same head sizes
            (``box_convs=None``: 1; ``conf/method/centernet.yaml`` sets CenterNet's one 64-channel conv per
            branch); ``wh_scale``, ``prior_prob`` and ``class_aware`` are TTFNet's only.
    Shapes:
        images (B, 3, H, W), H and W multiples of 32 -> heatmap logits (B, C, H/4, W/4),
        distances (B, 4, H/4, W/4) (l, t, r, b) in input pixels (or (B, 4C, H/4, W/4)); for
        ``method="centernet"`` the second output is (B, 4, H/4, W/4): size (w, h) and centre offset
        (x, y) in output-map units (:mod:`ttfnet_lightning.core.centernet`).
    """

    stride = 4

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "r18",
        backbone_model: str | None = None,
        pretrained: bool = False,
        weights: str | None = None,
        frozen_stages: int = 1,
        frozen_bn: str = "eval",
        backbone_init: str = "pytorch",
        neck: str = "ttfnet",
        neck_channels: Sequence[int] = NECK_CHANNELS,
        shortcut_convs: Sequence[int] = SHORTCUT_CONVS,
        deformable: bool = True,
        deform_impl: str = "native",
        heatmap_convs: int = 2,
        heatmap_channels: int = 128,
        box_convs: int | None = None,
        box_channels: int = 64,
        class_aware: bool = False,
        wh_scale: float = 16.0,
        prior_prob: float = 0.01,
        method: str = "ttfnet",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "centernet" and class_aware:
            raise ValueError("method='centernet' has no class-aware regression (kernel.class_aware=true)")
        self.num_classes = num_classes
        self.method = method
        self.class_aware = class_aware
        self.backbone = build_backbone(
            backbone,
            model=backbone_model,
            pretrained=pretrained,
            weights=weights,
            frozen_stages=frozen_stages,
            frozen_bn=frozen_bn,
            init=backbone_init,
        )
        self.neck = _build_neck(
            neck,
            in_channels=self.backbone.out_channels,
            neck_channels=tuple(neck_channels),
            shortcut_convs=tuple(shortcut_convs),
            deformable=deformable,
            deform_impl=deform_impl,
        )
        if method == "centernet":
            self.head = CenterNetHead(
                in_channels=self.neck.out_channels,
                num_classes=num_classes,
                heatmap_convs=heatmap_convs,
                heatmap_channels=heatmap_channels,
                box_convs=1 if box_convs is None else box_convs,
                box_channels=box_channels,
            )
        else:
            self.head = TTFHead(
                in_channels=self.neck.out_channels,
                num_classes=num_classes,
                heatmap_convs=heatmap_convs,
                heatmap_channels=heatmap_channels,
                box_convs=_DEFAULT_BOX_CONVS.get(backbone, 2) if box_convs is None else box_convs,
                box_channels=box_channels,
                class_aware=class_aware,
                wh_scale=wh_scale,
                prior_prob=prior_prob,
            )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.neck(self.backbone(images)))


def _build_neck(
    neck: str,
    *,
    in_channels: Sequence[int],
    neck_channels: tuple[int, ...],
    shortcut_convs: tuple[int, ...],
    deformable: bool,
    deform_impl: str,
) -> nn.Module:
    if neck == "ttfnet":
        return UpsampleNeck(
            in_channels=in_channels,
            channels=neck_channels,
            shortcut_convs=shortcut_convs,
            deformable=deformable,
            deform_impl=deform_impl,
        )
    if neck != "dla_up":
        raise ValueError(f"neck must be one of {NECKS}, got {neck!r}")
    given = {"neck_channels": neck_channels, "shortcut_convs": shortcut_convs}
    changed = [f"{k}={list(v)}" for k, v in given.items() if tuple(v) != _TTF_NECK_DEFAULTS[k]]
    if changed:
        raise ValueError(
            f"neck='dla_up' takes its widths from the backbone and has no shortcut convs; {', '.join(changed)} "
            "only apply to neck='ttfnet'"
        )
    return DLAUpNeck(in_channels=in_channels, deformable=deformable, deform_impl=deform_impl)
