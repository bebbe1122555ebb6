"""The inference path (ttfnet_lightning.core.inference): BN folding, channels_last and reduced precision
keep the network's outputs (to stated tolerances) and its call signature."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

from ttfnet_lightning.core.inference import (
    InferenceDeformConv2d,
    deform_conv2d_by_taps,
    fold_batchnorm,
    optimize_for_inference,
    taps_weight,
    use_inference_deform_convs,
)
from ttfnet_lightning.core.models import TTFNet
from ttfnet_lightning.core.models.neck import ModulatedDeformConv2d


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


@pytest.mark.parametrize("kernel,padding", [(3, 1), (3, 0), (3, 2), (1, 0), (5, 2)])
def test_weight_first_deform_conv_matches_torchvision(kernel, padding):
    gen = torch.Generator().manual_seed(kernel * 10 + padding)
    b, cin, cout, h, w = 2, 6, 5, 7, 9
    k = kernel * kernel
    x = torch.randn(b, cin, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(cout, cin, kernel, kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    ho, wo = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    # offsets of several pixels: taps land between pixels, on the border and outside the map
    om = torch.cat(
        (
            torch.randn(b, 2 * k, ho, wo, generator=gen, dtype=torch.float64) * 3,
            torch.randn(b, k, ho, wo, generator=gen, dtype=torch.float64),
        ),
        dim=1,
    )
    om[0, :2, 0, 0] = torch.tensor([2.0, -1.0], dtype=torch.float64)  # integer offsets: exact pixels
    want = deform_conv2d(x, om[:, : 2 * k], weight, bias, padding=(padding, padding), mask=om[:, 2 * k :].sigmoid())
    got = deform_conv2d_by_taps(x, om, taps_weight(weight), bias, kernel_size=(kernel, kernel), padding=padding)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got_cl = deform_conv2d_by_taps(
        x.contiguous(memory_format=torch.channels_last),
        om,
        taps_weight(weight),
        bias,
        kernel_size=(kernel, kernel),
        padding=padding,
    )
    assert got_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got_cl, want, rtol=1e-10, atol=1e-10)


def test_inference_deform_conv_equals_the_module_and_falls_back_with_gradients():
    torch.manual_seed(0)
    m = ModulatedDeformConv2d(8, 6).eval()
    with torch.no_grad():
        m.offset_mask.weight.normal_(0, 0.3)
        m.offset_mask.bias.normal_(0, 1.0)
    fast = InferenceDeformConv2d(m)
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        want = m(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-5, atol=1e-5)
    # with autograd: the module's own implementation, gradients flow
    xg = x.clone().requires_grad_(True)
    fast(xg).sum().backward()
    assert xg.grad is not None and m.conv.weight.grad is not None
    # the kept weight follows conv.weight after refresh()
    with torch.no_grad():
        m.conv.weight.mul_(2)
        fast.refresh()
        torch.testing.assert_close(fast(x), m(x), rtol=1e-5, atol=1e-5)
    net = TTFNet(num_classes=2).eval()
    assert use_inference_deform_convs(net) == 3
    assert sum(isinstance(mod, InferenceDeformConv2d) for mod in net.modules()) == 3
    assert use_inference_deform_convs(TTFNet(num_classes=2, deform_impl="torchvision").eval()) == 0


def test_fp32_path_with_large_offsets_and_bf16_autocast():
    torch.manual_seed(0)
    net = trained_like(TTFNet(num_classes=3, frozen_stages=-1))
    for m in net.modules():
        if isinstance(m, ModulatedDeformConv2d):
            with torch.no_grad():
                m.offset_mask.weight.normal_(0, 0.05)
                m.offset_mask.bias.normal_(0, 1.0)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref_hm, ref_wh = net(x)
    hm, wh = optimize_for_inference(net)(x)
    torch.testing.assert_close(hm, ref_hm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wh, ref_wh, rtol=1e-4, atol=1e-3)
    hm, wh = optimize_for_inference(net, precision="bf16")(x)
    assert (hm.sigmoid() - ref_hm.sigmoid()).abs().max() < 0.02
    assert (wh - ref_wh).abs().max() < 0.05 * max(1.0, float(ref_wh.abs().max()))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_path_runs_and_equals_the_network():
    # compile=True used to fail in inductor ("Cannot set version_counter for inference tensor")
    torch.manual_seed(0)
    net = trained_like(TTFNet(num_classes=3, frozen_stages=-1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref_hm, ref_wh = net(x)
    hm, wh = optimize_for_inference(net, compile=True)(x)
    torch.testing.assert_close(hm, ref_hm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wh, ref_wh, rtol=1e-4, atol=1e-3)
