"""The one sample format every data set returns (see the package docstring), built in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from .errors import DataError

__all__ = ["check_index", "detection_sample", "load_rgb_image"]


def load_rgb_image(path: Path) -> tv_tensors.Image:
    """Read an image file with PIL as RGB -> ``tv_tensors.Image`` uint8 (3, H, W).

    Raises:
        DataError: the file is missing, unreadable, truncated or not an image (names the path).
    """
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")  # forces the full decode: truncated files fail here
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {e}") from None
    arr = np.array(rgb, dtype=np.uint8)  # (H, W, 3), writable copy
    return tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1).contiguous())


def check_index(index: int, length: int) -> int:
    """``index`` as a non-negative int in ``[0, length)`` (negative counts from the end)."""
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {length} images")
    return index


def detection_sample(
    image: tv_tensors.Image,
    *,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_iscrowd: Tensor,
    image_id: int,
    transforms: Callable | None,
) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """``(image, target)`` from an image and its untransformed annotations.

    gt_boxes (N, 4) xyxy original pixels, gt_labels (N,), gt_iscrowd (N,) (crowd / difficult = 1)
    go to the evaluation keys as they are; the training ``boxes``/``labels`` are the non-crowd ones,
    and ``transforms`` (applied last) move them with the image.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    gt_iscrowd = gt_iscrowd.to(torch.int64)
    keep = gt_iscrowd == 0
    target: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(gt_boxes[keep], format="XYXY", canvas_size=(h, w)),
        "labels": gt_labels[keep],
        "image_id": int(image_id),
        "orig_size": (h, w),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_iscrowd": gt_iscrowd,
    }
    if transforms is not None:
        image, target = transforms(image, target)
    return image, target
