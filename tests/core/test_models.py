"""Network: shapes and channels, freezing, strict weight loading, neck and head details."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from ttfnet_lightning.core.models import (
    DarkNet53,
    ModulatedDeformConv2d,
    ResNetBackbone,
    TTFHead,
    TTFNet,
    UpsampleNeck,
    WeightsError,
)


@pytest.mark.parametrize(
    "name,channels", [("r18", (64, 128, 256, 512)), ("r34", (64, 128, 256, 512)), ("d53", (128, 256, 512, 1024))]
)
def test_backbone_maps_and_ttfnet_shapes(name, channels):
    net = TTFNet(num_classes=5, backbone=name, deformable=False).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = net.backbone(x)
        hm, wh = net(x)
    assert net.backbone.out_channels == channels
    assert [f.shape[1] for f in feats] == list(channels)
    assert [tuple(f.shape[2:]) for f in feats] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert hm.shape == (2, 5, 16, 24) and wh.shape == (2, 4, 16, 24)
    assert (wh >= 0).all()
    # released regression-branch depth: 1 conv for R18, 2 for R34 / D53
    n_box_convs = sum(isinstance(m, nn.Conv2d) for m in net.head.box) - 1
    assert n_box_convs == (1 if name == "r18" else 2)


@pytest.mark.parametrize(
    "make", [lambda fs: ResNetBackbone(depth=18, frozen_stages=fs), lambda fs: DarkNet53(frozen_stages=fs)]
)
def test_frozen_stages_really_frozen(make):
    bb = make(1)
    stages = bb._stage_modules()
    assert all(not p.requires_grad for s in stages[:2] for p in s.parameters())
    assert all(p.requires_grad for s in stages[2:] for p in s.parameters())
    bb.train()
    frozen_bn = [m for m in stages[1].modules() if isinstance(m, nn.BatchNorm2d)]
    live_bn = [m for m in stages[2].modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.training for m in frozen_bn) and all(m.training for m in live_bn)
    before = {k: v.clone() for k, v in stages[1].state_dict().items()}
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    sum(f.mean() for f in bb(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    after = stages[1].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats untouched
    assert all(p.requires_grad for p in make(-1).parameters())


def test_resnet_weights_from_local_file_strict(tmp_path):
    tv = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    bb = ResNetBackbone(depth=18, weights=str(path))
    assert torch.equal(bb.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    # a checkpoint wrapper with a prefix loads too
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "w.pth")
    ResNetBackbone(depth=18, weights=str(tmp_path / "w.pth"))

    sd = tv.state_dict()
    sd.pop("layer2.0.bn1.weight")
    sd["extra.bias"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(
        WeightsError,
        match=r"(?s)bad\.pth.*missing keys \(1\): layer2\.0\.bn1\.weight.*unexpected keys \(1\): extra\.bias",
    ):
        ResNetBackbone(depth=18, weights=str(tmp_path / "bad.pth"))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="r34.pth do not match"):
        ResNetBackbone(depth=18, weights=str(tmp_path / "r34.pth"))
    with pytest.raises(WeightsError, match="not found: .*nope.pth"):
        ResNetBackbone(depth=18, weights=str(tmp_path / "nope.pth"))


def test_darknet_weights_strict(tmp_path):
    ref = DarkNet53()
    torch.save(ref.state_dict(), tmp_path / "d53.pth")
    loaded = DarkNet53(weights=str(tmp_path / "d53.pth"))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), loaded.state_dict().values()))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(
        WeightsError, match=r"(?s)missing keys \(\d+\): stages\.0\.0\.0\.weight.*unexpected keys \(\d+\): bn1\.bias"
    ):
        DarkNet53(weights=str(tmp_path / "wrong.pth"))
    with pytest.raises(WeightsError, match="weights=/path/to/darknet53.pth"):
        DarkNet53(pretrained=True)


def test_pretrained_offline_error_and_success(monkeypatch):
    import torchvision.models._api as api

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"offline.*backbone\.weights=/path/to/resnet\.pth"):
        ResNetBackbone(depth=18, pretrained=True)

    fake = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: fake)
    bb = ResNetBackbone(depth=18, pretrained=True)
    assert torch.equal(bb.conv1.weight, fake["conv1.weight"])


def test_modulated_deform_conv_starts_as_half_masked_conv():
    torch.manual_seed(0)
    m = ModulatedDeformConv2d(4, 6)
    x = torch.randn(1, 4, 9, 11)
    plain = nn.functional.conv2d(x, m.conv.weight, None, padding=1)
    torch.testing.assert_close(m(x), 0.5 * plain + m.conv.bias.view(1, -1, 1, 1), rtol=1e-4, atol=1e-5)
    m(x).sum().backward()
    assert m.offset_mask.weight.grad is not None  # offsets and masks are learned


def test_neck_shortcuts_configurable():
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip((64, 128, 256, 512), (4, 8, 16, 32))]
    for convs in [(3, 2, 1), (0, 0, 0), (2, 1, 1), (0, 0, 1)]:
        neck = UpsampleNeck(in_channels=(64, 128, 256, 512), shortcut_convs=convs, deformable=False)
        assert neck(feats).shape == (1, 64, 16, 16)
        # shortcuts listed stride-16 first: stage 4, 3, 2 of the paper
        counts = [sum(isinstance(m, nn.Conv2d) for m in s.modules()) for s in neck.shortcuts]
        assert counts == list(convs)[::-1]
    neck = UpsampleNeck(in_channels=(64, 128, 256, 512))
    assert sum(isinstance(m, ModulatedDeformConv2d) for m in neck.modules()) == 3
    short = neck.shortcuts[2]  # from the stride-4 map: conv relu conv relu conv (no relu last)
    assert [type(m) for m in short] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    with pytest.raises(ValueError, match="shortcut_convs"):
        UpsampleNeck(in_channels=(64, 128, 256, 512), shortcut_convs=(1, 1))


def test_head_init_and_class_aware():
    head = TTFHead(num_classes=7)
    assert head.heatmap[-1].bias.detach().allclose(torch.full((7,), -4.595), atol=1e-3)
    assert head.heatmap[0].weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert head.box[0].weight.std().item() == pytest.approx(0.001, rel=0.2)
    hm, wh = TTFHead(num_classes=7, class_aware=True)(torch.randn(1, 64, 8, 8))
    assert hm.shape == (1, 7, 8, 8) and wh.shape == (1, 28, 8, 8)
