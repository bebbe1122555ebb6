"""Decoder: perfect maps decode back to the encoded boxes."""

from __future__ import annotations

import pytest
import torch

from ttfnet_lightning.decode import decode_detections, grid_boxes
from ttfnet_lightning.targets import encode_targets


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
