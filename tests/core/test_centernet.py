"""CenterNet's objective (ttfnet_lightning.core.centernet) against the released CenterNet code's behaviour:
targets (ctdet.py + utils/image.py), losses (models/losses.py) and decoder (models/decode.py), each also
compared with a plain per-box port of the released code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_targets import H, W, random_batch

from ttfnet_lightning.core.centernet import (
    CenterNetLoss,
    decode_centernet,
    encode_centernet_targets,
    reg_l1_loss,
)
from ttfnet_lightning.core.losses import modified_focal_loss
from ttfnet_lightning.core.models.head import CenterNetHead
from ttfnet_lightning.core.models.ttfnet import METHODS, TTFNet
from ttfnet_lightning.core.targets import gaussian_radius, windows


# ------------------------------------------------------------------ plain ports of the released code
def released_gaussian_radius(det_size: tuple[int, int], min_overlap: float = 0.7) -> float:
    """CenterNet's utils/image.py gaussian_radius (divides by 2, not by 2a)."""
    height, width = det_size
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_umich_gaussian(heatmap: np.ndarray, center, radius: int) -> None:
    """CenterNet's draw_umich_gaussian (with gaussian2D), in place."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    m = (diameter - 1.0) / 2.0
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    masked_heatmap = heatmap[y - top : y + bottom, x - left : x + right]
    masked_gaussian = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)


def released_targets(boxes: torch.Tensor, labels: torch.Tensor, C: int, h: int, w: int, stride: int = 4):
    """ctdet.py's __getitem__ target loop, box by box (the affine transform to the map is a pure 1/stride)."""
    B, M = labels.shape
    hm = np.zeros((B, C, h, w), np.float32)
    wh = np.zeros((B, M, 2), np.float32)
    reg = np.zeros((B, M, 2), np.float32)
    ind = np.zeros((B, M), np.int64)
    mask = np.zeros((B, M), np.float32)
    for b in range(B):
        for k in range(M):
            cls = int(labels[b, k])
            if not 0 <= cls < C:
                continue
            bbox = boxes[b, k].numpy().astype(np.float32) / np.float32(stride)
            bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, w - 1)
            bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, h - 1)
            bh, bw = bbox[3] - bbox[1], bbox[2] - bbox[0]
            if bh > 0 and bw > 0:
                radius = max(0, int(released_gaussian_radius((math.ceil(bh), math.ceil(bw)))))
                ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], dtype=np.float32)
                ct_int = ct.astype(np.int32)
                draw_umich_gaussian(hm[b, cls], ct_int, radius)
                wh[b, k] = 1.0 * bw, 1.0 * bh
                ind[b, k] = ct_int[1] * w + ct_int[0]
                reg[b, k] = ct - ct_int
                mask[b, k] = 1
    return tuple(torch.from_numpy(a) for a in (hm, wh, reg, ind, mask))


def released_neg_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """models/losses.py _neg_loss (pred: clamped sigmoid)."""
    pos_inds = gt.eq(1).float()
    neg_inds = gt.lt(1).float()
    neg_weights = torch.pow(1 - gt, 4)
    pos_loss = (torch.log(pred) * torch.pow(1 - pred, 2) * pos_inds).sum()
    neg_loss = (torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg_inds).sum()
    num_pos = pos_inds.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def released_reg_l1(output: torch.Tensor, mask: torch.Tensor, ind: torch.Tensor, target: torch.Tensor):
    """models/losses.py RegL1Loss with utils.py _transpose_and_gather_feat."""
    feat = output.permute(0, 2, 3, 1).contiguous()
    feat = feat.view(feat.size(0), -1, feat.size(3))
    pred = feat.gather(1, ind.unsqueeze(2).expand(ind.size(0), ind.size(1), feat.size(2)))
    mask = mask.unsqueeze(2).expand_as(pred).float()
    return F.l1_loss(pred * mask, target * mask, reduction="sum") / (mask.sum() + 1e-4)


def released_decode(heat_logits: torch.Tensor, wh: torch.Tensor, reg: torch.Tensor, K: int):
    """models/decode.py ctdet_decode (_nms, _topk per class then overall), map units."""
    heat = heat_logits.sigmoid()
    hmax = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (hmax == heat).float()
    batch, cat, height, width = heat.size()
    topk_scores, topk_inds = torch.topk(heat.view(batch, cat, -1), K)
    topk_inds = topk_inds % (height * width)
    topk_score, topk_ind = torch.topk(topk_scores.view(batch, -1), K)
    clses = torch.div(topk_ind, K, rounding_mode="floor")
    inds = topk_inds.view(batch, -1).gather(1, topk_ind)
    ys, xs = (inds // width).float(), (inds % width).float()

    def gather(feat):
        return feat.flatten(2).gather(2, inds.unsqueeze(1).expand(-1, feat.shape[1], -1)).transpose(1, 2)

    r, s = gather(reg), gather(wh)
    xs, ys = xs + r[..., 0], ys + r[..., 1]
    boxes = torch.stack([xs - s[..., 0] / 2, ys - s[..., 1] / 2, xs + s[..., 0] / 2, ys + s[..., 1] / 2], dim=-1)
    return boxes, topk_score, clses


# ------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_match_the_released_loop_on_adversarial_boxes(seed):
    """Tiny, huge, zero-size, outside, border-touching, overlapping boxes, an empty image, padding."""
    boxes, labels = random_batch(seed, C=3)
    h, w = H // 4, W // 4
    got = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(h, w))
    want = released_targets(boxes, labels, 3, h, w)
    for name, g, r in zip(("heatmap", "wh", "offset", "index", "mask"), got, want):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")  # noqa: B023
    assert torch.equal(got.heatmap == 1, want[0] == 1)  # the positives, exactly
    assert got.mask.sum() < (labels >= 0).sum()  # some boxes were skipped (zero size, outside)


def test_static_windows_of_accelerators_give_the_same_targets(monkeypatch):
    boxes, labels = random_batch(3, C=3)
    ref = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(H // 4, W // 4))
    monkeypatch.setattr(windows, "_FIT_ON_CPU", False)
    got = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(H // 4, W // 4), chunk_size=2)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_one_peak_of_one_per_box_at_its_centre_pixel_and_nowhere_else():
    boxes = torch.tensor(
        [
            [[8.0, 8.0, 40.0, 30.0], [100.0, 60.0, 180.0, 200.0], [10.0, 150.0, 30.0, 170.0]],
            [[0, 0, 252, 252], [0] * 4, [0] * 4],
        ]
    )
    labels = torch.tensor([[0, 2, 0], [1, -1, -1]])
    t = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(64, 64))
    peaks = t.heatmap.eq(1).nonzero().tolist()
    # centre of the map box, floored: ((x1 + x2) / 8, (y1 + y2) / 8)
    assert sorted(peaks) == sorted([[0, 0, 4, 6], [0, 2, 32, 35], [0, 0, 40, 5], [1, 1, 31, 31]])
    assert t.heatmap.max() == 1 and t.heatmap.min() == 0
    assert t.mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_radius_is_the_released_formula_against_hand_computed_values():
    """min of the three cases with CenterNet's (b + sqrt(b^2 - 4ac)) / 2; here case 3 is the smallest:
    a3 = 4 * 0.7, b3 = -1.4 (h + w), c3 = -0.3 w h."""
    cases = {  # (h, w) after ceil: radius
        (10, 10): (-28 + math.sqrt(28**2 + 4 * 2.8 * 0.3 * 100)) / 2,  # 2.733
        (4, 20): (-33.6 + math.sqrt(33.6**2 + 4 * 2.8 * 0.3 * 80)) / 2,  # 1.893
        (3, 4): (-9.8 + math.sqrt(9.8**2 + 4 * 2.8 * 0.3 * 12)) / 2,  # 0.939
        (100, 50): (-210 + math.sqrt(210**2 + 4 * 2.8 * 0.3 * 5000)) / 2,  # 18.39
    }
    for (h, w), r in cases.items():
        assert released_gaussian_radius((h, w)) == pytest.approx(r, rel=1e-12)
        got = gaussian_radius(torch.tensor([float(h)]), torch.tensor([float(w)]), formula="centernet")
        assert float(got) == pytest.approx(r, rel=1e-6)
    # sizes are ceil-ed first: a 2.5 x 3.2 box has the radius of 3 x 4
    assert float(gaussian_radius(torch.tensor([2.5]), torch.tensor([3.2]))) == pytest.approx(cases[(3, 4)], rel=1e-6)
    # the drawn Gaussian spans 2 * int(r) + 1 pixels along the centre row and column
    for (h, w), r in cases.items():
        box = torch.tensor([[[256.0 - 2 * w, 256.0 - 2 * h, 256.0 + 2 * w, 256.0 + 2 * h]]])  # h x w on the map
        hm = encode_centernet_targets(box, torch.tensor([[0]]), num_classes=1, output_size=(128, 128)).heatmap[0, 0]
        assert int((hm[64] > 0).sum()) == int((hm[:, 64] > 0).sum()) == 2 * int(r) + 1, (h, w)
        assert int((hm > 0).sum()) == (2 * int(r) + 1) ** 2


def test_gaussian_sigma_is_a_sixth_of_the_diameter():
    """A 10 x 10 box on the map: r = 2, sigma = 5 / 6, value exp(-(dx^2 + dy^2) / (2 sigma^2))."""
    t = encode_centernet_targets(
        torch.tensor([[[40.0, 40.0, 80.0, 80.0]]]), torch.tensor([[0]]), num_classes=1, output_size=(32, 32)
    )
    hm = t.heatmap[0, 0]
    two_sigma2 = 2 * (5 / 6) ** 2  # = 50 / 36
    assert float(hm[15, 15]) == 1.0
    assert float(hm[15, 16]) == pytest.approx(math.exp(-1 / two_sigma2), rel=1e-6)  # exp(-0.72)
    assert float(hm[14, 15]) == pytest.approx(math.exp(-1 / two_sigma2), rel=1e-6)
    assert float(hm[16, 16]) == pytest.approx(math.exp(-2 / two_sigma2), rel=1e-6)
    assert float(hm[15, 13]) == pytest.approx(math.exp(-4 / two_sigma2), rel=1e-6)
    assert float(hm[17, 13]) == pytest.approx(math.exp(-8 / two_sigma2), rel=1e-6)  # the window's corner
    assert float(hm[15, 18]) == 0.0 and float(hm[12, 15]) == 0.0  # outside the 5 x 5 window


def test_size_offset_and_index_targets():
    # on the map (stride 4): x 10.5 .. 20.25, y 9.5 .. 19.75 -> centre (15.375, 14.625)
    boxes = torch.tensor([[[42.0, 38.0, 81.0, 79.0], [0.0, 0.0, 0.0, 0.0]]])
    t = encode_centernet_targets(boxes, torch.tensor([[1, -1]]), num_classes=2, output_size=(32, 48))
    assert t.wh.tolist() == [[[9.75, 10.25], [0.0, 0.0]]]
    assert t.offset.tolist() == [[[0.375, 0.625], [0.0, 0.0]]]
    assert t.index.tolist() == [[14 * 48 + 15, 0]] and t.index.dtype == torch.int64
    assert t.mask.tolist() == [[1.0, 0.0]]
    assert float(t.heatmap[0, 1, 14, 15]) == 1.0 and t.heatmap[0, 0].eq(0).all()


def test_overlapping_boxes_of_one_class_take_the_maximum():
    a, b = [20.0, 20.0, 80.0, 70.0], [40.0, 36.0, 100.0, 90.0]
    both = encode_centernet_targets(torch.tensor([[a, b]]), torch.tensor([[0, 0]]), num_classes=1, output_size=(32, 32))
    one = encode_centernet_targets(torch.tensor([[a]]), torch.tensor([[0]]), num_classes=1, output_size=(32, 32))
    two = encode_centernet_targets(torch.tensor([[b]]), torch.tensor([[0]]), num_classes=1, output_size=(32, 32))
    overlap = (one.heatmap > 0) & (two.heatmap > 0)
    assert overlap.any() and (one.heatmap != two.heatmap)[overlap].any()
    assert torch.equal(both.heatmap, torch.maximum(one.heatmap, two.heatmap))
    assert int(both.heatmap.eq(1).sum()) == 2


def test_degenerate_boxes_are_skipped():
    boxes = torch.tensor(
        [
            [
                [10.0, 10.0, 10.0, 40.0],  # zero width
                [10.0, 30.0, 40.0, 20.0],  # negative height
                [200.0, -50.0, 240.0, -10.0],  # outside the image: clipped to a line
                [10.0, 10.0, 40.0, 40.0],  # a class the model does not have
                [10.0, 10.0, 40.0, 40.0],  # padding
            ]
        ]
    )
    labels = torch.tensor([[0, 0, 0, 5, -1]])
    t = encode_centernet_targets(boxes, labels, num_classes=2, output_size=(32, 32))
    assert t.heatmap.eq(0).all() and t.mask.eq(0).all() and t.index.eq(0).all()
    assert t.wh.eq(0).all() and t.offset.eq(0).all()
    empty = encode_centernet_targets(
        torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), num_classes=2, output_size=(8, 8)
    )
    assert empty.heatmap.shape == (2, 2, 8, 8) and empty.wh.shape == (2, 0, 2) and empty.heatmap.eq(0).all()


# ------------------------------------------------------------------------------------- losses
def test_loss_on_a_tiny_example_against_a_hand_computation():
    p = torch.tensor([[0.2, 0.7, 0.1], [0.05, 0.3, 0.6]])
    y = torch.tensor([[0.5, 1.0, 0.25], [0.0, 0.5, 0.0]])
    logits = torch.log(p / (1 - p)).view(1, 1, 2, 3)
    regression = torch.zeros(1, 4, 2, 3)
    regression[0, :, 0, 1] = torch.tensor([2.5, 2.75, 0.5, 0.25])  # size (w, h), offset (x, y) at pixel 1
    regression[0, :, 1, 2] = 9.0  # elsewhere: never read
    wh = torch.tensor([[[3.0, 2.0], [7.0, 7.0]]])  # second slot is padding
    offset = torch.tensor([[[0.25, 0.5], [0.9, 0.9]]])
    index = torch.tensor([[1, 5]])
    mask = torch.tensor([[1.0, 0.0]])
    got = CenterNetLoss()(logits, regression, y.view(1, 1, 2, 3), wh, offset, index, mask)

    pos = -math.log(0.7) * 0.3**2
    neg = sum(
        -math.log(1 - pi) * pi**2 * (1 - yi) ** 4
        for pi, yi in zip([0.2, 0.1, 0.05, 0.3, 0.6], [0.5, 0.25, 0.0, 0.5, 0.0])
    )
    heat = (pos + neg) / 1  # one positive
    size = 0.1 * (abs(2.5 - 3.0) + abs(2.75 - 2.0)) / (2 * 1 + 1e-4)  # RegL1Loss: mask expanded to 2 channels
    off = 1.0 * (abs(0.5 - 0.25) + abs(0.25 - 0.5)) / (2 * 1 + 1e-4)
    assert float(got["loss_heatmap"]) == pytest.approx(heat, rel=1e-5)
    assert float(got["loss_wh"]) == pytest.approx(size, rel=1e-5)
    assert float(got["loss_offset"]) == pytest.approx(off, rel=1e-5)
    assert float(got["loss"]) == pytest.approx(heat + size + off, rel=1e-5)
    assert set(got) == {"loss", "loss_heatmap", "loss_wh", "loss_offset"}


@pytest.mark.parametrize("with_positives", [True, False])
def test_losses_equal_the_released_neg_loss_and_reg_l1_loss(with_positives):
    g = torch.Generator().manual_seed(0)
    boxes, labels = random_batch(1, C=3)
    if not with_positives:
        labels = torch.full_like(labels, -1)
    t = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(H // 4, W // 4))
    logits = torch.randn(t.heatmap.shape, generator=g) * 3
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)  # CenterNet's _sigmoid
    torch.testing.assert_close(modified_focal_loss(logits, t.heatmap), released_neg_loss(pred, t.heatmap))
    out = torch.randn(boxes.shape[0], 2, H // 4, W // 4, generator=g) * 10
    for target in (t.wh, t.offset):
        torch.testing.assert_close(
            reg_l1_loss(out, t.index, t.mask, target), released_reg_l1(out, t.mask, t.index, target)
        )


# ------------------------------------------------------------------------------------ decoder
def test_decoder_equals_the_released_ctdet_decode():
    g = torch.Generator().manual_seed(0)
    hm = torch.randn(2, 3, 16, 20, generator=g) * 2
    wh = torch.rand(2, 2, 16, 20, generator=g) * 3
    reg = torch.rand(2, 2, 16, 20, generator=g)
    dets = decode_centernet(hm, torch.cat((wh, reg), 1), input_size=(64, 80), k=20, score_threshold=-1.0)
    boxes, scores, labels = released_decode(hm, wh, reg, K=20)
    boxes = boxes * 4
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, 80)  # the library clamps to the input, as decode_detections
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, 64)
    for i, d in enumerate(dets):
        assert torch.equal(d["scores"], scores[i]) and torch.equal(d["labels"], labels[i].long())
        torch.testing.assert_close(d["boxes"], boxes[i])


def test_perfect_predictions_decode_to_the_original_boxes():
    """Targets -> "perfect" network outputs (logits of the target heatmap, size and offset at each box's
    centre index) -> decode: every box comes back with its label, rescaled to the original image size."""
    boxes = torch.tensor(
        [
            [[8.5, 12.0, 60.25, 50.0], [100.0, 20.0, 180.5, 140.0], [30.0, 150.0, 90.0, 244.0], [0.0] * 4],
            [[4.0, 4.0, 250.0, 200.0], [130.0, 202.0, 170.0, 250.0], [0.0] * 4, [0.0] * 4],
        ]
    )  # inside [0, (w - 1) * 4] x [0, (h - 1) * 4]: the encoder's clip changes nothing
    labels = torch.tensor([[0, 1, 1, -1], [2, 0, -1, -1]])
    h, w = 64, 64
    t = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(h, w))
    logits = torch.logit(t.heatmap.clamp(1e-6, 1 - 1e-6))
    regression = torch.zeros(2, 4, h * w)
    values = torch.cat((t.wh, t.offset), -1).transpose(1, 2)  # (B, 4, M)
    regression.scatter_(2, t.index.unsqueeze(1).expand(-1, 4, -1), values * t.mask.unsqueeze(1))
    orig = [(512, 768), (256, 256)]  # (h0, w0): the images were resized to 256 x 256
    dets = decode_centernet(logits, regression.view(2, 4, h, w), input_size=(256, 256), orig_sizes=orig)
    for i, det in enumerate(dets):
        keep = labels[i] >= 0
        scale = torch.tensor([orig[i][1] / 256, orig[i][0] / 256] * 2)
        want = boxes[i][keep] * scale
        assert len(det["boxes"]) == len(want)
        order = [int(torch.cdist(b[None], det["boxes"]).argmin()) for b in want]
        torch.testing.assert_close(det["boxes"][order], want, rtol=0, atol=1e-4)
        assert det["labels"][order].tolist() == labels[i][keep].tolist()
        assert (det["scores"] > 0.99).all()


# --------------------------------------------------------------------------------------- head
def test_centernet_head_and_network():
    head = CenterNetHead(in_channels=8, num_classes=3, heatmap_channels=16, box_channels=12)
    assert torch.equal(head.heatmap[-1].bias, torch.full((3,), -2.19))
    assert head.wh[-1].out_channels == 2 and head.offset[-1].out_channels == 2 and head.wh[0].out_channels == 12
    assert [type(m).__name__ for m in head.heatmap] == ["Conv2d", "ReLU", "Conv2d"]  # one hidden conv per branch
    hm, reg = head(torch.randn(2, 8, 5, 6))
    assert hm.shape == (2, 3, 5, 6) and reg.shape == (2, 4, 5, 6)
    x = torch.randn(1, 8, 5, 6)
    assert torch.equal(head(x)[1], torch.cat((head.wh(x), head.offset(x)), 1))  # size, then offset

    torch.manual_seed(0)
    net = TTFNet(num_classes=4, method="centernet", deformable=False, heatmap_convs=1, heatmap_channels=64).eval()
    assert isinstance(net.head, CenterNetHead) and net.method == "centernet"
    with torch.no_grad():
        hm, reg = net(torch.randn(1, 3, 64, 96))
    assert hm.shape == (1, 4, 16, 24) and reg.shape == (1, 4, 16, 24)
    assert METHODS == ("ttfnet", "centernet")
    with pytest.raises(ValueError, match="method must be one of"):
        TTFNet(num_classes=2, method="fcos")
    with pytest.raises(ValueError, match="class-aware"):
        TTFNet(num_classes=2, method="centernet", class_aware=True)


def test_config_methods_are_the_networks():
    from ttfnet_lightning.training.config import METHODS as CONFIG_METHODS

    assert CONFIG_METHODS == METHODS
