"""The inference path (ttfnet_lightning.inference): BN folding, channels_last and reduced precision
keep the network's outputs (to stated tolerances) and its call signature."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ttfnet_lightning.inference import fold_batchnorm, optimize_for_inference
from ttfnet_lightning.models import TTFNet


def trained_like(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (a fresh BN is the identity)."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        if hasattr(m, "offset_mask"):  # deformable conv: non-zero offsets, so the taps really move
            with torch.no_grad():
                m.offset_mask.weight.normal_(0, 0.01, generator=gen)
    return net.eval()


@pytest.mark.parametrize("backbone,deformable", [("r18", True), ("r18", False), ("d53", True)])
def test_fp32_path_equals_the_network(backbone, deformable):
    torch.manual_seed(0)
    net = trained_like(TTFNet(num_classes=3, backbone=backbone, deformable=deformable, frozen_stages=-1))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref_hm, ref_wh = net(x)
    fast = optimize_for_inference(net)
    hm, wh = fast(x)
    assert hm.shape == ref_hm.shape and wh.shape == ref_wh.shape and hm.dtype == wh.dtype == torch.float32
    torch.testing.assert_close(hm, ref_hm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wh, ref_wh, rtol=1e-4, atol=1e-3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), "a BatchNorm was not folded"
    # the input network is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_every_batchnorm_of_the_paper_networks_is_folded():
    for backbone in ("r18", "r34", "d53"):
        net = TTFNet(num_classes=2, backbone=backbone).eval()
        count = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert fold_batchnorm(net) == count > 0, backbone
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(TTFNet(num_classes=2).train())


def test_bf16_path_stays_close():
    torch.manual_seed(0)
    net = trained_like(TTFNet(num_classes=3, frozen_stages=-1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref_hm, ref_wh = net(x)
    hm, wh = optimize_for_inference(net, precision="bf16")(x)
    assert hm.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: about 1e-2 relative through the network
    assert (hm.sigmoid() - ref_hm.sigmoid()).abs().max() < 0.02
    assert (wh - ref_wh).abs().max() < 0.05 * max(1.0, float(ref_wh.abs().max()))


def test_bad_arguments():
    net = TTFNet(num_classes=2).eval()
    with pytest.raises(ValueError, match="precision"):
        optimize_for_inference(net, precision="int4")
    with pytest.raises(ValueError, match="eval"):
        optimize_for_inference(net.train())
