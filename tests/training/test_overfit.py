"""A tiny TTFNet over-fits two synthetic images in a couple of hundred CPU steps."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from ttfnet_lightning.core.decode import decode_detections
from ttfnet_lightning.core.losses import TTFNetLoss
from ttfnet_lightning.core.models import TTFNet
from ttfnet_lightning.core.targets import encode_targets


def test_overfit_two_images():
    torch.manual_seed(0)
    S = 64
    boxes = torch.tensor(
        [[[8.0, 10.0, 36.0, 30.0], [40.0, 36.0, 60.0, 62.0]], [[16.0, 16.0, 52.0, 48.0], [0.0, 0.0, 0.0, 0.0]]]
    )
    labels = torch.tensor([[0, 1], [1, -1]])
    images = torch.rand(2, 3, S, S) * 0.2
    for b in range(2):  # paint the objects so there is something to see
        for m in range(2):
            if labels[b, m] >= 0:
                x1, y1, x2, y2 = boxes[b, m].long().tolist()
                images[b, labels[b, m] + 1, y1:y2, x1:x2] = 1.0
    net = TTFNet(num_classes=2, backbone="r18", deformable=False, frozen_stages=-1)
    loss_fn = TTFNetLoss()
    targets = encode_targets(boxes, labels, num_classes=2, output_size=(S // 4, S // 4))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    net.train()
    for _ in range(200):
        out = loss_fn(*net(images), *targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert min(losses[-10:]) < losses[0] / 10, losses[::20]
    net.eval()
    with torch.no_grad():
        dets = decode_detections(*net(images), input_size=(S, S))
    for b in range(2):
        gt = boxes[b][labels[b] >= 0]
        top = dets[b]["boxes"][: len(gt) + 2]
        best = box_iou(gt, top).max(dim=1).values
        assert (best > 0.5).all(), (b, best, dets[b]["boxes"][:4], dets[b]["scores"][:4])
        assert dets[b]["labels"][0].item() in labels[b].tolist()
