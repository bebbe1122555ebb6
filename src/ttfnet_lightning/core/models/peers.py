"""torchvision's detectors as peers of TTFNet (issue 24): FCOS, RetinaNet and Faster R-CNN on a ResNet-18
FPN, and SSDlite on MobileNetV3-Large, built for the project's small inputs (e.g. 128 x 128 px with objects
of 8-90 px) and wrapped in :class:`PeerDetector`, which speaks the project's batch format and label
convention. Only torch and torchvision (the core layer).

What is set here, and why:

* **No resizing inside the detector.** torchvision's ``GeneralizedRCNNTransform`` resizes every image
  (800-1333 px by default). The data module already resizes to ``input_size``, so ``min_size`` and
  ``max_size`` are the input's shorter and longer side (scale factor exactly 1: the transform's bilinear
  resampling at scale 1 is the identity, tested) and SSD's fixed size is the input size.
* **Normalisation outside.** The module feeds ImageNet-normalised images (as TTFNet's), so the transform's
  ``image_mean``/``image_std`` are 0 and 1. torchvision's ImageNet backbone weights expect this same
  normalisation (SSDlite's [-1, 1] scaling belongs to its COCO-trained detector weights, not used here).
* **From scratch** (``pretrained_backbone=False``, the default: no weights on this machine): every backbone
  layer trainable and plain ``BatchNorm2d`` (training statistics). torchvision freezes BN
  (``FrozenBatchNorm2d``) only when ImageNet weights are loaded; frozen BN from random initialisation would
  be an affine identity with mean 0 / variance 1 statistics that never adapt. With
  ``pretrained_backbone=True`` it is torchvision's choice: ImageNet weights, ``FrozenBatchNorm2d`` and 3
  trainable ResNet stages (all 6 MobileNet stages for SSDlite, torchvision's default).
* **Pyramid and anchors for small objects.** The objects are about 4x smaller than COCO's at torchvision's
  800-1333 px, so every anchor size is torchvision's divided by 4, and the pyramid starts one level finer:
  P2-P6 (strides 4-64: torchvision's ``resnet_fpn_backbone`` layout, P6 a max-pool of P5) for the three
  ResNet detectors, so that the smallest anchors (8 px) sit on a stride-4 grid, TTFNet's output stride.
  RetinaNet: 3 scales x 3 ratios per level, sizes 2 x stride x {1, 2^(1/3), 2^(2/3)} (8-203 px; torchvision:
  4 x stride on P3-P7, 32-812 px). Faster R-CNN: RPN sizes 2 x stride (8-128 px; torchvision: 32-512 on
  P2-P6), ratios 0.5/1/2, RoI level assignment with canonical scale 224 / 4 = 56 px, and proposals (500 in
  training, 250 in evaluation) and sampled RoIs (128 per image) / 4 as well. FCOS: one point per
  location of size = stride (torchvision's convention), so its regression ranges are [0, 32], [32, 64],
  [64, 128], ... px of the largest box side distance on P2, P3, P4, ... (torchvision: [0, 64], [64, 128], ...
  on P3-P7). SSDlite: torchvision's SSD300 COCO box scales (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05 of the
  image side: 9-134 px at 128 px; its SSDlite default 0.2-0.95 would start at 26 px, above the smallest
  objects) with SSDlite's aspect ratios (2 and 3) on its six maps.
* **Heads.** FCOS: torchvision's (GroupNorm, GIoU). RetinaNet: torchvision's v2 head (GroupNorm, GIoU loss:
  ``retinanet_resnet50_fpn_v2``'s), so RetinaNet and FCOS differ in their assignment only. Faster R-CNN:
  the v1 heads (RPN 1 conv, two-FC box head). SSDlite: ``SSDLiteHead``.
* **Labels.** The project's labels are 0..C-1. FCOS and RetinaNet use them as they are (sigmoid classifiers,
  no background class); Faster R-CNN and SSD reserve label 0 for the background: C + 1 classes, labels
  shifted by 1 on the way in and back by 1 on the way out (:func:`label_offset`).

SSDlite at 128 px: its six feature maps are 8x8 (stride 16), 4x4, 2x2, 1x1, 1x1, 1x1 (the extra blocks'
stride-2 3x3 convs keep a 1x1 map at 1x1), all valid; at torchvision's 320 px they are 20, 10, 5, 3, 2, 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet18_Weights, mobilenet_v3_large, resnet18
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "PEERS",
    "PeerDetector",
    "build_peer",
    "label_offset",
    "to_torchvision_targets",
    "from_torchvision_detections",
    "feature_map_sizes",
]

#: torchvision detectors that train beside TTFNet (``model.method=<name>``); training.config.PEERS (tested equal)
PEERS = ("fcos", "retinanet", "ssdlite", "faster_rcnn")
# detectors whose label 0 is the background class (C + 1 outputs)
_BACKGROUND_CLASS = {"fcos": False, "retinanet": False, "ssdlite": True, "faster_rcnn": True}
# the anchor / regression scale of everything below: torchvision's sizes divided by this (see the docstring)
SCALE_DOWN = 4
_STRIDES = (4, 8, 16, 32, 64)  # P2-P6 of the ResNet-18 FPN
# torchvision's ssd300_vgg16 COCO default-box scales (fractions of the image side)
_SSD_SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]


def _check_name(name: str) -> None:
    if name not in PEERS:
        raise ValueError(f"peer detector must be one of {PEERS}, got {name!r}")


def label_offset(name: str) -> int:
    """What torchvision's ``name`` adds to the project's label (0..C-1): 1 where its label 0 is the
    background (Faster R-CNN, SSD), else 0 (FCOS, RetinaNet)."""
    _check_name(name)
    return int(_BACKGROUND_CLASS[name])


def to_torchvision_targets(boxes: Tensor, labels: Tensor, *, offset: int) -> list[dict[str, Tensor]]:
    """The project's padded targets -> torchvision's list of per-image targets.

    Args:
        boxes: (B, M, 4) xyxy boxes in input pixels.
        labels: (B, M) labels in [0, C), -1 for padding.
        offset: :func:`label_offset` of the detector.
    Returns:
        B dicts ``{"boxes": (N, 4) float32, "labels": (N,) int64}``, padding dropped and labels shifted by
        ``offset``; boxes without area (x2 <= x1 or y2 <= y1, which torchvision refuses in training) are
        dropped too. An image without boxes gets (0, 4) and (0,) tensors (torchvision trains on it as
        background only).
    """
    targets = []
    for b, l in zip(boxes, labels):
        b = b.float().reshape(-1, 4)
        keep = (l >= 0) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        targets.append({"boxes": b[keep], "labels": l[keep].long() + offset})
    return targets


def from_torchvision_detections(detections: Sequence[dict[str, Tensor]], *, offset: int) -> list[dict[str, Tensor]]:
    """torchvision's detections -> the project's: ``{boxes (N, 4) float32 xyxy, scores (N,) float32, labels
    (N,) int64}`` per image, labels shifted back by ``offset`` (:func:`label_offset`) to [0, C)."""
    return [
        {"boxes": d["boxes"].float(), "scores": d["scores"].float(), "labels": d["labels"].long() - offset}
        for d in detections
    ]


class PeerDetector(nn.Module):
    """A torchvision detector (``self.detector``) with the project's inputs and outputs.

    ``forward(images)`` in eval mode: (B, 3, H, W) normalised images -> B dicts ``{boxes, scores, labels}``
    in input pixels, labels in [0, C). In train mode ``forward(images, boxes, labels)`` with the padded
    targets of the batch (:func:`to_torchvision_targets`) -> torchvision's dict of loss terms.

    :meth:`compile` compiles the convolutional part (backbone and FPN) only: the rest of a torchvision detector
    (its transform, anchors, matching and post-processing) is Python over lists, where ``torch.compile``
    would break the graph at every step.
    """

    def __init__(self, name: str, detector: nn.Module, *, num_classes: int, input_size: Sequence[int]) -> None:
        super().__init__()
        self.name = name
        self.detector = detector
        self.num_classes = int(num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.label_offset = label_offset(name)

    def forward(
        self, images: Tensor, boxes: Tensor | None = None, labels: Tensor | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if boxes is None or labels is None:
                raise ValueError(f"{self.name} in train mode needs the batch's boxes and labels (it returns losses)")
            return self.detector(list(images), to_torchvision_targets(boxes, labels, offset=self.label_offset))
        return from_torchvision_detections(self.detector(list(images)), offset=self.label_offset)

    def compile(self, *args: Any, **kwargs: Any) -> None:  # (see the class docstring)
        self.detector.backbone.compile(*args, **kwargs)

    def to_channels_last(self) -> PeerDetector:
        """Weights in channels_last memory format, except SSDlite's extra blocks: on the CPU (oneDNN, torch
        2.14) the backward of a stride-2 3x3 convolution with channels_last weights under bf16 autocast returns
        NaN now and then (1-7 % of calls, measured) when its input is 1 x 1, which those blocks' inputs are at
        64-256 px; with contiguous weights it does not (and maps of 4 x 4 or less gain nothing from the
        format)."""
        self.to(memory_format=torch.channels_last)
        if self.name == "ssdlite":
            self.detector.backbone.extra.to(memory_format=torch.contiguous_format)
        return self


def build_peer(
    name: str,
    *,
    num_classes: int,
    input_size: Sequence[int],
    pretrained_backbone: bool = False,
    trainable_layers: int | None = None,
    score_threshold: float = 0.01,
    detections_per_img: int = 100,
    load_weights: bool = True,
) -> PeerDetector:
    """One of :data:`PEERS` for ``num_classes`` classes (labels 0..C-1) at ``input_size`` (H, W), wrapped
    in :class:`PeerDetector`.

    Args:
        name: ``fcos`` | ``retinanet`` | ``faster_rcnn`` (ResNet-18 FPN) | ``ssdlite`` (MobileNetV3-Large).
        num_classes: C, without background.
        input_size: (H, W) of the images the detector gets (it does not resize them).
        pretrained_backbone: torchvision's ImageNet weights for the backbone (downloaded by torchvision
            when not in its cache), with frozen BN; default False: from scratch, plain BN.
        load_weights: with ``pretrained_backbone``, False builds the pretrained architecture (frozen BN,
            frozen stages; SSDlite: the full tail) without loading the ImageNet weights: a checkpoint's
            weights replace them (``load_model``).
        trainable_layers: backbone stages trained (ResNet 0-5, MobileNet 0-6); None: all from scratch,
            torchvision's default (3 for ResNet, 6 for MobileNet) with ``pretrained_backbone``.
        score_threshold: detections kept above this score (strict ``>``).
        detections_per_img: at most this many detections per image (after NMS).
    """
    _check_name(name)
    H, W = (int(v) for v in input_size)
    common = {"score_threshold": float(score_threshold), "detections_per_img": int(detections_per_img)}
    weights = bool(pretrained_backbone and load_weights)
    if name == "ssdlite":
        detector = _ssdlite(num_classes + 1, (H, W), pretrained_backbone, weights, trainable_layers, **common)
    else:
        backbone = _resnet18_fpn(pretrained_backbone, weights, trainable_layers)
        build = {"fcos": _fcos, "retinanet": _retinanet, "faster_rcnn": _faster_rcnn}[name]
        detector = build(backbone, num_classes + label_offset(name), (H, W), **common)
    return PeerDetector(name, detector, num_classes=num_classes, input_size=(H, W))


# ------------------------------------------------------------------------------------ the builders
def _no_resize(size: tuple[int, int]) -> dict[str, Any]:
    """``GeneralizedRCNNTransform`` arguments that leave (H, W) images as they are (scale factor 1) and
    normalise nothing (the module feeds normalised images)."""
    H, W = size
    return {"min_size": min(H, W), "max_size": max(H, W), "image_mean": [0.0] * 3, "image_std": [1.0] * 3}


def _resnet18_fpn(pretrained: bool, load_weights: bool, trainable_layers: int | None) -> BackboneWithFPN:
    """ResNet-18 with an FPN on C2-C5 (P2-P5, 256 channels) and P6 = max-pool(P5): torchvision's
    ``resnet_fpn_backbone`` layout. From scratch: BatchNorm2d, all layers trained; pretrained: ImageNet
    weights, FrozenBatchNorm2d, ``trainable_layers`` (default 3) trained."""
    weights = ResNet18_Weights.IMAGENET1K_V1 if load_weights else None
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    layers = trainable_layers if trainable_layers is not None else (3 if pretrained else 5)
    body = resnet18(weights=weights, norm_layer=norm_layer)
    return _resnet_fpn_extractor(body, layers, returned_layers=[1, 2, 3, 4])


def _fcos(backbone: nn.Module, num_classes: int, size: tuple[int, int], **common: Any) -> FCOS:
    # one point per location, of the level's stride: FCOS's regression range of a level is [4, 8] x that size
    anchors = AnchorGenerator(tuple((s,) for s in _STRIDES), ((1.0,),) * len(_STRIDES))
    return FCOS(
        backbone,
        num_classes,
        anchor_generator=anchors,
        score_thresh=common["score_threshold"],
        detections_per_img=common["detections_per_img"],
        **_no_resize(size),
    )


def _retinanet(backbone: nn.Module, num_classes: int, size: tuple[int, int], **common: Any) -> RetinaNet:
    # torchvision: 4 x stride on P3-P7 (32 ... 512) x {2^0, 2^(1/3), 2^(2/3)}; here / 4 on P2-P6: 2 x stride
    sizes = tuple(tuple(int(2 * s * 2 ** (k / 3)) for k in range(3)) for s in _STRIDES)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(
        backbone.out_channels,
        anchors.num_anchors_per_location()[0],
        num_classes,
        norm_layer=partial(nn.GroupNorm, 32),
    )
    head.regression_head._loss_type = "giou"  # retinanet_resnet50_fpn_v2's head
    return RetinaNet(
        backbone,
        num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=common["score_threshold"],
        detections_per_img=common["detections_per_img"],
        **_no_resize(size),
    )


def _faster_rcnn(backbone: nn.Module, num_classes: int, size: tuple[int, int], **common: Any) -> FasterRCNN:
    # torchvision: 32 ... 512 (8 x stride) on P2-P6; here / 4: 2 x stride, 8 ... 128 px
    anchors = AnchorGenerator(tuple((2 * s,) for s in _STRIDES), ((0.5, 1.0, 2.0),) * len(_STRIDES))
    # RoIs of 56 px (torchvision: 224) go to P4, each halving one level finer (P2 below 28 px)
    roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, canonical_scale=224 // SCALE_DOWN)
    # proposals and sampled RoIs / 4 too: a 128 px image has 4092 anchors (1.7 % of an 800 x 1216 image's)
    # for as many objects (up to 10 here, 7 on average in COCO); torchvision's 512 RoIs per image through
    # the two-FC head (12544 -> 1024 -> 1024) were most of a training step's time
    n = SCALE_DOWN
    return FasterRCNN(
        backbone,
        num_classes,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=2000 // n,
        rpn_post_nms_top_n_train=2000 // n,
        rpn_pre_nms_top_n_test=1000 // n,
        rpn_post_nms_top_n_test=1000 // n,
        box_batch_size_per_image=512 // n,
        box_roi_pool=roi_pool,
        box_score_thresh=common["score_threshold"],
        box_detections_per_img=common["detections_per_img"],
        **_no_resize(size),
    )


def _ssdlite(
    num_classes: int,
    size: tuple[int, int],
    pretrained: bool,
    load_weights: bool,
    trainable_layers: int | None,
    *,
    score_threshold: float,
    detections_per_img: int,
) -> SSD:
    """torchvision's ``ssdlite320_mobilenet_v3_large`` with the input size (H, W) instead of its fixed 320 x
    320 and the SSD300 COCO box scales (see the module docstring); the rest as its builder: BN (eps 0.001,
    momentum 0.03), the reduced tail and normal init from scratch, NMS 0.55, 300 candidates."""
    weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if load_weights else None
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    body = mobilenet_v3_large(weights=weights, norm_layer=norm_layer, reduced_tail=not pretrained)
    if not pretrained:
        _normal_init(body)
    backbone = _mobilenet_extractor(body, 6 if trainable_layers is None else trainable_layers, norm_layer)
    H, W = size
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], scales=_SSD_SCALES)
    out_channels = det_utils.retrieve_out_channels(backbone, (W, H))  # torchvision's sizes here are (W, H)
    head = SSDLiteHead(out_channels, anchors.num_anchors_per_location(), num_classes, norm_layer)
    no_resize = _no_resize(size)
    return SSD(
        backbone,
        anchors,
        (W, H),
        num_classes,
        image_mean=no_resize["image_mean"],
        image_std=no_resize["image_std"],
        head=head,
        score_thresh=score_threshold,
        nms_thresh=0.55,
        detections_per_img=detections_per_img,
        topk_candidates=300,
    )


@torch.no_grad()
def feature_map_sizes(detector: PeerDetector) -> list[tuple[int, int]]:
    """(h, w) of each feature map the detector's head sees at its input size (a forward of the backbone)."""
    H, W = detector.input_size
    was_training = detector.training
    detector.eval()
    try:
        features = detector.detector.backbone(torch.zeros(1, 3, H, W))
    finally:
        detector.train(was_training)
    maps = features.values() if isinstance(features, dict) else features
    return [tuple(int(v) for v in f.shape[-2:]) for f in maps]
