"""CenterNet's objective (Zhou et al. 2019, "Objects as Points"): targets, loss and decoder, on TTFNet's
backbone and neck (``model.method=centernet``, the baseline of the TTFNet paper's Table 8).

It reproduces the released CenterNet code (``src/lib/datasets/sample/ctdet.py`` with ``utils/image.py``,
``models/losses.py`` and ``models/decode.py``):

* targets (:func:`encode_centernet_targets`): each box is divided by the stride and clipped to the map
  (``[0, w - 1] x [0, h - 1]``, as ``ctdet.py``); boxes whose clipped height or width is not positive are
  skipped. One isotropic Gaussian per box, radius ``max(0, int(gaussian_radius((ceil(h), ceil(w)), 0.7)))``
  (CornerNet's radius with CenterNet's released formula: ``core.targets.gaussian_radius(formula="centernet")``),
  ``sigma = (2 r + 1) / 6``, drawn at ``ct_int = floor(ct)`` (``ct`` the clipped box's centre) by
  element-wise max into the class's channel and clipped at the map border (``draw_umich_gaussian``); one
  size ``(w, h)`` (map units), offset ``ct - ct_int``, index ``ct_int.y * w + ct_int.x`` and mask per box;
* loss (:class:`CenterNetLoss`): modified focal loss on the heatmap (weight 1) plus ``RegL1Loss`` on the
  size (weight 0.1) and on the offset (weight 1);
* decoder (:func:`decode_centernet`): sigmoid, 3x3 max-pool peaks, top-K over all classes, box
  ``(ct + offset) -/+ size / 2`` times the stride, rescaled like
  :func:`~ttfnet_lightning.core.decode.decode_detections`.

The network's regression output is one (B, 4, h, w) map: channels 0-1 the size (w, h) on the output map,
channels 2-3 the centre offset (x, y) (:class:`~ttfnet_lightning.core.models.head.CenterNetHead`).

Shapes: B images, M boxes per image (padded; label -1 marks padding), C classes, h x w output map,
K detections per image, N kept detections of one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ttfnet_lightning.core.decode import local_max
from ttfnet_lightning.core.losses import modified_focal_loss
from ttfnet_lightning.core.targets.geometry import gaussian_profile, gaussian_radius, window_span
from ttfnet_lightning.core.targets.windows import DrawLayer, draw_max, static_window

__all__ = ["CenterNetTargets", "encode_centernet_targets", "reg_l1_loss", "CenterNetLoss", "decode_centernet"]


class CenterNetTargets(NamedTuple):
    """CenterNet's training targets of a batch (the ``hm``, ``wh``, ``reg``, ``ind``, ``reg_mask`` of ``ctdet.py``)."""

    heatmap: Tensor  # (B, C, h, w) float32 in [0, 1], exactly 1 at each kept box's centre pixel
    wh: Tensor  # (B, M, 2) float32 (w, h) of each box on the output map; 0 for padding and skipped boxes
    offset: Tensor  # (B, M, 2) float32 ct - floor(ct) (x, y); 0 for padding and skipped boxes
    index: Tensor  # (B, M) int64 ct_int.y * w + ct_int.x; 0 for padding and skipped boxes
    mask: Tensor  # (B, M) float32 1 for a kept box, else 0


@torch.no_grad()
def encode_centernet_targets(
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    min_overlap: float = 0.7,
    chunk_size: int = 32,
) -> CenterNetTargets:
    """Encode padded ground-truth boxes into CenterNet's targets, for a whole batch at once (no loop over boxes).

    Args:
        boxes: (B, M, 4) float xyxy boxes in input pixels.
        labels: (B, M) int64 class indices in [0, C); any other value (-1: padding) marks no box.
        num_classes: C.
        output_size: (h, w) of the output map (input size / stride).
        stride: output stride (4).
        min_overlap: CornerNet's IoU for the Gaussian radius (0.7).
        chunk_size: at most ``chunk_size * B`` Gaussians are drawn at once (memory only; no effect on the result).
    Returns:
        :class:`CenterNetTargets` (heatmap, wh, offset, index, mask). The heatmap's values are the product of
        two float32 1-D Gaussians, equal to CenterNet's float64 2-D Gaussian to float32 rounding.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2]:
        raise ValueError(f"boxes must be (B, M, 4) and labels (B, M), got {tuple(boxes.shape)}, {tuple(labels.shape)}")
    if num_classes < 1 or chunk_size < 1:
        raise ValueError(f"num_classes and chunk_size must be >= 1, got {num_classes}, {chunk_size}")
    h, w = int(output_size[0]), int(output_size[1])
    B, M = labels.shape
    C = int(num_classes)
    labels = labels.to(torch.int64)
    fb = boxes.to(torch.float32) / stride  # the box on the output map, clipped to it (ctdet.py)
    x1, x2 = fb[..., 0].clamp(0, w - 1), fb[..., 2].clamp(0, w - 1)
    y1, y2 = fb[..., 1].clamp(0, h - 1), fb[..., 3].clamp(0, h - 1)
    bw, bh = x2 - x1, y2 - y1
    valid = (labels >= 0) & (labels < C) & (bw > 0) & (bh > 0)
    ctx, cty = (x1 + x2) / 2, (y1 + y2) / 2
    cx, cy = ctx.floor().to(torch.int64), cty.floor().to(torch.int64)  # >= 0: floor = int() of the released code
    radius = gaussian_radius(bh, bw, min_overlap=min_overlap, formula="centernet")  # ceil-ed inside, as ctdet.py
    radius = torch.where(valid, radius.clamp(min=0).to(torch.int64), 0)  # max(0, int(r))
    heatmap = _draw_gaussians(
        torch.where(valid, cx, -1),  # padding and skipped boxes: a centre off the map, radius 0 (draws nothing)
        torch.where(valid, cy, -1),
        radius,
        labels.clamp(0, C - 1),
        num_classes=C,
        output_size=(h, w),
        min_overlap=min_overlap,
        chunk_size=chunk_size,
    )
    zero = torch.zeros((), device=fb.device)
    keep = valid.unsqueeze(-1)
    wh = torch.where(keep, torch.stack((bw, bh), -1), zero)
    offset = torch.where(keep, torch.stack((ctx - cx, cty - cy), -1), zero)
    index = torch.where(valid, cy * w + cx, 0)
    return CenterNetTargets(heatmap, wh, offset, index, valid.to(torch.float32))


def _draw_gaussians(
    cx: Tensor,
    cy: Tensor,
    radius: Tensor,
    channel: Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    min_overlap: float,
    chunk_size: int,
) -> Tensor:
    """``draw_umich_gaussian`` of every box at once: (B, C, h, w) element-wise max of the boxes' Gaussians.

    Args:
        cx, cy: (B, M) int64 centre pixel (-1: draws nothing).
        radius: (B, M) int64 radius (>= 0); sigma = (2 r + 1) / 6.
        channel: (B, M) int64 heatmap channel in [0, C).
    """
    (h, w), (B, M), C = output_size, cx.shape, num_classes
    device = cx.device
    heat_planes = torch.zeros(B * C + 1, h, w, device=device)  # + a spare plane (see core.targets.windows.DrawLayer)
    if M == 0:
        return heat_planes[: B * C].view(B, C, h, w)
    N = B * M
    gx, _ = gaussian_profile(torch.arange(w, device=device), cx, radius)  # (B, M, w), 0 outside |x - cx| <= r
    gy, _ = gaussian_profile(torch.arange(h, device=device), cy, radius)  # (B, M, h)
    span = window_span(cy - radius, cy + radius, h, cx - radius, cx + radius, w)  # (4, B, M) clipped windows
    plane = (torch.arange(B, device=device).unsqueeze(1) * C + channel).view(N)
    layer = DrawLayer(heat_planes.view(-1), plane, gy.view(N, h), gx.view(N, w))
    static = static_window(h, w, kind="iso", min_overlap=min_overlap, radius_formula="centernet")
    draw_max([layer], span.view(4, N), h=h, w=w, static=static, cap=chunk_size * B)
    return heat_planes[: B * C].view(B, C, h, w)


def reg_l1_loss(output: Tensor, index: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """CenterNet's ``RegL1Loss``: the prediction at each box's centre index against its target.

    Args:
        output: (B, D, h, w) predicted map.
        index: (B, M) int64 flat pixel index ``y * w + x`` per box.
        mask: (B, M) 1 for a real box, 0 for padding.
        target: (B, M, D).
    Returns:
        scalar ``sum(|pred * m - target * m|) / (sum(m) + 1e-4)`` with ``m`` the mask expanded to the D
        channels, so the normaliser is ``D * boxes + 1e-4`` (the released code, exactly).
    """
    B, D = output.shape[:2]
    pred = output.float().flatten(2).gather(2, index.unsqueeze(1).expand(B, D, -1)).transpose(1, 2)  # (B, M, D)
    m = mask.to(pred.dtype).unsqueeze(-1).expand_as(pred)
    return F.l1_loss(pred * m, target.to(pred.dtype) * m, reduction="sum") / (m.sum() + 1e-4)


class CenterNetLoss:
    """CenterNet's ``CtdetLoss``: ``hm_weight * L_hm + wh_weight * L_wh + off_weight * L_off`` as named scalars.

    ``L_hm`` is :func:`~ttfnet_lightning.core.losses.modified_focal_loss`, the same as CenterNet's ``_neg_loss``
    (sigmoid clamped to [1e-4, 1 - 1e-4]; divided by the number of pixels equal to 1, or the negative sum alone
    when there is none, which ``num_pos.clamp(min=1)`` gives too; its negatives are the pixels != 1 where
    ``_neg_loss`` takes those < 1: the same, as a target never exceeds 1). ``L_wh`` and ``L_off`` are
    :func:`reg_l1_loss` on the size and offset channels.

    Args:
        hm_weight, wh_weight, off_weight: 1, 0.1, 1 (CenterNet's defaults).
        alpha_f, beta_f: focal loss exponents (2, 4).
    """

    def __init__(
        self,
        *,
        hm_weight: float = 1.0,
        wh_weight: float = 0.1,
        off_weight: float = 1.0,
        alpha_f: float = 2.0,
        beta_f: float = 4.0,
    ) -> None:
        self.hm_weight = hm_weight
        self.wh_weight = wh_weight
        self.off_weight = off_weight
        self.alpha_f = alpha_f
        self.beta_f = beta_f

    def __call__(
        self,
        heatmap_logits: Tensor,
        regression: Tensor,
        heatmap: Tensor,
        wh: Tensor,
        offset: Tensor,
        index: Tensor,
        mask: Tensor,
    ) -> dict[str, Tensor]:
        """Compute the losses.

        Args:
            heatmap_logits: (B, C, h, w) network heatmap logits.
            regression: (B, 4, h, w) predicted size (w, h) and offset (x, y) in map units.
            heatmap, wh, offset, index, mask: the targets (:class:`CenterNetTargets`).
        Returns:
            ``{"loss", "loss_heatmap", "loss_wh", "loss_offset"}``: the weighted terms and ``loss`` their sum.
        """
        loss_heatmap = modified_focal_loss(heatmap_logits, heatmap, alpha_f=self.alpha_f, beta_f=self.beta_f)
        loss_wh = reg_l1_loss(regression[:, :2], index, mask, wh)
        loss_offset = reg_l1_loss(regression[:, 2:], index, mask, offset)
        loss_heatmap = self.hm_weight * loss_heatmap
        loss_wh = self.wh_weight * loss_wh
        loss_offset = self.off_weight * loss_offset
        return {
            "loss": loss_heatmap + loss_wh + loss_offset,
            "loss_heatmap": loss_heatmap,
            "loss_wh": loss_wh,
            "loss_offset": loss_offset,
        }


@torch.no_grad()
def decode_centernet(
    heatmap_logits: Tensor,
    regression: Tensor,
    *,
    input_size: tuple[int, int],
    orig_sizes: Sequence[tuple[int, int]] | Tensor | None = None,
    stride: int = 4,
    k: int = 100,
    score_threshold: float = 0.01,
    pool_size: int = 3,
) -> list[dict[str, Tensor]]:
    """Decode CenterNet outputs into detections, one dict per image (``ctdet_decode``), in the format and with
    the arguments of :func:`~ttfnet_lightning.core.decode.decode_detections`.

    sigmoid -> keep 3x3 local maxima -> top-K over all classes and positions -> box
    ``(x + off_x -/+ w / 2, y + off_y -/+ h / 2) * stride`` at each peak -> clamp to the input image (as
    ``decode_detections``; the released CenterNet does not clamp) -> rescale to the original size -> drop
    scores <= threshold. No NMS.

    Args:
        heatmap_logits: (B, C, h, w) raw heatmap logits.
        regression: (B, 4, h, w) size (w, h) and centre offset (x, y) in map units.
        input_size: (H, W) of the network input.
        orig_sizes: B pairs (h0, w0) to rescale to; None keeps input pixels.
        stride, k, score_threshold, pool_size: as in ``decode_detections`` (4, 100, 0.01 strict ``>``, 3).
    Returns:
        B dicts with ``boxes`` (N, 4) float xyxy, ``scores`` (N,), ``labels`` (N,) int64.
    """
    B, C, h, w = heatmap_logits.shape
    H, W = int(input_size[0]), int(input_size[1])
    heat = heatmap_logits.float().sigmoid()
    heat.mul_(local_max(heat, pool_size).eq_(heat))  # keep the peaks (decode_detections' form of _nms)
    k = min(k, C * h * w)
    scores, idx = heat.reshape(B, -1).topk(k, dim=1)  # (B, K)
    labels = idx // (h * w)
    pix = idx % (h * w)
    reg = regression.float().reshape(B, 4, h * w).gather(2, pix.unsqueeze(1).expand(B, 4, k))  # (B, 4, K)
    size_w, size_h, off_x, off_y = reg.unbind(1)
    cx = (pix % w).to(torch.float32) + off_x
    cy = (pix // w).to(torch.float32) + off_y
    boxes = torch.stack((cx - size_w / 2, cy - size_h / 2, cx + size_w / 2, cy + size_h / 2), dim=-1) * stride
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, W)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, H)
    if orig_sizes is not None:
        sizes = torch.as_tensor(orig_sizes, dtype=torch.float32, device=boxes.device).reshape(B, 2)
        scale = torch.stack((sizes[:, 1] / W, sizes[:, 0] / H, sizes[:, 1] / W, sizes[:, 0] / H), dim=-1)
        boxes = boxes * scale.unsqueeze(1)
    keep = scores > score_threshold
    return [{"boxes": boxes[i][keep[i]], "scores": scores[i][keep[i]], "labels": labels[i][keep[i]]} for i in range(B)]
