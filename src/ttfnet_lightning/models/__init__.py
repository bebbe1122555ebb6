"""TTFNet network: backbones, neck, head."""

from .backbones import DarkNet53, ResNetBackbone, WeightsError, build_backbone, load_state_dict_strict
from .head import TTFHead
from .neck import ModulatedDeformConv2d, UpsampleNeck
from .ttfnet import TTFNet

__all__ = [
    "DarkNet53",
    "ModulatedDeformConv2d",
    "ResNetBackbone",
    "TTFHead",
    "TTFNet",
    "UpsampleNeck",
    "WeightsError",
    "build_backbone",
    "load_state_dict_strict",
]
