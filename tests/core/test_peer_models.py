"""torchvision's detectors as built for the project (``core/models/peers.py``): each builds at 128 x 128 px,
trains on a batch with boxes and on images without any, detects inside the image, leaves the images unresized,
and speaks the project's labels 0..C-1 whatever torchvision's convention."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ttfnet_lightning.core.models.peers import (
    PEERS,
    PeerDetector,
    build_peer,
    feature_map_sizes,
    from_torchvision_detections,
    label_offset,
    to_torchvision_targets,
)

C, SIZE = 3, (128, 128)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _targets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images: three boxes (one of them padding) and none (all padding)."""
    boxes = torch.tensor(
        [[[10.0, 12.0, 40.0, 50.0], [60.0, 64.0, 120.0, 100.0], [0.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]] * 3]
    )
    labels = torch.tensor([[0, 2, -1], [-1, -1, -1]])
    return boxes, labels


@pytest.fixture(scope="module", params=PEERS)
def peer(request) -> PeerDetector:
    torch.manual_seed(0)
    return build_peer(request.param, num_classes=C, input_size=SIZE)


def test_peers_are_the_configs_peers():
    from ttfnet_lightning.training.config import PEERS as CONFIG_PEERS

    assert CONFIG_PEERS == PEERS == ("fcos", "retinanet", "ssdlite", "faster_rcnn")


def test_train_mode_losses_are_finite_with_boxes_and_without(peer):
    peer.train()
    boxes, labels = _targets()
    losses = peer(_images(2), boxes, labels)  # one image with two boxes, one without any
    assert losses and all(bool(torch.isfinite(v)) for v in losses.values()), losses
    total = sum(losses.values())
    total.backward()
    grads = [p.grad for p in peer.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    peer.zero_grad()
    empty = peer(_images(2, seed=1), boxes[1:].expand(2, -1, -1), labels[1:].expand(2, -1))  # no box at all
    assert all(bool(torch.isfinite(v)) for v in empty.values()), empty
    with pytest.raises(ValueError, match="needs the batch's boxes and labels"):
        peer(_images(1))


@torch.no_grad()
def test_eval_mode_detects_inside_the_image_with_the_projects_labels(peer):
    peer.eval()
    dets = peer(_images(2))
    assert len(dets) == 2
    for d in dets:
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64
        n = len(d["boxes"])
        assert 0 < n <= 100 and d["scores"].shape == (n,) and d["labels"].shape == (n,)  # untrained: many low scores
        assert bool((d["boxes"] >= 0).all()) and bool((d["boxes"][:, 2] <= SIZE[1]).all())
        assert bool((d["boxes"][:, 3] <= SIZE[0]).all())
        assert bool((d["labels"] >= 0).all()) and bool((d["labels"] < C).all())
        assert bool((d["scores"] > 0.01).all()) and bool((d["scores"] <= 1).all())


@torch.no_grad()
def test_images_are_not_resized(peer):
    """The data module resizes; torchvision's transform leaves the images (already normalised) as they are."""
    images = _images(2)
    for train in (True, False):
        peer.train(train)
        image_list, _ = peer.detector.transform(list(images))
        assert image_list.image_sizes == [SIZE, SIZE]
        assert torch.equal(image_list.tensors, images)  # no resampling, no normalisation, no padding


def test_each_detectors_class_outputs_and_label_shift():
    """C outputs for the sigmoid classifiers (FCOS, RetinaNet), C + 1 where label 0 is the background."""
    assert {name: label_offset(name) for name in PEERS} == {"fcos": 0, "retinanet": 0, "ssdlite": 1, "faster_rcnn": 1}
    with pytest.raises(ValueError, match="must be one of"):
        label_offset("yolo")
    fcos = build_peer("fcos", num_classes=C, input_size=SIZE).detector
    assert fcos.head.classification_head.num_classes == C
    retina = build_peer("retinanet", num_classes=C, input_size=SIZE).detector
    assert retina.head.classification_head.num_classes == C
    frcnn = build_peer("faster_rcnn", num_classes=C, input_size=SIZE).detector
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == C + 1
    ssd = build_peer("ssdlite", num_classes=C, input_size=SIZE).detector
    assert ssd.head.classification_head.num_columns == C + 1


def test_target_and_detection_conversion():
    boxes, labels = _targets()
    boxes[0, 2] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # a box without width (not padding): torchvision refuses it
    labels[0, 2] = 1
    for offset in (0, 1):
        targets = to_torchvision_targets(boxes, labels, offset=offset)
        assert len(targets) == 2
        assert torch.equal(targets[0]["boxes"], boxes[0, :2]) and targets[0]["labels"].tolist() == [offset, 2 + offset]
        assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)
        assert targets[1]["labels"].dtype == torch.int64 and targets[0]["boxes"].dtype == torch.float32
        back = from_torchvision_detections(
            [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]} for t in targets],
            offset=offset,
        )
        assert back[0]["labels"].tolist() == [0, 2] and back[1]["labels"].tolist() == []


class _Recorder(nn.Module):
    """A stand-in torchvision detector: records its targets, returns label 1 (torchvision's) in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def forward(self, images, targets=None):
        if self.training:
            self.seen.append(targets)
            return {"loss": torch.tensor(0.0)}
        box = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        return [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])} for _ in images]


@pytest.mark.parametrize("name", PEERS)
def test_a_trained_label_comes_back_as_the_same_label(name):
    """Label 0 goes to torchvision as its own label 0 (FCOS, RetinaNet) or 1 (Faster R-CNN, SSD: 0 is the
    background), and torchvision's label comes back as the project's."""
    wrapped = PeerDetector(name, _Recorder(), num_classes=C, input_size=SIZE)
    boxes, labels = _targets()
    wrapped.train()(_images(2), boxes, labels)
    sent = wrapped.detector.seen[0]
    assert sent[0]["labels"].tolist() == [0 + label_offset(name), 2 + label_offset(name)]
    out = wrapped.eval()(_images(1))
    assert out[0]["labels"].tolist() == [1 - label_offset(name)]


def test_ssdlite_feature_maps_at_128_px():
    ssd = build_peer("ssdlite", num_classes=C, input_size=SIZE)
    assert feature_map_sizes(ssd) == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    assert len(ssd.detector.anchor_generator.aspect_ratios) == 6
    fpn = build_peer("fcos", num_classes=C, input_size=SIZE)
    assert feature_map_sizes(fpn) == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # P2-P6


def test_from_scratch_bn_and_the_pretrained_architecture_without_download():
    """From scratch: BatchNorm2d, everything trained; pretrained: torchvision's frozen BN and 3 trained stages
    (built here without the ImageNet weights, as load_model builds it: the weights come from the checkpoint)."""
    scratch = build_peer("retinanet", num_classes=C, input_size=SIZE)
    body = scratch.detector.backbone.body
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert all(p.requires_grad for p in scratch.parameters())
    pre = build_peer("retinanet", num_classes=C, input_size=SIZE, pretrained_backbone=True, load_weights=False)
    body = pre.detector.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert not body.conv1.weight.requires_grad and not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    ssd = build_peer("ssdlite", num_classes=C, input_size=SIZE, pretrained_backbone=True, load_weights=False)
    shapes = lambda m: [tuple(v.shape) for v in m.state_dict().values()]  # noqa: E731
    assert shapes(ssd) != shapes(build_peer("ssdlite", num_classes=C, input_size=SIZE))  # the full tail (960 channels)


def test_channels_last_keeps_ssdlites_small_maps_contiguous():
    ssd = build_peer("ssdlite", num_classes=C, input_size=SIZE).to_channels_last()
    first = ssd.detector.backbone.features[0][0][0].weight
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    for m in ssd.detector.backbone.extra.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.is_contiguous()
    fcos = build_peer("fcos", num_classes=C, input_size=SIZE).to_channels_last()
    assert fcos.detector.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
