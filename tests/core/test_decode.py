"""Decoder: perfect maps decode back to the encoded boxes."""

from __future__ import annotations

import pytest
import torch

from ttfnet_lightning.core.decode import decode_detections, grid_boxes, local_max
from ttfnet_lightning.core.targets import encode_targets


def perfect_maps(boxes, labels, C, out_size, class_aware=False):
    hm, bt, rw = encode_targets(boxes, labels, num_classes=C, output_size=out_size, class_aware=class_aware)
    B = boxes.shape[0]
    h, w = out_size
    G = C if class_aware else 1
    ys, xs = torch.meshgrid(torch.arange(h) * 4.0, torch.arange(w) * 4.0, indexing="ij")
    t = bt.reshape(B, G, 4, h, w)
    wh = torch.stack((xs - t[:, :, 0], ys - t[:, :, 1], t[:, :, 2] - xs, t[:, :, 3] - ys), dim=2)
    wh = wh.clamp(min=0).reshape(B, 4 * G, h, w)
    return torch.logit(hm.clamp(1e-6, 1 - 1e-6)), wh


@pytest.mark.parametrize("class_aware", [False, True])
def test_round_trip(class_aware):
    boxes = torch.tensor(
        [
            [[4.0, 6.0, 40.0, 30.0], [60.0, 8.0, 120.0, 90.0], [10.0, 70.0, 30.0, 92.0]],
            [[0.0, 0.0, 127.0, 95.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[0, 2, 1], [1, -1, -1]])
    logits, wh = perfect_maps(boxes, labels, 3, (24, 32), class_aware)
    dets = decode_detections(logits, wh, input_size=(96, 128), orig_sizes=[(192, 256), (96, 128)])
    assert len(dets) == 2
    d0 = dets[0]
    assert len(d0["boxes"]) == 3 and (d0["scores"] > 0.99).all()
    order = d0["labels"].argsort()
    torch.testing.assert_close(d0["boxes"][order], boxes[0][[0, 2, 1]] * 2)  # rescaled x2
    assert d0["labels"][order].tolist() == [0, 1, 2]
    d1 = dets[1]
    assert len(d1["boxes"]) == 1 and d1["labels"].tolist() == [1]
    torch.testing.assert_close(d1["boxes"][0], torch.tensor([0.0, 0.0, 127.0, 95.0]))


def test_topk_threshold_and_clamp():
    logits = torch.full((1, 2, 8, 8), -10.0)
    logits[0, 0, 2, 2] = 5.0
    logits[0, 1, 6, 6] = -4.0  # sigmoid = 0.018 > 0.01
    logits[0, 1, 4, 0] = -5.0  # sigmoid = 0.0067 < 0.01
    wh = torch.full((1, 4, 8, 8), 100.0)  # boxes far beyond the image: clamped
    d = decode_detections(logits, wh, input_size=(32, 32))[0]
    assert d["labels"].tolist() == [0, 1]
    assert d["boxes"].tolist() == [[0.0, 0.0, 32.0, 32.0]] * 2
    d = decode_detections(logits, wh, input_size=(32, 32), k=1)[0]
    assert d["labels"].tolist() == [0]
    assert decode_detections(logits, wh, input_size=(32, 32), score_threshold=0.5)[0]["scores"].numel() == 1


def test_grid_boxes_matches_paper_equation():
    d = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1).expand(4, 2, 3)
    b = grid_boxes(d, 4)
    # cell (i=1, j=2): x = 8, y = 4
    assert b[:, 1, 2].tolist() == [7.0, 2.0, 11.0, 8.0]


def reference_decode(
    heatmap_logits, wh, *, input_size, orig_sizes=None, stride=4, k=100, score_threshold=0.01, pool_size=3
):
    """The straightforward formulation (sigmoid, max_pool2d peak test, top-K, gather), to compare with."""
    B, C, h, w = heatmap_logits.shape
    H, W = input_size
    heat = heatmap_logits.float().sigmoid()
    peaks = torch.nn.functional.max_pool2d(heat, pool_size, stride=1, padding=(pool_size - 1) // 2)
    heat = heat * (peaks == heat)
    k = min(k, C * h * w)
    scores, idx = heat.reshape(B, -1).topk(k, dim=1)
    labels, pix = idx // (h * w), idx % (h * w)
    ys, xs = (pix // w).float() * stride, (pix % w).float() * stride
    if wh.shape[1] != 4:
        chan = labels.unsqueeze(-1) * 4 + torch.arange(4)
        dist = wh.reshape(B, -1).gather(1, (chan * (h * w) + pix.unsqueeze(-1)).reshape(B, -1)).reshape(B, k, 4)
    else:
        dist = wh.reshape(B, 4, h * w).gather(2, pix.unsqueeze(1).expand(B, 4, k)).permute(0, 2, 1)
    dist = dist.float()
    boxes = torch.stack((xs - dist[..., 0], ys - dist[..., 1], xs + dist[..., 2], ys + dist[..., 3]), dim=-1)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, W)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, H)
    if orig_sizes is not None:
        s = torch.as_tensor(orig_sizes, dtype=torch.float32).reshape(B, 2)
        boxes = boxes * torch.stack((s[:, 1] / W, s[:, 0] / H, s[:, 1] / W, s[:, 0] / H), dim=-1).unsqueeze(1)
    keep = scores > score_threshold
    return [{"boxes": boxes[i][keep[i]], "scores": scores[i][keep[i]], "labels": labels[i][keep[i]]} for i in range(B)]


def random_maps():
    gen = torch.Generator().manual_seed(0)
    yield torch.randn(2, 5, 24, 32, generator=gen) * 2 - 4, torch.rand(2, 4, 24, 32, generator=gen) * 60
    # ties: plateaus of equal neighbouring logits (integer logits)
    yield torch.randint(-3, 3, (2, 4, 17, 23), generator=gen).float(), torch.rand(2, 16, 17, 23, generator=gen) * 60
    # ties in probability only: distinct logits above ~17 all give sigmoid 1.0 in float32
    yield torch.rand(1, 3, 9, 9, generator=gen) * 10 + 16, torch.rand(1, 4, 9, 9, generator=gen) * 60
    # thin maps, half precision, a NaN logit
    yield torch.randn(1, 2, 1, 7, generator=gen).half(), torch.rand(1, 4, 1, 7, generator=gen).half() * 60
    nan = torch.randn(1, 2, 6, 5, generator=gen)
    nan[0, 1, 2, 3] = float("nan")
    yield nan, torch.rand(1, 4, 6, 5, generator=gen) * 60


@pytest.mark.parametrize(
    "options", [{}, {"k": 7}, {"score_threshold": 0.3}, {"pool_size": 5}, {"pool_size": 1}, {"pool_size": 9}]
)
def test_matches_the_reference_formulation(options):
    for logits, wh in random_maps():
        B, _, h, w = logits.shape
        args = {"input_size": (4 * h, 4 * w), "orig_sizes": [(300, 200)] * B} | options
        got, want = decode_detections(logits, wh, **args), reference_decode(logits, wh, **args)
        for g, r in zip(got, want, strict=True):
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(g[key], r[key]), (key, options, tuple(logits.shape))


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_local_max_is_max_pool(size):
    x = torch.randint(0, 4, (2, 3, 6, 9)).float()  # many ties
    x[0, 0, 1, 1] = float("nan")
    want = torch.nn.functional.max_pool2d(x, size, stride=1, padding=size // 2)
    torch.testing.assert_close(local_max(x, size), want, rtol=0, atol=0, equal_nan=True)
