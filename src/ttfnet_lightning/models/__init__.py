"""TTFNet network: backbones, neck, head."""

from .backbones import DLA34, DarkNet53, ResNetBackbone, TimmBackbone, WeightsError, build_backbone, load_state_dict_strict
from .head import TTFHead
from .neck import ModulatedDeformConv2d, UpsampleNeck
from .ttfnet import TTFNet

__all__ = [
    "DLA34",
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
