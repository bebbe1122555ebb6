"""``deform_conv2d_native`` (grid_sample + matmul) against ``torchvision.ops.deform_conv2d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from ttfnet_lightning.core.models import ModulatedDeformConv2d, TTFNet, UpsampleNeck, deform
from ttfnet_lightning.core.models.deform import deform_conv2d_native

F64 = torch.float64


def _tv(x, off, w, b=None, m=None):
    return deform_conv2d(x, off, w, b, stride=1, padding=1, dilation=1, mask=m)


def _case(h, w, *, scale, kh=3, kw=3, cin=3, cout=4, batch=2, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ho, wo = h + 3 - kh, w + 3 - kw
    x = torch.randn(batch, cin, h, w, generator=g, dtype=dtype)
    off = torch.randn(batch, 2 * kh * kw, ho, wo, generator=g, dtype=dtype) * scale
    weight = torch.randn(cout, cin, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    mask = torch.rand(batch, kh * kw, ho, wo, generator=g, dtype=dtype)
    return x, off, weight, bias, mask


# (H, W, kernel): square, non-square, size-1 and thin maps; one non-square kernel (padding still 1)
SHAPES = [(5, 7, 3, 3), (6, 4, 3, 3), (1, 1, 3, 3), (1, 6, 3, 3), (4, 1, 3, 3), (5, 4, 2, 3)]


@pytest.mark.parametrize("h,w,kh,kw", SHAPES)
@pytest.mark.parametrize("scale", [0.7, 4.0])  # 4.0: many taps land partly or fully outside the map
@pytest.mark.parametrize("with_mask,with_bias", [(True, True), (False, False), (True, False)])
def test_forward_matches_torchvision(h, w, kh, kw, scale, with_mask, with_bias):
    x, off, weight, bias, mask = _case(h, w, scale=scale, kh=kh, kw=kw)
    b = bias if with_bias else None
    m = mask if with_mask else None
    out = deform_conv2d_native(x, off, weight, b, m)
    assert out.shape == (2, 4, h + 3 - kh, w + 3 - kw)
    torch.testing.assert_close(out, _tv(x, off, weight, b, m), rtol=1e-12, atol=1e-12)


def test_forward_far_outside_is_zero():
    x, off, weight, bias, mask = _case(4, 5, scale=1.0)
    off = off.sign() * 50 + off  # every tap far outside: only the bias is left
    out = deform_conv2d_native(x, off, weight, bias, mask)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))
    torch.testing.assert_close(out, _tv(x, off, weight, bias, mask))


def test_integer_offsets_hit_pixels_exactly():
    x, _, weight, bias, mask = _case(6, 5, scale=1.0)
    off = torch.randint(-3, 4, (2, 18, 6, 5), generator=torch.Generator().manual_seed(1)).to(F64)
    torch.testing.assert_close(
        deform_conv2d_native(x, off, weight, bias, mask), _tv(x, off, weight, bias, mask), rtol=1e-12, atol=1e-12
    )
    # zero offsets, no mask: a plain 3x3 conv with padding 1
    zero = torch.zeros_like(off)
    torch.testing.assert_close(
        deform_conv2d_native(x, zero, weight, bias), F.conv2d(x, weight, bias, padding=1), rtol=1e-12, atol=1e-12
    )


def test_float32_forward_matches_torchvision():
    x, off, weight, bias, mask = _case(9, 11, scale=2.0, cin=8, cout=5, dtype=torch.float32)
    torch.testing.assert_close(
        deform_conv2d_native(x, off, weight, bias, mask), _tv(x, off, weight, bias, mask), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("h,w,kh,kw", SHAPES)
@pytest.mark.parametrize("scale", [0.7, 4.0])
def test_gradients_match_torchvision(h, w, kh, kw, scale):
    # random (never integer) sampling positions: bilinear interpolation is not differentiable at
    # integer coordinates, where the two implementations may pick different one-sided derivatives
    x, off, weight, bias, mask = _case(h, w, scale=scale, kh=kh, kw=kw, seed=2)
    inputs = [t.requires_grad_() for t in (x, off, weight, bias, mask)]
    ref_out = _tv(*inputs)
    grad_out = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    ref = torch.autograd.grad(ref_out, inputs, grad_out)
    got = torch.autograd.grad(deform_conv2d_native(*inputs), inputs, grad_out)
    for name, a, b in zip(("input", "offset", "weight", "bias", "mask"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"grad {n}: {m}")


def test_gradients_without_mask_and_bias():
    x, off, weight, _, _ = _case(5, 6, scale=1.5, seed=4)
    inputs = [t.requires_grad_() for t in (x, off, weight)]
    ref = torch.autograd.grad(_tv(*inputs).square().sum(), inputs)
    got = torch.autograd.grad(deform_conv2d_native(*inputs).square().sum(), inputs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# (_CHUNK_INPUTS, chunks of the 3 x 5 x 7 x 6 input below, whose taps per image are 3x the input):
# one output row per chunk, row blocks of one image, one image (over the budget, under twice it),
# whole images, everything at once
@pytest.mark.parametrize("chunk_inputs,n_chunks", [(0.0, 21), (1.0, 9), (2.0, 3), (5.0, 3), (100.0, 1)])
@pytest.mark.parametrize("with_mask", [True, False])
def test_chunked_recompute_matches_torchvision(monkeypatch, chunk_inputs, n_chunks, with_mask):
    """Under autograd the taps are sampled in chunks (rows of one image, or whole images) in both
    passes: same output and gradients as torchvision whatever the chunks."""
    monkeypatch.setattr(deform, "_MIN_CHUNK_BYTES", 0)
    monkeypatch.setattr(deform, "_CHUNK_INPUTS", chunk_inputs)
    x, off, weight, bias, mask = _case(7, 6, scale=1.3, cin=5, batch=3, seed=6)
    assert len(deform._chunk_plan(x, 9, 7, 6)) == n_chunks
    inputs = [t.requires_grad_() for t in (x, off, weight, bias, mask if with_mask else None) if t is not None]
    m = inputs[4] if with_mask else None
    out, ref_out = deform_conv2d_native(*inputs[:4], m), _tv(*inputs[:4], m)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    for a, b in zip(torch.autograd.grad(out, inputs, grad_out), torch.autograd.grad(ref_out, inputs, grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("needs", ["input", "offset", "weight", "bias", "mask", "offset+mask"])
def test_gradients_of_some_inputs_only(needs):
    x, off, weight, bias, mask = _case(5, 6, scale=1.5, seed=8)
    names = ("input", "offset", "weight", "bias", "mask")
    wanted = [t.requires_grad_() for n, t in zip(names, (x, off, weight, bias, mask)) if n in needs.split("+")]
    got = torch.autograd.grad(deform_conv2d_native(x, off, weight, bias, mask).square().sum(), wanted)
    ref = torch.autograd.grad(_tv(x, off, weight, bias, mask).square().sum(), wanted)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _saved_bytes(fn, *args) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass of ``fn(*args)``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


def test_backward_does_not_keep_the_sampled_taps(monkeypatch):
    """The memory bound of issue 10: the sampled taps (B, Cin, K, H*W), K = 9 times the input, are
    not kept for the backward pass (they are sampled again there); the saved tensors are the
    input, mask, weight and the sampling grid (as large as offset). The implementation before
    (``_RECOMPUTE = False``) kept the taps twice (before and after the mask)."""
    b, cin, cout, h, w = 2, 32, 16, 12, 10
    x, off, weight, bias, mask = (
        t.float().requires_grad_() for t in _case(h, w, scale=1.0, cin=cin, cout=cout, batch=b)
    )
    input_bytes = x.numel() * x.element_size()
    cols_bytes = 9 * input_bytes  # (B, Cin, 9, H*W) in the input's dtype
    small = [off, weight, bias, mask]
    new = _saved_bytes(deform_conv2d_native, x, off, weight, bias, mask)
    assert new == input_bytes + sum(t.numel() * t.element_size() for t in small if t is not bias)
    assert new < 3 * input_bytes < cols_bytes
    monkeypatch.setattr(deform, "_RECOMPUTE", False)
    assert _saved_bytes(deform_conv2d_native, x, off, weight, bias, mask) > 2 * cols_bytes


def test_recompute_under_bf16_autocast_matches_the_one_shot_path(monkeypatch):
    """CPU autocast (bf16): the recomputing backward uses the forward's dtypes (float32 samples,
    bf16 matmuls); output and gradients agree with the one-shot implementation up to bf16 rounding."""
    x, off, weight, bias, mask = (t.float() for t in _case(9, 8, scale=1.3, cin=16, cout=8, seed=9))
    results = []
    for recompute in (True, False):
        monkeypatch.setattr(deform, "_RECOMPUTE", recompute)
        inputs = [t.clone().requires_grad_() for t in (x, off, weight, bias, mask)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = deform_conv2d_native(*inputs)
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out.float().square().sum(), inputs)
        assert [g.dtype for g in grads] == [torch.float32] * 5
        results.append((out, grads))
    (out, grads), (ref_out, ref_grads) = results
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_unsupported_configurations_raise():
    x, off, weight, bias, mask = _case(5, 5, scale=1.0)
    with pytest.raises(ValueError, match="groups=1"):
        deform_conv2d_native(x, off, weight[:, :1], bias, mask)  # grouped conv
    with pytest.raises(ValueError, match="offset must have shape"):
        deform_conv2d_native(x, torch.cat((off, off), 1), weight, bias, mask)  # 2 offset groups
    with pytest.raises(ValueError, match="offset must have shape"):
        deform_conv2d_native(x, off[..., ::2, ::2], weight, bias, mask)  # stride 2
    with pytest.raises(ValueError, match="mask must have shape"):
        deform_conv2d_native(x, off, weight, bias, mask[:, :1])
    with pytest.raises(ValueError, match="deform_impl"):
        ModulatedDeformConv2d(4, 4, deform_impl="cuda")
    with pytest.raises(ValueError, match="padding=1 only"):
        ModulatedDeformConv2d(4, 4, kernel_size=5, padding=2)
    ModulatedDeformConv2d(4, 4, kernel_size=5, padding=2, deform_impl="torchvision")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_torchvision():
    x, off, weight, bias, mask = (t.cuda() for t in _case(7, 9, scale=2.0, seed=5))
    inputs = [t.requires_grad_() for t in (x, off, weight, bias, mask)]
    out = deform_conv2d_native(*inputs)
    ref_out = _tv(*inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(out.sum(), inputs), torch.autograd.grad(ref_out.sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_neck_native_equals_torchvision():
    torch.manual_seed(0)
    cfg = dict(in_channels=(8, 16, 16, 24), channels=(16, 12, 8), shortcut_convs=(1, 1, 1))
    native = UpsampleNeck(**cfg, deform_impl="native").double()
    # non-zero offset / mask convs so the convs really deform
    for m in native.modules():
        if isinstance(m, ModulatedDeformConv2d):
            torch.nn.init.normal_(m.offset_mask.weight, std=0.3)
            torch.nn.init.normal_(m.offset_mask.bias, std=0.5)
    tv = UpsampleNeck(**cfg, deform_impl="torchvision").double()
    tv.load_state_dict(native.state_dict())
    assert [m.deform_impl for m in native.modules() if isinstance(m, ModulatedDeformConv2d)] == ["native"] * 3
    assert [m.deform_impl for m in tv.modules() if isinstance(m, ModulatedDeformConv2d)] == ["torchvision"] * 3
    feats = [torch.randn(2, c, 64 // s, 32 // s, dtype=F64) for c, s in zip(cfg["in_channels"], (4, 8, 16, 32))]
    outs = []
    for neck in (native, tv):
        neck.train()
        out = neck(feats)
        out.square().mean().backward()
        outs.append((out.detach(), {k: p.grad.clone() for k, p in neck.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-10)
    assert outs[0][0].shape == (2, 8, 16, 8)
    for k in outs[0][1]:
        torch.testing.assert_close(outs[0][1][k], outs[1][1][k], rtol=1e-6, atol=1e-8, msg=lambda m, k=k: f"{k}: {m}")


def test_ttfnet_threads_deform_impl():
    default = TTFNet(num_classes=2)
    tv = TTFNet(num_classes=2, deform_impl="torchvision")
    impls = lambda net: {m.deform_impl for m in net.modules() if isinstance(m, ModulatedDeformConv2d)}  # noqa: E731
    assert impls(default) == {"native"} and impls(tv) == {"torchvision"}
    assert default.neck.deform_impl == "native" and tv.neck.deform_impl == "torchvision"
    with pytest.raises(ValueError, match="deform_impl"):
        TTFNet(num_classes=2, deform_impl="mmcv")
