"""The batched target encoder (:func:`encode_targets`) and the regression coverage it implies
(:func:`regression_coverage`)."""

from typing import Any

import torch
from torch import Tensor

from ttfnet_lightning.core.targets.geometry import (
    _AREA_WEIGHTS,
    _WEIGHT_ONLY_OPTIONS,
    AreaWeight,
    RadiusFormula,
    _check_inputs,
    _geometry,
)
from ttfnet_lightning.core.targets.windows import DrawLayer, draw_max, static_window


@torch.no_grad()
def encode_targets(
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    alpha: float = 0.54,
    beta: float = 0.54,
    wh_gaussian: bool = True,
    gaussian_weight: bool | None = None,
    area_weight: AreaWeight = "log",
    aspect_ratio: bool = True,
    class_aware: bool = False,
    min_overlap: float = 0.7,
    radius_formula: RadiusFormula = "centernet",
    chunk_size: int = 32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Encode padded ground-truth boxes into TTFNet training targets, for a whole batch at once.

    Called with no variant options it is the released model. Variant options (the paper's ablations):

    Args:
        boxes: (B, M, 4) float xyxy boxes in input pixels.
        labels: (B, M) int64 class indices in [0, C); -1 marks padding (that box is ignored).
        num_classes: C.
        output_size: (h, w) of the output map (input size / stride).
        stride: output stride r (4 in the paper).
        alpha: heatmap kernel size (Gaussian radii = alpha * half the box side).
        beta: regression-area kernel size; when ``beta == alpha`` the heatmap kernel is shared,
            as in the released code. With ``wh_gaussian=False`` it is the relative size of the
            rectangle sub-box (Tables 2, 3, 5).
        wh_gaussian: regression area is the Gaussian window (True, default) or the centre
            rectangle of relative size beta (False; Table 2's "rectangle").
        gaussian_weight: weight regression samples by the Gaussian (Table 1's "+Gaussian"); by
            default True for the Gaussian area and False (uniform) for the rectangle.
        area_weight: per-box weight: ``"log"`` (default), ``"sqrt"``, ``"area"`` of
            ``(w + 1) * (h + 1)``, ``"norm"`` (1 per box, Table 1's "Norm"), each spread over the
            box's samples so they sum to it; or ``"none"`` (every sample weight 1 -- or its
            Gaussian value when ``gaussian_weight`` -- with no per-box normalisation, Table 1's
            first column).
        aspect_ratio: heatmap kernel follows the box's aspect ratio (True, default) or is
            isotropic with the CornerNet/CenterNet radius (False; Table 3).
        class_aware: one regression target set per class (4*C channels; Table 2's "Aware").
        min_overlap, radius_formula: the isotropic radius (see :func:`gaussian_radius`).
        chunk_size: at most ``chunk_size * B`` boxes are drawn at once (memory bound only; the
            result does not depend on it).

    Returns:
        heatmap: (B, C, h, w) float32 in [0, 1], exactly 1 at each box's centre pixel.
        box_target: (B, 4, h, w) float32 (or (B, 4*C, h, w) class-aware): the owning box's
            (x1, y1, x2, y2) in input pixels; -1 where no box owns the pixel. Only meaningful
            where ``reg_weight > 0``.
        reg_weight: (B, 1, h, w) float32 (or (B, C, h, w) class-aware); 0 where no sample.
    """
    if area_weight not in _AREA_WEIGHTS:
        raise ValueError(f"area_weight must be one of {_AREA_WEIGHTS}, got {area_weight!r}")
    _check_inputs(boxes, labels, radius_formula=radius_formula)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if gaussian_weight is None:
        gaussian_weight = wh_gaussian

    device = boxes.device
    h, w = int(output_size[0]), int(output_size[1])
    B, M = labels.shape
    C = int(num_classes)
    G = C if class_aware else 1  # regression groups (channels of reg_weight)

    if M == 0:  # no box slots at all (a batch of empty images): shape-only, no synchronisation
        return (
            torch.zeros(B, C, h, w, device=device),
            torch.full((B, 4 * G, h, w), -1.0, device=device),
            torch.zeros(B, G, h, w, device=device),
        )
    kernel = dict(  # the options _geometry and _draw_boxes share
        alpha=alpha,
        beta=beta,
        wh_gaussian=wh_gaussian,
        aspect_ratio=aspect_ratio,
        min_overlap=min_overlap,
        radius_formula=radius_formula,
    )
    geo = _geometry(boxes, labels, num_classes=C, output_size=(h, w), stride=stride, class_aware=class_aware, **kernel)
    boxes = geo.boxes
    scale, gx_r, gy_r = _sample_scale(geo, area_weight=area_weight, gaussian_weight=gaussian_weight)
    heatmap, owner_rank = _draw_boxes(geo, num_classes=C, groups=G, output_size=(h, w), chunk_size=chunk_size, **kernel)
    box_target, reg_weight = _gather_owner(owner_rank, boxes, scale, gx_r, gy_r)
    return heatmap, box_target, reg_weight


def _sample_scale(geo: Any, *, area_weight: str, gaussian_weight: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-box scale (B, M) of the sample weights (weight = scale * gy(y) * gx(x), summing to the box's
    area weight over its clipped area), and the regression profiles gx (B, M, w), gy (B, M, h) used."""
    area, gx_r, gy_r, inx_r, iny_r = geo.area, geo.gx_r, geo.gy_r, geo.inx_r, geo.iny_r
    if area_weight == "log":
        box_weight = area.log()
    elif area_weight == "sqrt":
        box_weight = area.sqrt()
    elif area_weight == "area":
        box_weight = area
    else:  # "norm" and "none"
        box_weight = torch.ones_like(area)

    if not gaussian_weight:
        gx_r, gy_r = inx_r.to(torch.float32), iny_r.to(torch.float32)
    # per-box normaliser: sum over the clipped area = product of the 1-D sums
    if area_weight == "none":
        norm = torch.ones_like(box_weight)
    else:
        norm = (gx_r.sum(-1) * gy_r.sum(-1)).clamp(min=1e-12)
    scale = box_weight / norm  # (B, M): sample weight = scale * gy(y) * gx(x)

    return scale, gx_r, gy_r


def _draw_boxes(
    geo: Any,
    *,
    num_classes: int,
    groups: int,
    output_size: tuple[int, int],
    alpha: float,
    beta: float,
    wh_gaussian: bool,
    aspect_ratio: bool,
    min_overlap: float,
    radius_formula: str,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """The heatmap (B, C, h, w) (per-class max of the boxes' Gaussians) and each pixel's owner
    (B, G, h, w) int32: 0 no box, else 1 + the owning box's index in drawing order (smallest box wins)."""
    C, G = num_classes, groups
    (h, w), (B, M) = output_size, geo.rank.shape
    device = geo.boxes.device
    rank, hm_channel, group = geo.rank, geo.hm_channel, geo.group
    gx_a, gy_a, inx_r, iny_r = geo.gx_a, geo.gy_a, geo.inx_r, geo.iny_r
    N = B * M
    image = torch.arange(B, device=device).unsqueeze(1)
    heat_planes = torch.zeros(B * C + 1, h, w, device=device)  # + a spare plane (see DrawLayer)
    owner_planes = torch.zeros(B * G + 1, h, w, device=device, dtype=torch.int32)  # int32: fast products
    heatmap = heat_planes[: B * C].view(B, C, h, w)  # contiguous (its storage holds the spare plane too)
    owner_rank = owner_planes[: B * G].view(B, G, h, w)  # 0: no box, else 1 + index in drawing order
    heat = DrawLayer(
        heat_planes.view(-1),
        (image * C + hm_channel.clamp(max=max(C - 1, 0))).view(N),
        gy_a.view(N, h),
        gx_a.view(N, w),
    )
    own = DrawLayer(
        owner_planes.view(-1),
        (image * G + group).view(N),
        (iny_r * rank.unsqueeze(-1)).view(N, h),
        inx_r.to(torch.int32).view(N, w),
    )
    win = dict(h=h, w=w, cap=chunk_size * B)
    heat_static = static_window(
        h, w, kind="aspect" if aspect_ratio else "iso", k=alpha, min_overlap=min_overlap, radius_formula=radius_formula
    )
    layers = [heat] if C > 0 else []
    if wh_gaussian and beta == alpha:  # one kernel for both: the same windows
        draw_max([*layers, own], geo.span_a.view(4, N), static=heat_static, **win)
    else:
        draw_max(layers, geo.span_a.view(4, N), static=heat_static, **win)
        reg_static = static_window(h, w, kind="aspect", k=beta) if wh_gaussian else (h, w)
        draw_max([own], geo.span_r.view(4, N), static=reg_static, **win)

    return heatmap, owner_rank


def _gather_owner(
    owner_rank: Tensor, boxes: Tensor, scale: Tensor, gx_r: Tensor, gy_r: Tensor
) -> tuple[Tensor, Tensor]:
    """box_target (B, 4G, h, w) and reg_weight (B, G, h, w): the owning box's xyxy and sample weight at
    every pixel (-1 and 0 where no box owns it)."""
    B, G, h, w = owner_rank.shape
    M = boxes.shape[1]
    # index 0 = no owner
    owner_rank = owner_rank.to(torch.int64)  # 1 + the owner's index in drawing order (gather indices)
    owner = owner_rank.view(B, G * h * w)
    table = torch.cat((boxes.new_full((B, 1, 4), -1.0), boxes), 1).transpose(1, 2).contiguous()  # (B, 4, 1 + M)
    box_target = table.gather(2, owner.unsqueeze(1).expand(B, 4, G * h * w))  # (B, 4, G*h*w)
    box_target = box_target.view(B, 4, G, h, w).transpose(1, 2).reshape(B, G * 4, h, w)
    # weight = scale * gy(y) * gx(x) of the owner (0 for none): gather (scale * gy) by row, gx by column
    sgy = (
        torch.cat((gy_r.new_zeros(B, 1, h), scale.unsqueeze(-1) * gy_r), 1).transpose(1, 2).contiguous()
    )  # (B, h, 1 + M)
    gx_t = torch.cat((gx_r.new_zeros(B, 1, w), gx_r), 1)  # (B, 1 + M, w)
    reg_weight = sgy.unsqueeze(1).expand(B, G, h, M + 1).gather(3, owner_rank)  # (B, G, h, w)
    reg_weight *= gx_t.unsqueeze(1).expand(B, G, M + 1, w).gather(2, owner_rank)
    return box_target, reg_weight


@torch.no_grad()
def regression_coverage(
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    alpha: float = 0.54,
    beta: float = 0.54,
    wh_gaussian: bool = True,
    aspect_ratio: bool = True,
    class_aware: bool = False,
    min_overlap: float = 0.7,
    radius_formula: RadiusFormula = "centernet",
    **ignored: Any,
) -> Tensor:
    """How many boxes' regression areas cover each output pixel, for a whole batch at once.

    The regression areas are exactly those of :func:`encode_targets` with the same options (one
    shared geometry helper): a pixel where the count is >= 1 gets a regression sample, and one
    where it is >= 2 is an ambiguous sample (the encoder gives it to the smallest box).

    Every area is a rectangle, the product of a row mask and a column mask, so the counts are one
    batched matrix product ``rows^T @ cols`` of 0/1 matrices over the boxes: exact in float32
    (integers below 2^24), and no (B, M, h, w) tensor is ever built.

    Args:
        boxes: (B, M, 4) float xyxy boxes in input pixels.
        labels: (B, M) int64 class indices in [0, C); -1 marks padding (never counted).
        num_classes: C.
        output_size: (h, w) of the output map.
        stride, alpha, beta, wh_gaussian, aspect_ratio, class_aware, min_overlap, radius_formula:
            as in :func:`encode_targets` (``alpha``, ``aspect_ratio`` and the radius options
            matter for the regression area only when it shares the heatmap kernel,
            ``wh_gaussian`` and ``beta == alpha``).
        **ignored: encoder options that never change the areas (``gaussian_weight``,
            ``area_weight``, ``chunk_size``, the kernel config's ``name``),
            so a whole kernel config can be passed; any other name is a ``TypeError``.

    Returns:
        (B, G, h, w) int32 counts, G = C when ``class_aware`` (channel c counts the boxes of
        class c only) else 1.
    """
    unknown = sorted(set(ignored) - set(_WEIGHT_ONLY_OPTIONS))
    if unknown:
        raise TypeError(f"regression_coverage got unexpected option(s) {unknown}")
    _check_inputs(boxes, labels, radius_formula=radius_formula)
    h, w = int(output_size[0]), int(output_size[1])
    B, M = labels.shape
    G = int(num_classes) if class_aware else 1
    if M == 0:
        return torch.zeros(B, G, h, w, device=boxes.device, dtype=torch.int32)
    geo = _geometry(
        boxes,
        labels,
        num_classes=num_classes,
        output_size=(h, w),
        stride=stride,
        alpha=alpha,
        beta=beta,
        wh_gaussian=wh_gaussian,
        aspect_ratio=aspect_ratio,
        class_aware=class_aware,
        min_overlap=min_overlap,
        radius_formula=radius_formula,
    )
    rows = (geo.iny_r & geo.valid.unsqueeze(-1)).to(torch.float32)  # (B, M, h); padding covers nothing
    cols = geo.inx_r.to(torch.float32)  # (B, M, w)
    if class_aware:  # rows of box m go to its class's block: (B, M, G * h)
        onehot = torch.nn.functional.one_hot(geo.group, G).to(torch.float32)  # (B, M, G)
        rows = (onehot.unsqueeze(-1) * rows.unsqueeze(2)).reshape(B, M, G * h)
    with torch.autocast(boxes.device.type, enabled=False):  # 0/1 products summed exactly in float32
        counts = torch.bmm(rows.transpose(1, 2), cols)  # (B, G * h, w)
    return counts.to(torch.int32).reshape(B, G, h, w)
