"""Target encoder vs the plain per-box reference, for every variant, on adversarial random boxes."""

from __future__ import annotations

import math

import pytest
import torch
from reference_targets import H, W, centernet_radius, exact_radius, random_batch, reference_encode

from ttfnet_lightning.core.targets import encode_targets, gaussian_radius, windows

VARIANTS = [
    {},
    {"area_weight": "sqrt"},
    {"area_weight": "area"},
    {"area_weight": "norm"},
    {"area_weight": "none"},
    {"area_weight": "norm", "gaussian_weight": False},
    {"area_weight": "none", "gaussian_weight": False},
    {"gaussian_weight": False},
    {"beta": 0.3},
    {"beta": 0.9},
    {"alpha": 0.3, "beta": 0.3},
    {"wh_gaussian": False, "beta": 0.01},
    {"wh_gaussian": False, "beta": 0.3},
    {"wh_gaussian": False, "beta": 0.54},
    {"wh_gaussian": False, "beta": 0.9, "area_weight": "norm"},
    {"aspect_ratio": False},
    {"aspect_ratio": False, "radius_formula": "exact"},
    {"aspect_ratio": False, "beta": 0.3},
    {"class_aware": True},
    {"class_aware": True, "wh_gaussian": False, "beta": 0.5},
    {"stride": 8},
]


def _check(opts: dict, seed: int, C: int = 3):
    boxes, labels = random_batch(seed, C=C)
    stride = opts.get("stride", 4)
    out_size = (H // stride, W // stride)
    got = encode_targets(boxes, labels, num_classes=C, output_size=out_size, **opts)
    want = reference_encode(boxes, labels, num_classes=C, output_size=out_size, **opts)
    for name, g, r in zip(("heatmap", "box_target", "reg_weight"), got, want):
        assert g.shape == r.shape, name
        assert torch.isfinite(g).all(), f"{name} has NaN/inf"
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {opts}: {m}")  # noqa: B023
    # positives (target exactly 1) must agree exactly: the focal loss counts them
    assert torch.equal(got[0] == 1, want[0] == 1)
    return got


@pytest.mark.parametrize("opts", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "released")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encoder_matches_reference(opts, seed):
    _check(opts, seed)


def test_many_boxes_and_chunking_are_consistent():
    boxes, labels = random_batch(7, B=2, M=80, C=5)
    a = encode_targets(boxes, labels, num_classes=5, output_size=(24, 32), chunk_size=1)
    b = encode_targets(boxes, labels, num_classes=5, output_size=(24, 32), chunk_size=1000)
    c = encode_targets(boxes, labels, num_classes=5, output_size=(24, 32))
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)  # deterministic, chunk-independent
    ref = reference_encode(boxes, labels, num_classes=5, output_size=(24, 32))
    for g, r in zip(c, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opts", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "released")
def test_static_windows_match(opts, monkeypatch):
    # the accelerator path (windows of a size known without reading the boxes), forced on the CPU:
    # the reference's result, and bit for bit the CPU's fitted windows
    fitted = encode_targets(
        *random_batch(3), num_classes=3, output_size=(H // opts.get("stride", 4), W // opts.get("stride", 4)), **opts
    )
    monkeypatch.setattr(windows, "_FIT_ON_CPU", False)
    static = _check(opts, seed=3)
    for f, s in zip(fitted, static):
        assert torch.equal(f, s)


def crowded_batch(seed: int, B: int = 2, M: int = 50, C: int = 80, size: int = 512):
    """Many boxes per image, sizes log-uniform from 4 px to the image (like the encoder benchmark)."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(B, M).uniform_(math.log(4.0), math.log(size), generator=g))
    aspect = torch.exp(torch.empty(B, M).uniform_(-1.1, 1.1, generator=g))
    w = (side * aspect.sqrt()).clamp(2, size)
    h = (side / aspect.sqrt()).clamp(2, size)
    x1 = torch.rand(B, M, generator=g) * (size - w)
    y1 = torch.rand(B, M, generator=g) * (size - h)
    labels = torch.randint(0, C, (B, M), generator=g)
    labels[1, M // 2 :] = -1  # image 1 half padding
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=-1), labels


@pytest.mark.parametrize(
    "opts",
    [{}, {"wh_gaussian": False, "beta": 0.54}, {"class_aware": True, "beta": 0.3}],
    ids=["released", "rect", "aware"],
)
def test_crowded_batch_matches_reference(opts):
    # 50 boxes per image on a 128 x 128 map with 80 classes: many windows overlap, many groups
    boxes, labels = crowded_batch(0)
    got = encode_targets(boxes, labels, num_classes=80, output_size=(128, 128), **opts)
    want = reference_encode(boxes, labels, num_classes=80, output_size=(128, 128), **opts)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[0] == 1, want[0] == 1)


def test_released_semantics_by_hand():
    # one 40x40 box at (20,20)-(60,60) in a 128x128 input: centre (40,40)/4 = (10,10),
    # feature box 10 x 10, radius int(5 * 0.54) = 2, window 5x5, sigma 5/6
    boxes = torch.tensor([[[20.0, 20.0, 60.0, 60.0]]])
    hm, bt, rw = encode_targets(boxes, torch.tensor([[0]]), num_classes=1, output_size=(32, 32))
    assert hm[0, 0, 10, 10] == 1 and (hm == 1).sum() == 1
    sigma = 5 / 6
    assert hm[0, 0, 10, 12].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-5)
    assert hm[0, 0, 10, 13] == 0  # outside the window
    assert (rw > 0).sum() == 25
    assert rw.sum().item() == pytest.approx(math.log(41 * 41), rel=1e-5)
    assert torch.equal(bt[0, :, 10, 10], boxes[0, 0])
    assert (bt[0, :, 0, 0] == -1).all()


def test_smaller_box_wins_overlap():
    big = [0.0, 0.0, 120.0, 120.0]
    small = [50.0, 50.0, 70.0, 70.0]
    for order in ([big, small], [small, big]):
        boxes = torch.tensor([order])
        hm, bt, rw = encode_targets(boxes, torch.tensor([[0, 1]]), num_classes=2, output_size=(32, 32))
        # centre pixel (15, 15) is in both areas: the small box owns it whatever the input order
        assert torch.equal(bt[0, :, 15, 15], torch.tensor(small))
        assert hm[0, 0, 15, 15] == 1 and hm[0, 1, 15, 15] == 1  # both heatmaps keep their peak


def test_degenerate_boxes_are_finite_and_empty():
    boxes = torch.tensor([[[10.0, 10.0, 10.0, 10.0], [500.0, 500.0, 600.0, 600.0], [30.0, 30.0, 20.0, 20.0]]])
    for opts in VARIANTS:
        stride = opts.get("stride", 4)
        out = encode_targets(
            boxes, torch.tensor([[0, 1, 2]]), num_classes=3, output_size=(32 // stride * 4, 32 // stride * 4), **opts
        )
        assert all(torch.isfinite(t).all() for t in out), opts
        # the box fully outside draws nothing
        assert out[0][0, 1].sum() == 0


def test_zero_boxes_and_all_padding():
    for M in (0, 3):
        boxes = torch.zeros(2, M, 4)
        labels = torch.full((2, M), -1)
        hm, bt, rw = encode_targets(boxes, labels, num_classes=4, output_size=(8, 8))
        assert hm.shape == (2, 4, 8, 8) and hm.sum() == 0 and rw.sum() == 0 and (bt == -1).all()


def test_rejects_bad_arguments():
    b, l = torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="area_weight"):
        encode_targets(b, l, num_classes=1, output_size=(4, 4), area_weight="cube")
    with pytest.raises(ValueError, match=r"\(B, M, 4\)"):
        encode_targets(torch.zeros(1, 4), l, num_classes=1, output_size=(4, 4))
    with pytest.raises(ValueError, match="labels"):
        encode_targets(b, torch.zeros(2, 1, dtype=torch.int64), num_classes=1, output_size=(4, 4))


@pytest.mark.parametrize("hw", [(1.0, 1.0), (10.0, 10.0), (5.0, 40.0), (123.4, 7.7)])
def test_gaussian_radius_formulas(hw):
    h, w = hw
    got = gaussian_radius(torch.tensor([h]), torch.tensor([w]), formula="centernet").item()
    assert got == pytest.approx(centernet_radius(h, w), rel=1e-6)
    r = gaussian_radius(torch.tensor([h]), torch.tensor([w]), formula="exact").item()
    assert r == pytest.approx(exact_radius(h, w), rel=1e-6)
    # the exact radius keeps IoU >= 0.7 in all three corner-shift cases, with equality in one
    ious = [
        (w - r) * (h - r) / (2 * w * h - (w - r) * (h - r)),
        (w - 2 * r) * (h - 2 * r) / (w * h),
        w * h / ((w + 2 * r) * (h + 2 * r)),
    ]
    assert min(ious) == pytest.approx(0.7, abs=1e-6)
