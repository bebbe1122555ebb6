"""Decoding: network maps -> per-image detections ``{boxes, scores, labels}`` (xyxy pixels).

Shapes: B images, C classes, h x w output map, K top detections, N kept detections of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "BOX_CONVENTIONS",
    "boxes_from_distances",
    "grid_boxes",
    "is_released_convention",
    "local_max",
    "decode_detections",
    "coco_results",
]

#: how the network's boxes are read (``model.box_convention``): ``continuous`` (this library: a box's
#: x2 = x1 + w, clamped to [0, W]) or ``released`` (mmdetection 1.x, the released TTFNet: the network
#: regresses x2 = x1 + w - 1 (the last pixel), clamped to [0, W - 1]; decoded boxes get x2 + 1 after
#: the rescale, so that x2 - x1 is the width the released code writes to COCO results)
BOX_CONVENTIONS = ("continuous", "released")


def is_released_convention(box_convention: str) -> bool:
    """``True`` for ``"released"``, ``False`` for ``"continuous"``; any other name raises ValueError."""
    if box_convention not in BOX_CONVENTIONS:
        raise ValueError(f"box_convention must be one of {BOX_CONVENTIONS}, got {box_convention!r}")
    return box_convention == "released"


def boxes_from_distances(x: Tensor, y: Tensor, l: Tensor, t: Tensor, r: Tensor, b: Tensor, *, dim: int = -1) -> Tensor:
    """Equation (5) of the paper: the box ``(x - l, y - t, x + r, y + b)`` of the prediction at
    input-pixel position ``(x, y)`` (grid cell times the stride: no half-stride offset, the same in
    training and test, as the released code), stacked along ``dim``."""
    return torch.stack((x - l, y - t, x + r, y + b), dim=dim)


def grid_boxes(distances: Tensor, stride: int) -> Tensor:
    """Turn per-pixel distances (l, t, r, b) into boxes, as equation (5) of the paper.

    The prediction at grid cell (i, j) decodes at ``(x, y) = (j*r, i*r)`` (:func:`boxes_from_distances`).

    Args:
        distances: (..., 4, h, w) distances in input pixels.
        stride: output stride r.
    Returns:
        (..., 4, h, w) boxes x1, y1, x2, y2 in input pixels.
    """
    h, w = distances.shape[-2:]
    xs = torch.arange(w, device=distances.device, dtype=distances.dtype) * stride
    ys = torch.arange(h, device=distances.device, dtype=distances.dtype) * stride
    x = xs.view(1, w).expand(h, w)
    y = ys.view(h, 1).expand(h, w)
    return boxes_from_distances(x, y, *distances.unbind(dim=-3), dim=-3)


def _running_max(x: Tensor, pad: int, dim: int) -> Tensor:
    """Maximum over the window ``[i - pad, i + pad]`` along ``dim`` (clipped at the ends)."""
    n = x.shape[dim]
    out = torch.empty_like(x)
    if n == 1:
        return out.copy_(x)
    # out[i] = max(x[i], x[i+1]); the last element has no right neighbour
    torch.maximum(x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), out=out.narrow(dim, 0, n - 1))
    out.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1))
    for d in range(1, pad + 1):
        if d < n:
            if d > 1:  # right neighbours at distance d
                torch.maximum(out.narrow(dim, 0, n - d), x.narrow(dim, d, n - d), out=out.narrow(dim, 0, n - d))
            # left neighbours at distance d
            torch.maximum(out.narrow(dim, d, n - d), x.narrow(dim, 0, n - d), out=out.narrow(dim, d, n - d))
    return out


def local_max(x: Tensor, size: int = 3) -> Tensor:
    """``F.max_pool2d(x, size, stride=1, padding=size // 2)`` of a 4-D map for odd ``size``, bit
    for bit (a max is exact; NaN propagates as there), as two separable running maxima of shifted
    views (along the width, then the height).

    PyTorch's CPU max-pool kernel for contiguous NCHW maps is slow: 25-90 ms for the
    (1, 80, 128, 128) heatmap of a 512 px image on a loaded 2-core machine, most of the decoder's
    time; this takes under 1 ms there. Even sizes fall back to ``F.max_pool2d`` (whose output is
    then one pixel smaller, as before).
    """
    if size % 2 == 0 or x.dim() != 4:
        return F.max_pool2d(x, size, stride=1, padding=(size - 1) // 2)
    if size == 1:
        return x.clone()
    pad = size // 2
    return _running_max(_running_max(x, pad, 3), pad, 2)


@torch.no_grad()
def decode_detections(
    heatmap_logits: Tensor,
    wh: Tensor,
    *,
    input_size: tuple[int, int],
    orig_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
    stride: int = 4,
    k: int = 100,
    score_threshold: float = 0.01,
    pool_size: int = 3,
    box_convention: str = "continuous",
) -> list[dict[str, Tensor]]:
    """Decode TTFNet outputs into detections, one dict per image (torchmetrics' mAP format).

    sigmoid -> keep 3x3 local maxima (max-pool) -> top-K over all classes and positions ->
    gather the box at each peak -> clamp to the input image -> rescale to the original size ->
    drop scores <= threshold. No NMS (the paper's test procedure). Everything is batched; only the
    final split by the score threshold is per image.

    Args:
        heatmap_logits: (B, C, h, w) raw heatmap logits.
        wh: (B, 4, h, w) distances (l, t, r, b) in input pixels, or (B, 4*C, h, w) class-aware.
        input_size: (H, W) of the network input.
        orig_sizes: B pairs (h0, w0) to rescale to; None keeps input pixels.
        stride: output stride.
        k: detections kept per image before the threshold (100).
        score_threshold: minimum score (0.01, strict ``>`` as in the released code).
        pool_size: max-pool window for peak keeping (3).
        box_convention: ``"continuous"`` (clamp to [0, W] x [0, H]) or ``"released"`` (the released
            models': clamp to [0, W - 1] x [0, H - 1] in input pixels, then x2 + 1 and y2 + 1 after the
            rescale); see :data:`BOX_CONVENTIONS`.
    Returns:
        B dicts with ``boxes`` (N, 4) float xyxy, ``scores`` (N,), ``labels`` (N,) int64.
    """
    B, C, h, w = heatmap_logits.shape
    H, W = int(input_size[0]), int(input_size[1])
    released = is_released_convention(box_convention)
    heat = heatmap_logits.float().sigmoid()  # a fresh (B, C, h, w) buffer, changed in place below
    # heat * (max_pool(heat) == heat), without a bool mask (multiplying by a bool tensor converts
    # it first, which costs more than the rest of the peak test)
    heat.mul_(local_max(heat, pool_size).eq_(heat))
    k = min(k, C * h * w)
    scores, idx = heat.reshape(B, -1).topk(k, dim=1)  # (B, K)
    labels = idx // (h * w)
    pix = idx % (h * w)
    # float32 whatever wh's dtype: bf16 holds whole numbers exactly only up to 256 (maps over 1024 px wide)
    ys = (pix // w).to(torch.float32) * stride
    xs = (pix % w).to(torch.float32) * stride

    class_aware = wh.shape[1] != 4
    if class_aware:
        # channel of class c, side s: 4*c + s
        chan = labels.unsqueeze(-1) * 4 + torch.arange(4, device=wh.device)  # (B, K, 4)
        flat = chan * (h * w) + pix.unsqueeze(-1)
        dist = wh.reshape(B, -1).gather(1, flat.reshape(B, -1)).reshape(B, k, 4)
    else:
        dist = wh.reshape(B, 4, h * w).gather(2, pix.unsqueeze(1).expand(B, 4, k)).permute(0, 2, 1)
    dist = dist.float()
    boxes = boxes_from_distances(xs, ys, *dist.unbind(dim=-1))
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, W - 1 if released else W)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, H - 1 if released else H)
    if orig_sizes is not None:
        sizes = torch.as_tensor(orig_sizes, dtype=torch.float32, device=boxes.device).reshape(B, 2)
        scale = torch.stack((sizes[:, 1] / W, sizes[:, 0] / H, sizes[:, 1] / W, sizes[:, 0] / H), dim=-1)
        boxes = boxes * scale.unsqueeze(1)
    if released:  # the last pixel x2 (x2 = x1 + w - 1) -> the corner after it, as the released code's COCO width
        boxes[..., 2:] += 1
    keep = scores > score_threshold
    return [{"boxes": boxes[i][keep[i]], "scores": scores[i][keep[i]], "labels": labels[i][keep[i]]} for i in range(B)]


def coco_results(
    detections: Sequence[dict[str, Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: Sequence[int] | None = None,
) -> list[dict]:
    """Detections (one ``{boxes (N,4) xyxy, scores, labels}`` dict per image) -> COCO results
    entries ``{image_id, category_id, bbox [x, y, w, h], score}``; labels are mapped to category
    ids when ``label_to_cat_id`` is given (e.g. COCO's original ids), else written as they are."""
    results = []
    for det, image_id in zip(detections, image_ids):
        xywh = box_convert(det["boxes"].detach().cpu(), "xyxy", "xywh").tolist()
        for b, s, c in zip(xywh, det["scores"].detach().cpu().tolist(), det["labels"].cpu().tolist()):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_cat_id[c]) if label_to_cat_id is not None else int(c),
                    "bbox": [round(v, 2) for v in b],
                    "score": round(float(s), 5),
                }
            )
    return results
