"""Multi-scale training (``multiscale=standard``; settings :class:`~ttfnet_lightning.training.config.MultiScaleConfig`;
off by default, the paper's recipe): each training batch is resized to the input size x one of ``scales``
(rounded to multiples of 32; 128 px with ``[0.75, 1.0, 1.25]``: 96, 128 or 160), its boxes with it, before its
targets are encoded; validation, prediction and export stay at the input size.

Where it happens: on the training device, in :meth:`TTFNetModule.on_after_batch_transfer
<ttfnet_lightning.training.lit_module.TTFNetModule.on_after_batch_transfer>`, after normalisation and before
the target encoder, which takes its output size from the batch's image shape (so the targets are those of the
new size without more code). Why there and not in a data module's transforms or collate:

* one place for every data source (shapes, COCO, VOC, streams): no data module, worker, render cache or data
  fingerprint changes, and a batch keeps one size (what ``collate_detection`` needs);
* the size of a step is a pure function of (seed, step) (:func:`size_index`): every DDP rank draws the same size
  without communicating, a resumed run the same sizes as an uninterrupted one, and the data loader's random
  streams (shuffling, augmentation) are untouched, so a run with and one without multi-scale see the same images
  in the same order;
* one ``interpolate`` of the batch on the GPU: mmdetection 3's ``BatchSyncRandomResize`` and YOLOX resize the
  batch the same way.

The price: the images are resampled from the loader's input-size images (bilinear, no anti-aliasing, as those
two), not from the originals, so a larger size is an upsampled image, not a sharper one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["train_sizes", "size_index", "resize_batch", "MultiScale", "STRIDE"]

STRIDE = 32  # the backbone's output stride: input sizes are multiples of it


def train_sizes(input_size: Sequence[int], scales: Sequence[float]) -> list[tuple[int, int]]:
    """The training sizes (H, W) of ``input_size`` (H, W) x each scale, each side rounded to a multiple of 32
    (halves rounded up; at least 32); ``[]`` for no scales (multi-scale off).

    Raises:
        ValueError: a scale is not positive, or two scales give the same size (naming ``multiscale.scales``)."""
    H, W = (int(s) for s in input_size)
    sizes: list[tuple[int, int]] = []
    for s in scales:
        if not float(s) > 0:
            raise ValueError(f"multiscale.scales must be positive numbers, got {list(scales)}")
        # each side to the nearest multiple of 32 (halves up: 0.75 x 64 = 48 -> 64), at least 32
        h, w = (max(STRIDE, math.floor(side * float(s) / STRIDE + 0.5) * STRIDE) for side in (H, W))
        sizes.append((h, w))
    if len(set(sizes)) != len(sizes):
        raise ValueError(
            f"multiscale.scales {list(scales)} give the sizes {sizes} at the input size {H}x{W} (sides rounded to "
            f"multiples of {STRIDE}): two scales give the same size; use scales further apart"
        )
    return sizes


def size_index(step: int, *, count: int, seed: int, every_n_steps: int = 1) -> int:
    """The index (of ``count`` sizes) of optimiser step ``step``'s size: uniform, the same for every step of one
    block of ``every_n_steps``, a pure function of (seed, step // every_n_steps)."""
    return random.Random(f"multiscale:{int(seed)}:{int(step) // max(int(every_n_steps), 1)}").randrange(count)


def resize_batch(batch: Mapping[str, Any], size: Sequence[int]) -> dict[str, Any]:
    """``batch`` with its float ``images`` (B, 3, H, W) resized to ``size`` (h, w) (bilinear) and its ``boxes``
    (B, M, 4) xyxy scaled with them (padding rows stay zero); ``labels`` and ``meta`` as they are (``meta``
    describes the loaded sample). The same batch (a copy of the dict) when the size is already ``size``."""
    images: Tensor = batch["images"]
    H, W = images.shape[-2:]
    h, w = int(size[0]), int(size[1])
    out = dict(batch)
    if (h, w) == (H, W):
        return out
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    out["images"] = resized.contiguous(memory_format=torch.channels_last) if channels_last else resized
    boxes: Tensor = batch["boxes"]
    out["boxes"] = boxes * boxes.new_tensor([w / W, h / H, w / W, h / H])
    return out


class MultiScale:
    """The training batches' sizes of a module (its ``multiscale`` group, the input size) and their resize.

    Args:
        input_size: (H, W) of the data.
        scales: the scales of the input size (:func:`train_sizes`).
        seed: of the size sequence (:func:`size_index`).
        every_n_steps: a new size every N optimiser steps.
    """

    def __init__(self, *, input_size: Sequence[int], scales: Sequence[float], seed: int, every_n_steps: int = 1):
        if int(every_n_steps) != every_n_steps or every_n_steps < 1:
            raise ValueError(f"multiscale.every_n_steps must be an integer >= 1, got {every_n_steps}")
        self.sizes = train_sizes(input_size, scales)
        self.seed, self.every_n_steps = int(seed), int(every_n_steps)

    @classmethod
    def from_group(cls, group: Mapping[str, Any], input_size: Sequence[int]) -> MultiScale | None:
        """From the module's ``multiscale`` group; None when its ``scales`` are empty (off)."""
        if not group.get("scales"):
            return None
        seed = group.get("seed")
        return cls(
            input_size=input_size,
            scales=list(group["scales"]),
            seed=0 if seed is None else int(seed),
            every_n_steps=int(group.get("every_n_steps", 1)),
        )

    def size_at(self, step: int) -> tuple[int, int]:
        """(h, w) of the batches of optimiser step ``step``."""
        return self.sizes[size_index(step, count=len(self.sizes), seed=self.seed, every_n_steps=self.every_n_steps)]

    def __call__(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        """``batch`` (normalised, before its targets are encoded) at the size of optimiser step ``step``."""
        return resize_batch(batch, self.size_at(step))
