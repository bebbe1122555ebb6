"""Every accelerator-only branch of ``core`` forced on the CPU and compared with the CPU branch (issue 25, point 5).

The branches (``file:line`` when written) and how each one is forced here:

* ``core/targets/windows.py:78`` (``_windows``): off the CPU every box is drawn in a static window, ``cap`` boxes at
  a time. Forced with ``windows._FIT_ON_CPU = False`` for every encoder variant by
  ``tests/core/test_targets.py::test_static_windows_match`` (not repeated here); here: a meta tensor takes the same
  branch as the flag (so the flag is the device switch), and crowded batches split into several static groups.
* ``core/targets/encode.py:286``: the regression counts' ``bmm`` with autocast off on the boxes' device: the
  encoder under bf16 autocast equals it without, with more boxes on a pixel than bf16 counts exactly (256).
* ``core/inference.py:130`` (``_conv1x1``): oneDNN on the CPU, ``F.conv2d`` elsewhere; forced by making
  ``torch.backends.mkldnn.is_available`` false (and shown with a meta tensor).
* ``core/inference.py:233`` (``InferenceDeformConv2d.forward``): off the CPU the module's own deformable conv
  (``deform_conv2d_native``) instead of the weight-first one; forced by making ``inference._capturing`` true,
  another operand of the same ``or`` (a meta tensor shows the device operand picks the same statement).
* ``core/inference.py:286`` (``InferenceModel``): autocast on the images' device; ``precision="fp16"`` is documented
  "GPU only" and runs here under CPU autocast, together with the forced deformable-conv fallback above (what a GPU
  runs with ``precision="fp16"``).
* ``core/models/deform.py:180/216`` (``_DeformConv2dFunction``: the forward's autocast dtypes are recorded and the
  backward runs with autocast off on the input's device) and the ``ModulatedDeformConv2d`` of the neck: under CPU
  autocast with bfloat16 and float16 against float64/float32.
* ``core/decode.py``: no device branch (``local_max`` replaces ``F.max_pool2d`` on every device,
  ``tests/core/test_decode.py::test_local_max_is_max_pool``); its dtype handling is checked with bf16/fp16 inputs.

Two defects found this way are fixed and tested here: the native deformable convolution sampled at positions
computed in the offsets' dtype (bf16/fp16 under autocast; now at least float32), and the decoder made the peaks'
pixel coordinates in ``wh``'s dtype (wrong in bf16 on maps wider than 256; now float32).

Tolerances, from the unit roundoff ``u`` (half the spacing of the numbers in [1, 2)): bfloat16 keeps 8 significant
bits, ``u = 2**-8``; float16 keeps 11, ``u = 2**-11``. Each test states how many roundings its bound counts.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from ttfnet_lightning.core import inference
from ttfnet_lightning.core.decode import decode_detections
from ttfnet_lightning.core.inference import InferenceDeformConv2d, deform_conv2d_by_taps, taps_weight
from ttfnet_lightning.core.losses import TTFNetLoss
from ttfnet_lightning.core.models import ModulatedDeformConv2d, TTFNet
from ttfnet_lightning.core.models.deform import deform_conv2d_native
from ttfnet_lightning.core.targets import encode_targets, regression_coverage, windows

F64 = torch.float64
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _autocast_dtype(request_dtype: torch.dtype) -> torch.dtype:
    """``request_dtype``, or a skip when this torch's CPU autocast cannot run it."""
    a = torch.ones(4, 4)
    try:
        with torch.autocast("cpu", dtype=request_dtype):
            out = torch.mm(a, a)
    except (RuntimeError, AssertionError) as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"CPU autocast with {request_dtype} is unsupported by torch {torch.__version__}: {err}")
    if out.dtype != request_dtype:  # pragma: no cover
        pytest.skip(
            f"CPU autocast with {request_dtype} is unsupported by torch {torch.__version__} (mm -> {out.dtype})"
        )
    return request_dtype


LOW = pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])


def _rel(a: Tensor, b: Tensor) -> float:
    """Norm-wise relative error of ``a`` against ``b``, in float64."""
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def _deform_case(h: int, w: int, *, cin: int = 16, cout: int = 8, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, h, w, generator=g)
    off = torch.randn(batch, 18, h, w, generator=g) * 2.0  # taps land between pixels, on the border and outside
    weight = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
    bias = torch.randn(cout, generator=g)
    mask = torch.rand(batch, 9, h, w, generator=g)
    return x, off, weight, bias, mask


def _abs_bound(x: Tensor, off: Tensor, weight: Tensor, bias: Tensor, mask: Tensor) -> Tensor:
    """``sum_k |W_k| * m_k * sample_k(|x|) + |b|`` in float64: bounds the sum of the absolute values of the
    terms of every output (bilinear weights and the mask are >= 0, so ``|sample(x)| <= sample(|x|)``)."""
    d = [t.double() for t in (x, off, weight, bias, mask)]
    return deform_conv2d_native(d[0].abs(), d[1], d[2].abs(), d[3].abs(), d[4])


# ---------------------------------------------------------------------------------- target encoder
def test_static_windows_are_the_device_branch(monkeypatch):
    ny = torch.tensor([3, 0, 5, 2, 7])
    nx = torch.tensor([2, 0, 4, 6, 1])
    static = (9, 9)
    order, groups = windows._windows(ny, nx, static=static, cap=2)
    assert order is not None and order.tolist() == [2, 3, 4, 0]  # fitted: the empty box dropped, sorted by area
    want = (None, [(0, 2, 9, 9), (2, 4, 9, 9), (4, 5, 9, 9)])  # every box, `cap` at a time, static windows
    assert windows._windows(ny.to("meta"), nx.to("meta"), static=static, cap=2) == want  # a non-CPU device
    monkeypatch.setattr(windows, "_FIT_ON_CPU", False)
    assert windows._windows(ny, nx, static=static, cap=2) == want  # the flag: the same branch on the CPU


def _crowded(seed: int, *, B: int = 2, M: int = 60, C: int = 80, size: int = 512) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(B, M).uniform_(math.log(2.0), math.log(size * 1.3), generator=g))
    xy = torch.rand(B, M, 2, generator=g) * size - side.unsqueeze(-1) / 3
    boxes = torch.cat((xy, xy + side.unsqueeze(-1) * (0.5 + torch.rand(B, M, 2, generator=g))), -1)
    labels = torch.randint(0, C, (B, M), generator=g)
    labels[1, M // 3 :] = -1  # padding
    return boxes, labels


@pytest.mark.parametrize(
    "opts",
    [{}, {"class_aware": True}, {"wh_gaussian": False, "beta": 0.54}, {"aspect_ratio": False, "beta": 0.3}],
    ids=["released", "aware", "rect", "iso"],
)
def test_static_windows_in_many_groups_equal_the_fitted_ones(opts, monkeypatch):
    # 60 boxes per image in groups of at most 3 x B (chunk_size=3): many static groups per layer, boxes beyond the
    # map and overlapping; test_targets' forced test has at most 14 boxes, all in one group
    boxes, labels = _crowded(1)
    kw = dict(num_classes=80, output_size=(128, 128), chunk_size=3, **opts)
    fitted = encode_targets(boxes, labels, **kw)
    monkeypatch.setattr(windows, "_FIT_ON_CPU", False)
    static = encode_targets(boxes, labels, **kw)
    for name, f, s in zip(("heatmap", "box_target", "reg_weight"), fitted, static):
        assert torch.equal(f, s), name  # the same maths: bit for bit


def test_encoder_under_autocast_equals_it_without():
    # 301 boxes over one pixel: bf16 holds the integers exactly only up to 256 (301 -> 300 or 302), so the counts'
    # bmm must run with autocast off (encode.py) for the counts to be exact under bf16-mixed training
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 50.0]] * 301 + [[60.0, 4.0, 90.0, 40.0]]])
    labels = torch.zeros(1, 302, dtype=torch.long)
    plain = regression_coverage(boxes, labels, num_classes=1, output_size=(32, 32))
    assert int(plain.max()) == 301
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(regression_coverage(boxes, labels, num_classes=1, output_size=(32, 32)), plain)
    crowded = _crowded(2, C=5)
    ref = encode_targets(*crowded, num_classes=5, output_size=(128, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = encode_targets(*crowded, num_classes=5, output_size=(128, 128))
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype == torch.float32 and torch.equal(g, r)


# ------------------------------------------------------------------------------- inference path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_conv1x1_off_the_cpu_branch(dtype, monkeypatch):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build: _conv1x1 always takes F.conv2d")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 9, 11, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(72, 16, 1, 1, generator=g)
    calls = []
    real = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or real(*a))
    cpu = inference._conv1x1(x, weight)
    assert calls == [1]  # the CPU branch: oneDNN
    inference._conv1x1(x.to("meta"), weight.to("meta"))
    assert calls == [1]  # a non-CPU device: F.conv2d
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    device = inference._conv1x1(x, weight)
    assert calls == [1]  # forced: F.conv2d on the CPU
    assert device.dtype == cpu.dtype == dtype
    # 16 products per output, summed in float32 in another order: a few float32 ulps; bf16 outputs are rounded
    # from those float32 sums, so they may differ by one bf16 rounding (u relative)
    rtol = 1e-5 if dtype == torch.float32 else 2 * UNIT_ROUNDOFF[torch.bfloat16]
    torch.testing.assert_close(device, cpu, rtol=rtol, atol=1e-5)


def _deformable_module(seed: int = 0, cin: int = 16, cout: int = 8) -> ModulatedDeformConv2d:
    torch.manual_seed(seed)
    m = ModulatedDeformConv2d(cin, cout)
    with torch.no_grad():  # offsets of about a pixel and masks away from 0.5: the convolution really deforms
        m.offset_mask.weight.normal_(0, 0.1)
        m.offset_mask.bias.normal_(0, 1.0)
    return m


def _count_taps_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = inference.deform_conv2d_by_taps
    monkeypatch.setattr(inference, "deform_conv2d_by_taps", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("low", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_inference_deform_conv_device_fallback(low, monkeypatch):
    m = _deformable_module().eval()
    fast = InferenceDeformConv2d(m)
    x = torch.randn(2, 16, 10, 12, generator=torch.Generator().manual_seed(1))
    calls = _count_taps_calls(monkeypatch)
    with torch.no_grad():
        on_meta = copy.deepcopy(fast).to("meta")
        assert on_meta(x.to("meta")).shape == (2, 8, 10, 12) and calls == []  # non-CPU: the fallback
        ref = copy.deepcopy(m).double()(x.double())
        with torch.autocast("cpu", dtype=_autocast_dtype(low) if low else torch.bfloat16, enabled=low is not None):
            cpu = fast(x)
            assert calls == [1]  # CPU: weight first
            monkeypatch.setattr(inference, "_capturing", lambda: True)
            device = fast(x)
            assert calls == [1]  # forced: the module's own deformable conv, as on a GPU
    # the fallback's matmul is an autocast op (its output in the autocast dtype); the weight-first path's oneDNN
    # conv and embedding_bag are not: float32 input stays float32 there (InferenceModel returns float32 anyway)
    assert device.dtype == (low or torch.float32) and cpu.dtype == torch.float32
    if low is None:  # the same function, float32 sums in another order
        torch.testing.assert_close(device, cpu, rtol=1e-5, atol=1e-5)
        return
    # against float64: operands of the products rounded (2u), the sum rounded (u), the bias added (u), the offsets
    # and mask of the autocast offset conv rounded (u each, through the sampling): 8u norm-wise (measured 2.4u).
    # The fallback also rounds the sampling positions (< P = map size + largest offset) to the offsets' dtype
    # (test_native_deform_conv_sampling_positions_in_low_precision): a sample moves by up to u P pixels, about
    # u P of its size on this white-noise input: (8 + P) u (measured 9.3u bf16, 9.6u fp16 with P ~ 15)
    u = UNIT_ROUNDOFF[low]
    with torch.no_grad():
        p_max = 12 + float(m.offset_mask(x)[:, :18].abs().max())
    assert _rel(cpu, ref) < 8 * u
    assert _rel(device, ref) < (8 + p_max) * u


@LOW
def test_inference_model_reduced_precision_with_the_device_fallback(low, monkeypatch):
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[_autocast_dtype(low)]
    torch.manual_seed(0)
    net = TTFNet(num_classes=3, frozen_stages=-1).eval()
    for m in net.modules():
        if isinstance(m, ModulatedDeformConv2d):
            with torch.no_grad():
                m.offset_mask.weight.normal_(0, 0.05)
                m.offset_mask.bias.normal_(0, 1.0)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_hm, ref_wh = net(x)
    fast = inference.optimize_for_inference(net, precision=precision)
    calls = _count_taps_calls(monkeypatch)
    cpu = fast(x)
    assert len(calls) == 3  # the three deformable convs of the neck, weight first
    monkeypatch.setattr(inference, "_capturing", lambda: True)
    device = fast(x)
    assert len(calls) == 3  # forced: the GPU's path (native deformable convs under autocast)
    # every layer adds a few roundings relative to its output; through the ~20 layers the errors of independent
    # roundings add up in norm (measured: <= 5u for wh, < 1u for the heatmap logits): 16u norm-wise
    u = UNIT_ROUNDOFF[low]
    for hm, wh in (cpu, device):
        assert hm.dtype == wh.dtype == torch.float32
        assert _rel(hm, ref_hm) < 16 * u and _rel(wh, ref_wh) < 16 * u
    assert _rel(device[1], cpu[1]) < 16 * u


# ------------------------------------------------------------------------ deformable conv, autocast
@LOW
def test_native_deform_conv_under_autocast(low):
    low = _autocast_dtype(low)
    u = UNIT_ROUNDOFF[low]
    case = _deform_case(16, 16)
    inputs = [t.clone().requires_grad_() for t in case]
    with torch.autocast("cpu", dtype=low):
        out = deform_conv2d_native(*inputs)
    assert out.dtype == low  # the matmul in the autocast dtype
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out.float(), inputs, grad_out)
    ref_inputs = [t.detach().double().requires_grad_() for t in case]
    ref = deform_conv2d_native(*ref_inputs)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad_out.double())
    # every output is a sum of products W * m * sample(x); both factors rounded to the autocast dtype (2u), summed in
    # float32 (144 terms: ~1e-5, far below u), the result rounded (u), the bias rounded and added (u): 4u of the sum
    # of the terms' absolute values (measured: <= 1.3u)
    bound = 4 * u * _abs_bound(*case)
    err = (out.double() - ref.detach()).abs()
    assert (err <= bound).all(), f"max error / bound {float((err / bound).max()):.2f}"
    # norm-wise the roundings are independent: ~u (measured 0.6-0.9u); 2u. Sampling positions rounded to the
    # autocast dtype would add ~4u here (16 x 16 map)
    assert _rel(out, ref) < 2 * u
    # gradients: float32 (the inputs' dtype), finite; each a sum of products of one rounded factor and one rounded
    # gradient (2u), rounded (u); random signs: 4u norm-wise (measured: <= 0.8u)
    for name, g, r, t in zip(("input", "offset", "weight", "bias", "mask"), grads, ref_grads, case):
        assert g.dtype == t.dtype and torch.isfinite(g).all(), name
        assert _rel(g, r) < 4 * u, f"{name}: {_rel(g, r) / u:.2f}u"


@LOW
def test_deformable_module_under_autocast(low):
    low = _autocast_dtype(low)
    u = UNIT_ROUNDOFF[low]
    m = _deformable_module(seed=4).train()
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    ref_m = _deformable_module(seed=4).double().train()
    xr = x.double().requires_grad_()
    ref = ref_m(xr)
    ref_grads = torch.autograd.grad(ref.square().sum(), [xr, *ref_m.parameters()])
    xl = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=low):
        out = m(xl)
    grads = torch.autograd.grad(out.float().square().sum(), [xl, *m.parameters()])
    assert out.dtype == low
    # output: the offset conv's offsets and mask rounded (u, through the sampling), then as the native op (4u): 8u
    assert _rel(out, ref) < 8 * u  # measured ~5u
    names = ["input", "conv.weight", "conv.bias", "offset_mask.weight", "offset_mask.bias"]
    for name, g in zip(names, grads):
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
    # the conv's own gradients: as the op's, plus the rounded offsets (u): 8u (measured <= 5u)
    for i in (1, 2):
        assert _rel(grads[i], ref_grads[i]) < 8 * u, names[i]
    # the gradients through the offsets (input, offset conv) are not O(u): a tap's derivative by its position is a
    # difference of neighbouring pixels, which jumps where the position crosses an integer. Rounding the positions
    # (< P = map size + largest offset) by delta = u P moves ~2 delta of the taps across one, each an O(1) change
    # of its term: a norm-wise error of about sqrt(2 u P); bound 2 sqrt(2 u P) (measured: 0.19 bf16, 0.12 fp16)
    with torch.no_grad():
        p_max = 8 + float(m.offset_mask(x)[:, :18].abs().max())
    for i in (0, 3, 4):
        assert _rel(grads[i], ref_grads[i]) < 2 * math.sqrt(2 * u * p_max), names[i]


@LOW
def test_native_deform_conv_sampling_positions_in_low_precision(low):
    low = _autocast_dtype(low)
    u = UNIT_ROUNDOFF[low]
    x, off, weight, bias, mask = _deform_case(64, 64, batch=1, seed=6)
    x, off, logits = x.to(low), off.to(low), (mask * 4 - 2).to(low)  # as the network feeds them under autocast
    ref = deform_conv2d_native(x.double(), off.double(), weight.double(), bias.double(), logits.double().sigmoid())
    with torch.no_grad(), torch.autocast("cpu", dtype=low):
        taps = deform_conv2d_by_taps(
            x, torch.cat((off, logits), 1), taps_weight(weight), bias, kernel_size=(3, 3), padding=1
        )
        native = deform_conv2d_native(x, off, weight, bias, logits.sigmoid())
    # the same (already rounded) inputs: only the computation's roundings (the matmul's 4u, the mask's u): 8u
    assert _rel(taps, ref) < 8 * u  # positions in float32: ~0.7u
    assert _rel(native, ref) < 8 * u  # ~16u (bf16), ~19u (fp16): the error grows with the map size


def test_ttfnet_forward_and_loss_under_bf16_autocast():
    low, u = torch.bfloat16, UNIT_ROUNDOFF[torch.bfloat16]
    size = 128
    g = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, size, size, generator=g)
    xy = torch.rand(2, 5, 2, generator=g) * size * 0.6
    boxes = torch.cat((xy, xy + 8 + torch.rand(2, 5, 2, generator=g) * size * 0.3), -1)
    targets = encode_targets(boxes, torch.randint(0, 3, (2, 5), generator=g), num_classes=3, output_size=(32, 32))
    results = []
    for autocast in (False, True):
        torch.manual_seed(0)
        net = TTFNet(num_classes=3).train()
        with torch.autocast("cpu", dtype=low, enabled=autocast):
            hm, wh = net(images)
        assert hm.dtype == wh.dtype == (low if autocast else torch.float32)
        losses = TTFNetLoss(stride=4)(hm.float(), wh.float(), *targets)
        losses["loss"].backward()
        for name, p in net.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        results.append(({k: float(v.detach()) for k, v in losses.items()}, hm.detach()))
    (ref, ref_hm), (got, got_hm) = results
    assert all(math.isfinite(v) for v in got.values())
    # the losses are means over the map of smooth functions of the outputs: the outputs' relative error (<= a few u
    # norm-wise), averaged; 4u relative (measured: 4e-4 = 0.1u)
    for k in ref:
        assert abs(got[k] - ref[k]) <= 4 * u * abs(ref[k]), k
    assert _rel(got_hm, ref_hm) < 8 * u  # measured ~0.4u


# ------------------------------------------------------------------------------------------ decoder
def _maps(hw: int, *, C: int = 3, class_aware: bool = False, seed: int = 8) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    hm = torch.randn(2, C, hw, hw, generator=g) * 3
    wh = torch.rand(2, 4 * (C if class_aware else 1), hw, hw, generator=g) * 60
    return hm, wh


def _same_detections(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> None:
    for da, db in zip(a, b, strict=True):
        for k in ("boxes", "scores", "labels"):
            assert da[k].dtype == db[k].dtype and torch.equal(da[k], db[k]), k


@LOW
@pytest.mark.parametrize("class_aware", [False, True], ids=["agnostic", "aware"])
@pytest.mark.parametrize("convention", ["continuous", "released"])
def test_decoder_low_precision_inputs_equal_them_cast_back(low, class_aware, convention):
    # what a network under autocast (Lightning's bf16-mixed/16-mixed validation) hands the decoder, against the
    # same values in float32: the decoder computes in float32, so bit for bit the same detections (512 px input)
    hm, wh = (t.to(low) for t in _maps(128, class_aware=class_aware))
    kw = dict(input_size=(512, 512), orig_sizes=[(480, 640), (512, 300)], box_convention=convention)
    _same_detections(decode_detections(hm, wh, **kw), decode_detections(hm.float(), wh.float(), **kw))


def test_decoder_bf16_inputs_on_a_large_map():
    hm, wh = (t.bfloat16() for t in _maps(272, C=2))
    kw = dict(input_size=(1088, 1088))
    _same_detections(decode_detections(hm, wh, **kw), decode_detections(hm.float(), wh.float(), **kw))


@LOW
def test_decoder_fp32_and_rounded_maps_give_the_same_peaks(low):
    """Rounding the maps changes scores and boxes by about u; the detections are the same ones only where the
    rounding changes no comparison: it can tie two neighbouring logits (both then count as peaks, an extra
    detection) or swap two close scores (another top-k). So: peaks separated by more than the rounding."""
    u = UNIT_ROUNDOFF[low]
    g = torch.Generator().manual_seed(9)
    hm = torch.full((2, 3, 64, 64), -6.0)
    wh = torch.rand(2, 4, 64, 64, generator=g) * 100 + 1
    peaks = torch.randperm(2 * 3 * 16 * 16, generator=g)[:40]  # on a 4-pixel lattice: never neighbours
    b, c, yx = peaks // 768, peaks // 256 % 3, peaks % 256
    hm[b, c, yx // 16 * 4, yx % 16 * 4] = torch.linspace(-3.0, 4.0, 40)  # scores 0.05 .. 0.98, 0.18 logit apart
    kw = dict(input_size=(256, 256), k=30)
    ref = decode_detections(hm, wh, **kw)
    got = decode_detections(hm.to(low), wh.to(low), **kw)
    for r, d in zip(ref, got, strict=True):
        assert torch.equal(r["labels"], d["labels"]) and len(r["labels"]) > 5
        # a logit rounded by u |logit| moves the sigmoid by at most u |logit| / 4 < u (|logit| <= 4)
        torch.testing.assert_close(d["scores"], r["scores"], rtol=0, atol=u)
        # a distance rounded by u relative; the peak position is exact (multiples of 4 below 256)
        torch.testing.assert_close(d["boxes"], r["boxes"], rtol=u, atol=u * 100)
