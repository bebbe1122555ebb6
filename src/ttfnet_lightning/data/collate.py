"""Batching of detection samples: the one batch format every data module produces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.sample import BadImage, box_area

__all__ = ["collate_detection"]


def _plain(x: Any, dtype: torch.dtype) -> Tensor:
    """A plain CPU ``torch.Tensor`` (no tv_tensor subclass) of ``dtype``."""
    t = x.as_subclass(Tensor) if isinstance(x, Tensor) else torch.as_tensor(x)
    return t.to(device="cpu", dtype=dtype)


def collate_detection(samples: Sequence[tuple[Tensor, dict[str, Any]] | BadImage]) -> dict[str, Any]:
    """Stack ``(image, target)`` samples into a padded batch; :class:`BadImage` markers (images an
    evaluation set skipped) are dropped, so B may be smaller than the loader's batch size.

    Args:
        samples: samples; ``image`` uint8 (3, H, W) (all the same H x W, i.e. after resizing);
            ``target`` with ``boxes`` (M_i, 4) xyxy input pixels, ``labels`` (M_i,), ``image_id``,
            ``orig_size`` (h, w), and optionally ``gt_boxes`` (N_i, 4) / ``gt_labels`` (N_i,) /
            ``gt_iscrowd`` (N_i,) / ``gt_area`` (N_i,) in original-image pixels.
    Returns:
        dict with
        ``images`` uint8 (B, 3, H, W) (not normalised: that happens on the device),
        ``boxes`` float32 (B, M, 4), zero padded, M = max(1, max_i M_i),
        ``labels`` int64 (B, M), padded with -1,
        ``meta`` list of B dicts: ``image_id``, ``orig_size`` (h, w), ``input_size`` (H, W),
        ``gt_boxes`` float32 (N_i, 4), ``gt_labels`` int64 (N_i,), ``gt_iscrowd`` int64 (N_i,),
        ``gt_area`` float32 (N_i,) (default: box area) (CPU tensors; empty when the sample has no
        ground truth),
        ``excluded`` the dropped :class:`BadImage` markers.
    Raises:
        ValueError: an empty batch, or images of different sizes / not (3, H, W) uint8.
        DataError: every sample of the batch is a bad image (names them).
    """
    if len(samples) == 0:
        raise ValueError("collate_detection: got an empty batch")
    excluded = [s for s in samples if isinstance(s, BadImage)]
    samples = [s for s in samples if not isinstance(s, BadImage)]
    if not samples:
        raise DataError(
            f"every image of this batch is unreadable ({', '.join(b.path for b in excluded)}); enable the "
            f"pre-flight check (data.datamodule.preflight=true) to exclude bad images before the loader is built"
        )
    images = [img.as_subclass(Tensor) if isinstance(img, Tensor) else torch.as_tensor(img) for img, _ in samples]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(
            f"collate_detection: images in a batch must all have the same size (resize them to the "
            f"input size in the data set's transforms); got shapes {sorted(shapes)}"
        )
    shape = shapes.pop()
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"collate_detection: images must be (3, H, W), got {shape}")
    if images[0].dtype != torch.uint8:
        raise ValueError(f"collate_detection: images must be uint8, got {images[0].dtype}")
    batch_images = torch.stack(images)
    input_size = (int(shape[1]), int(shape[2]))

    boxes_list = [_plain(t["boxes"], torch.float32).reshape(-1, 4) for _, t in samples]
    labels_list = [_plain(t["labels"], torch.int64).reshape(-1) for _, t in samples]
    m = max(1, max(len(b) for b in boxes_list))
    boxes = torch.zeros(len(samples), m, 4, dtype=torch.float32)
    labels = torch.full((len(samples), m), -1, dtype=torch.int64)
    for i, (b, lab) in enumerate(zip(boxes_list, labels_list)):
        if len(b) != len(lab):
            raise ValueError(f"collate_detection: sample {i} has {len(b)} boxes but {len(lab)} labels")
        boxes[i, : len(b)] = b
        labels[i, : len(lab)] = lab

    meta = []
    for _, t in samples:
        gt_boxes = _plain(t.get("gt_boxes", torch.zeros(0, 4)), torch.float32).reshape(-1, 4)
        n = len(gt_boxes)
        orig = t.get("orig_size", input_size)
        meta.append(
            {
                "image_id": int(t.get("image_id", -1)),
                "orig_size": (int(orig[0]), int(orig[1])),
                "input_size": input_size,
                "gt_boxes": gt_boxes,
                "gt_labels": _plain(t.get("gt_labels", torch.zeros(n)), torch.int64).reshape(-1),
                "gt_iscrowd": _plain(t.get("gt_iscrowd", torch.zeros(n)), torch.int64).reshape(-1),
                "gt_area": _plain(t["gt_area"], torch.float32).reshape(-1)
                if "gt_area" in t
                else torch.from_numpy(box_area(gt_boxes.numpy())),
            }
        )
    return {"images": batch_images, "boxes": boxes, "labels": labels, "meta": meta, "excluded": excluded}
