"""Detection transforms (``torchvision.transforms.v2``) applied inside the data sets.

Every transform takes and returns ``(image, target)``: ``image`` a ``tv_tensors.Image`` uint8
(3, H, W) and ``target`` a dict whose ``boxes`` are ``tv_tensors.BoundingBoxes`` (M, 4) xyxy, so
geometric operations move the boxes with the pixels, and whose ``labels`` (M,) are kept in step
with the boxes by :class:`~torchvision.transforms.v2.SanitizeBoundingBoxes`. The evaluation keys
``gt_boxes`` / ``gt_labels`` / ``gt_iscrowd`` are plain tensors: v2 only treats a plain tensor as
an image when the sample holds no ``tv_tensors.Image``, so they pass through untouched (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ttfnet_lightning.data.released_augment import (
    ReleasedExpand,
    ReleasedMinIoURandomCrop,
    ReleasedPhotoMetricDistortion,
)

__all__ = ["AUGMENT_STYLES", "build_transforms", "get_labels", "IoUCropIfBoxes", "as_size"]

#: Mean pixel of ImageNet (RGB, 0-255), used as the zoom-out fill.
MEAN_PIXEL = (124, 116, 104)
#: ``augment_style`` values: the released TTFNet code's augmentation (:mod:`.released_augment`, the
#: paper's "aug 10x") or torchvision's SSD-style variants of it.
AUGMENT_STYLES = ("released", "torchvision")


def as_size(size: int | Sequence[int], *, name: str = "input_size", multiple: int = 1) -> tuple[int, int]:
    """``(H, W)`` from an int or a 2-sequence (Hydra passes lists), checked positive and a
    multiple of ``multiple``; raises ``ValueError`` with a clear message otherwise."""
    if isinstance(size, int):
        h = w = size
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or (H, W), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name}={(h, w)} must be a multiple of {multiple} in both dimensions "
            f"(the network downsamples by {multiple}); e.g. use "
            f"{(max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple))}"
        )
    return h, w


def get_labels(inputs: Any) -> torch.Tensor:
    """``labels_getter`` for :class:`SanitizeBoundingBoxes`: ``target["labels"]`` of an
    ``(image, target)`` sample (module-level so the pipeline pickles for worker processes)."""
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return target["labels"]


class IoUCropIfBoxes(v2.RandomIoUCrop):
    """SSD minimum-IoU random crop that leaves samples without boxes unchanged (the stock
    ``RandomIoUCrop`` would spin through its trials looking for a box to keep)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        target = sample[1] if isinstance(sample, (tuple, list)) and len(sample) > 1 else None
        if isinstance(target, dict) and len(target.get("boxes", ())) == 0:
            return sample
        return super().forward(*inputs)


def build_transforms(
    *,
    input_size: int | Sequence[int],
    train: bool,
    augment: bool = False,
    augment_style: str = "released",
    hflip: float = 0.5,
    fill: Sequence[int] = MEAN_PIXEL,
) -> v2.Compose:
    """Detection pipeline for ``(image, target)`` samples.

    * ``train=True``: [``augment``: photometric distortion, zoom-out onto a ``fill`` canvas up to 4x
      (p=0.5), min-IoU crop: the released code's (``augment_style="released"``, see
      :mod:`~ttfnet_lightning.data.released_augment`) or torchvision's ``RandomPhotometricDistort``
      (p=0.5), ``RandomZoomOut`` and ``RandomIoUCrop`` (``"torchvision"``)], resize to ``input_size``
      (aspect ratio NOT kept), horizontal flip with probability ``hflip``, clamp boxes to the image,
      drop boxes smaller than 1 px (with their labels).
    * ``train=False``: resize to ``input_size`` only (evaluation uses the untouched ``gt_*``).

    Args:
        input_size: (H, W) network input size (or an int for a square).
        train: training or evaluation pipeline.
        augment: add the SSD-style augmentations (training only).
        augment_style: ``"released"`` or ``"torchvision"`` (:data:`AUGMENT_STYLES`).
        hflip: horizontal flip probability (training only; 0 disables it).
        fill: RGB 0-255 canvas colour of the zoom-out.
    Returns:
        a ``v2.Compose`` mapping ``(image (3, h, w), target)`` to ``(image (3, H, W), target)``.
    """
    size = list(as_size(input_size))
    if augment_style not in AUGMENT_STYLES:
        raise ValueError(f"augment_style must be one of {AUGMENT_STYLES}, got {augment_style!r}")
    if not train:
        return v2.Compose([v2.Resize(size, antialias=True)])
    ops: list[Any] = []
    if augment and augment_style == "released":
        ops += [ReleasedPhotoMetricDistortion(), ReleasedExpand(mean=fill), ReleasedMinIoURandomCrop()]
    elif augment:
        ops += [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill={tv_tensors.Image: list(fill), "others": 0}, side_range=(1.0, 4.0), p=0.5),
            IoUCropIfBoxes(),
        ]
    ops.append(v2.Resize(size, antialias=True))
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=hflip))
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1, labels_getter=get_labels)]
    return v2.Compose(ops)
