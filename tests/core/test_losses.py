"""Losses on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from ttfnet_lightning.core.losses import TTFNetLoss, giou_loss, modified_focal_loss
from ttfnet_lightning.core.targets import encode_targets


def test_focal_loss_known_value():
    # logits 0 -> p = 0.5 at a positive (target 1) and at a negative with target 0.5
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.5]]]])
    pos = -math.log(0.5) * 0.5**2
    neg = -math.log(0.5) * 0.5**2 * (1 - 0.5) ** 4
    assert modified_focal_loss(logits, target).item() == pytest.approx(pos + neg, rel=1e-5)
    # two positives: divided by 2
    target2 = torch.tensor([[[[1.0, 1.0]]]])
    assert modified_focal_loss(logits, target2).item() == pytest.approx(pos, rel=1e-5)
    # no positives: the negative sum alone
    target0 = torch.tensor([[[[0.5, 0.0]]]])
    neg0 = -math.log(0.5) * 0.25 * 0.5**4 - math.log(0.5) * 0.25
    assert modified_focal_loss(logits, target0).item() == pytest.approx(neg0, rel=1e-5)
    # probabilities clamped to [1e-4, 1 - 1e-4]
    big = modified_focal_loss(torch.full((1, 1, 1, 1), -100.0), torch.ones(1, 1, 1, 1))
    assert big.item() == pytest.approx(-math.log(1e-4) * (1 - 1e-4) ** 2, rel=1e-4)


def test_giou_plus_one_and_continuous():
    pred = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    tgt = torch.tensor([[0.0, 0.0, 4.0, 9.0]])
    w = torch.ones(1)
    # +1 convention: areas 100 and 50, overlap 50 -> IoU 0.5, enclosing = union -> loss 0.5
    assert giou_loss(pred, tgt, w, avg_eps=0).item() == pytest.approx(0.5, rel=1e-6)
    # continuous: areas 81 and 36, overlap 36 -> IoU 36/81
    assert giou_loss(pred, tgt, w, plus_one=False, avg_eps=0).item() == pytest.approx(1 - 36 / 81, rel=1e-5)
    # disjoint boxes: GIoU < 0, loss in (1, 2]
    far = torch.tensor([[20.0, 0.0, 29.0, 9.0]])
    enclose, union = 30 * 10, 200
    assert giou_loss(pred, far, w, avg_eps=0).item() == pytest.approx(1 + (enclose - union) / enclose, rel=1e-6)
    for plus_one in (True, False):
        assert giou_loss(pred, pred.clone(), w, plus_one=plus_one).item() == pytest.approx(0, abs=1e-6)


def test_giou_weighting_and_ignored_pixels():
    pred = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0], [5.0, 5.0, 6.0, 6.0]], requires_grad=True)
    tgt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 4.0, 9.0], [-1.0, -1.0, -1.0, -1.0]])
    w = torch.tensor([1.0, 3.0, 0.0])
    loss = giou_loss(pred, tgt, w)
    assert loss.item() == pytest.approx((0 * 1 + 0.5 * 3) / (4 + 1e-4), rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[2] == 0).all()
    assert giou_loss(pred, tgt, torch.zeros(3)).item() == 0


def test_ttfnet_loss_perfect_boxes_and_weights():
    boxes = torch.tensor([[[8.0, 12.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]]])
    labels = torch.tensor([[0, 1]])
    hm, bt, rw = encode_targets(boxes, labels, num_classes=2, output_size=(16, 16))
    # perfect distances: at pixel (i, j) l = 4j - x1, t = 4i - y1, r = x2 - 4j, b = y2 - 4i
    ys, xs = torch.meshgrid(torch.arange(16.0) * 4, torch.arange(16.0) * 4, indexing="ij")
    wh = torch.stack((xs - bt[0, 0], ys - bt[0, 1], bt[0, 2] - xs, bt[0, 3] - ys))[None]
    logits = torch.logit(hm.clamp(1e-6, 1 - 1e-6))
    out = TTFNetLoss()(logits, wh, hm, bt, rw)
    assert set(out) == {"loss", "loss_heatmap", "loss_box"}
    assert out["loss_box"].item() == pytest.approx(0, abs=1e-5)
    focal = modified_focal_loss(logits, hm)
    assert out["loss_heatmap"].item() == pytest.approx(focal.item(), rel=1e-6)
    out2 = TTFNetLoss(wloc=2.0, wreg=3.0)(logits, torch.zeros_like(wh), hm, bt, rw)
    assert out2["loss"].item() == pytest.approx(2 * focal.item() + out2["loss_box"].item(), rel=1e-6)
    assert out2["loss_box"].item() == pytest.approx(
        3.0
        * giou_loss(
            torch.stack((xs, ys, xs, ys))[None].permute(0, 2, 3, 1)[:, None], bt.permute(0, 2, 3, 1)[:, None], rw
        ).item(),
        rel=1e-5,
    )


def test_class_aware_loss_shapes():
    boxes = torch.tensor([[[8.0, 12.0, 40.0, 30.0]]])
    hm, bt, rw = encode_targets(boxes, torch.tensor([[2]]), num_classes=3, output_size=(16, 16), class_aware=True)
    wh = torch.rand(1, 12, 16, 16, requires_grad=True)
    out = TTFNetLoss()(torch.zeros(1, 3, 16, 16), wh, hm, bt, rw)
    out["loss"].backward()
    assert torch.isfinite(wh.grad).all()
    assert wh.grad[:, :8].abs().sum() == 0 and wh.grad[:, 8:].abs().sum() > 0  # only class 2's channels
