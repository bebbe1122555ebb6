"""TTFNet network: backbones, neck, head."""

from ttfnet_lightning.core.models.backbones import DarkNet53, ResNetBackbone, build_backbone
from ttfnet_lightning.core.models.base import WeightsError, load_state_dict_strict
from ttfnet_lightning.core.models.dla import DLA34
from ttfnet_lightning.core.models.dla_up import DLAUpNeck
from ttfnet_lightning.core.models.head import TTFHead
from ttfnet_lightning.core.models.neck import ModulatedDeformConv2d, UpsampleNeck
from ttfnet_lightning.core.models.timm_backbone import TimmBackbone
from ttfnet_lightning.core.models.ttfnet import TTFNet

__all__ = [
    "DLA34",
    "DLAUpNeck",
    "DarkNet53",
    "ModulatedDeformConv2d",
    "ResNetBackbone",
    "TTFHead",
    "TTFNet",
    "TimmBackbone",
    "UpsampleNeck",
    "WeightsError",
    "build_backbone",
    "load_state_dict_strict",
]
