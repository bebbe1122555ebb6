"""DarkNet-53 as the released code trains it, each part switchable: frozen stages' BatchNorm in train mode
(backbone.frozen_bn), Kaiming fan-out conv init from scratch (backbone.init) and the backbone BN layers
the released optimiser treats as normalisation layers (FreezableBackbone.released_norm_names)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ttfnet_lightning.core.models.backbones import DarkNet53, ResNetBackbone, build_backbone


@pytest.fixture(scope="module")
def d53() -> DarkNet53:
    torch.manual_seed(0)
    return DarkNet53(frozen_stages=1)


def _stem_bn(net: DarkNet53) -> nn.BatchNorm2d:
    return net.stem[1]


@pytest.mark.parametrize("frozen_bn, moves", [("eval", False), ("train", True)])
def test_frozen_stages_bn_statistics_move_only_in_train_mode(frozen_bn, moves):
    torch.manual_seed(0)
    net = build_backbone("d53", frozen_stages=1, frozen_bn=frozen_bn).train()
    bn = _stem_bn(net)
    before = bn.running_mean.clone()
    net(torch.rand(2, 3, 64, 64))
    assert bn.training is moves and (not torch.equal(before, bn.running_mean)) is moves
    # frozen either way: no gradient for the stem and stage 1, a gradient for stage 2
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.stages[0].parameters())
    assert all(p.requires_grad for p in net.stages[1].parameters())
    net.eval()
    assert not bn.training  # eval() still means eval
    with pytest.raises(ValueError, match="backbone.frozen_bn"):
        net.set_frozen_bn("frozen")


def test_kaiming_init_is_normal_fan_out_and_pytorchs_is_not():
    torch.manual_seed(0)
    conv = DarkNet53(frozen_stages=-1, init="kaiming").stages[4][0][0]  # 512 -> 1024, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    assert conv.weight.mean().abs().item() < 1e-3
    default = DarkNet53(frozen_stages=-1).stages[4][0][0]  # kaiming_uniform(a=sqrt(5)): std 1/sqrt(3 fan_in)
    assert default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 512 * 9), rel=0.02)
    with pytest.raises(ValueError, match="backbone.init"):
        build_backbone("r18", init="kaiming")
    with pytest.raises(ValueError, match="backbone.init"):
        DarkNet53(init="xavier")


def test_weights_from_a_file_replace_the_kaiming_init(tmp_path):
    torch.manual_seed(1)
    state = DarkNet53(frozen_stages=-1).state_dict()
    torch.save(state, tmp_path / "d53.pth")
    net = DarkNet53(frozen_stages=-1, init="kaiming", weights=str(tmp_path / "d53.pth"))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_released_norm_names(d53):
    names = d53.released_norm_names()
    bn_modules = [n for n, m in d53.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(names) == 2 * len(bn_modules) == 2 * 52  # 52 conv-BN cells: each BN's weight and bias
    assert {"stem.1.bias", "stages.4.4.conv2.1.weight"} <= names
    assert not any(n.endswith(".0.weight") for n in names)  # the convs
    r18 = ResNetBackbone(depth=18, frozen_stages=-1).released_norm_names()
    # torchvision's names are mmdetection's: bn1 (stem), layerN.M.bn1/bn2; downsample.1 is not matched
    assert len(r18) == 2 * (1 + 8 * 2) and {"bn1.bias", "layer1.0.bn1.bias", "layer4.1.bn2.weight"} <= r18
    assert not any("downsample" in n or "conv" in n for n in r18)
