"""Batched Gaussian target encoding: boxes -> heatmap, box_target, reg_weight.

This is the paper's contribution (equations (4)-(7)) and the only place it lives. The defaults
reproduce the released TTFNet code exactly (README, "Target encoder variants"):

* heatmap: one aspect-ratio-aware Gaussian per box, radii ``r_h = int(h_f / 2 * alpha)`` and
  ``r_w = int(w_f / 2 * alpha)`` on the feature-scale box, evaluated on integer offsets inside a
  ``(2 r_h + 1) x (2 r_w + 1)`` window with ``sigma = (2 r + 1) / 6``, peak exactly 1 at
  ``(floor(cx / stride), floor(cy / stride))``, clipped at the map border, element-wise max per class;
* regression area: the (clipped) window of the beta kernel (the same kernel when beta == alpha);
* ambiguous pixels: boxes are drawn largest area first, so the smallest box covering a pixel owns
  its regression target and weight (ties in area: the later box in input order wins);
* weights: ``log(area) * G(i, j) / sum(G over the box's clipped area)``, area = ``(w + 1) * (h + 1)``.

How it is batched: every kernel is separable, ``G(y, x) = gy(y) * gx(x)``, so each box contributes
two 1-D profiles (length h and w) and every per-box sum is a product of two 1-D sums. The only
(B, M, h, w) work is the per-class max for the heatmap and the "who owns this pixel" reduction,
done in chunks of boxes to bound memory. There is no Python loop over boxes or images, no
``.item()``/``.tolist()``: the function runs on the tensors' device with no host synchronisation.

:func:`regression_coverage` counts, per output pixel, the boxes whose regression area covers it
(the ambiguity analysis of the paper's Tables 2 and 3); it shares the geometry (box order, centres,
radii, rectangle sub-boxes, clipping) with :func:`encode_targets` through one private helper.

Shapes: B images, M boxes per image (padded; label -1 marks padding), C classes, h x w output map.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

AreaWeight = Literal["log", "sqrt", "area", "norm", "none"]
RadiusFormula = Literal["centernet", "exact"]

_AREA_WEIGHTS = ("log", "sqrt", "area", "norm", "none")
_RADIUS_FORMULAS = ("centernet", "exact")

#: encoder options that never change which pixels are samples (weights, memory, naming)
_WEIGHT_ONLY_OPTIONS = ("name", "gaussian_weight", "area_weight", "chunk_size")

__all__ = ["encode_targets", "regression_coverage", "gaussian_radius", "AreaWeight", "RadiusFormula"]


def gaussian_radius(
    height: Tensor, width: Tensor, *, min_overlap: float = 0.7, formula: RadiusFormula = "centernet"
) -> Tensor:
    """Isotropic heatmap radius of CornerNet/CenterNet for boxes of size ``height x width``.

    The radius is the largest corner shift that keeps IoU >= ``min_overlap`` in CornerNet's three
    cases (both corners shifted together, both inward, both outward).

    * ``formula="centernet"`` (default): CenterNet's ``gaussian_radius`` as used by its code and
      every codebase derived from it, including its known quirk (cases 2 and 3 omit the division
      by ``2a`` of the quadratic formula, and case 1 takes the larger root), so results match
      CenterNet's heatmaps. Inputs are ``ceil``-ed first, as CenterNet does.
    * ``formula="exact"``: the mathematically exact smallest positive root over the three cases.

    Args:
        height, width: (...,) box sizes on the feature map.
    Returns:
        (...,) float radius (not yet truncated to an integer).
    """
    o = min_overlap
    h = height.to(torch.float64)
    w = width.to(torch.float64)
    if formula == "centernet":
        h, w = torch.ceil(h), torch.ceil(w)
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    sq1 = torch.sqrt((b1**2 - 4 * c1).clamp(min=0))
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    sq2 = torch.sqrt((b2**2 - 16 * c2).clamp(min=0))
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    sq3 = torch.sqrt((b3**2 - 4 * a3 * c3).clamp(min=0))
    if formula == "centernet":
        r1, r2, r3 = (b1 + sq1) / 2, (b2 + sq2) / 2, (b3 + sq3) / 2
    elif formula == "exact":
        r1, r2, r3 = (b1 - sq1) / 2, (b2 - sq2) / 8, (b3 + sq3) / (2 * a3)
    else:
        raise ValueError(f"radius formula must be one of {_RADIUS_FORMULAS}, got {formula!r}")
    return torch.minimum(torch.minimum(r1, r2), r3).to(height.dtype if height.is_floating_point() else torch.float32)


def _profile(pos: Tensor, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """1-D truncated Gaussian along one axis.

    Args:
        pos: (L,) integer pixel coordinates along the axis (0..L-1).
        center: (B, M) integer centre coordinate per box.
        radius: (B, M) integer radius per box (>= 0).
    Returns:
        values (B, M, L): ``exp(-d^2 / (2 sigma^2))`` with ``sigma = (2 r + 1) / 6`` inside the
        window ``|d| <= r`` and 0 outside; inside (B, M, L) bool mask of the window.
    """
    d = (pos.view(1, 1, -1) - center.unsqueeze(-1)).to(torch.float32)
    r = radius.unsqueeze(-1)
    inside = d.abs() <= r
    sigma = (2 * r + 1).to(torch.float32) / 6
    values = torch.exp(-(d * d) / (2 * sigma * sigma)) * inside
    return values, inside


def _interval(pos: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(B, M, L) bool: ``lo <= pos <= hi`` for (B, M) integer bounds (inclusive)."""
    p = pos.view(1, 1, -1)
    return (p >= lo.unsqueeze(-1)) & (p <= hi.unsqueeze(-1))


def _check_inputs(boxes: Tensor, labels: Tensor, *, radius_formula: str) -> None:
    """ValueError for arguments :func:`encode_targets` and :func:`regression_coverage` reject."""
    if radius_formula not in _RADIUS_FORMULAS:
        raise ValueError(f"radius_formula must be one of {_RADIUS_FORMULAS}, got {radius_formula!r}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (B, M, 4), got {tuple(boxes.shape)}")
    if labels.shape != boxes.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(boxes.shape[:2])} (B, M), got {tuple(labels.shape)}")


class _Geometry(NamedTuple):
    """Per-box geometry shared by :func:`encode_targets` and :func:`regression_coverage`, boxes in
    drawing order (largest area first). Shapes: (B, M) unless noted."""

    boxes: Tensor  # (B, M, 4) float32 xyxy input pixels
    valid: Tensor  # bool: a real box (not padding)
    area: Tensor  # (w + 1) * (h + 1) in input pixels
    rank: Tensor  # int32 1..M in drawing order, 0 for padding
    hm_channel: Tensor  # heatmap channel: the label, C for padding
    group: Tensor  # regression group: the label when class-aware, else 0 (0 for padding)
    gx_a: Tensor  # (B, M, w) heatmap kernel profile along x (0 outside its window)
    gy_a: Tensor  # (B, M, h) heatmap kernel profile along y
    gx_r: Tensor  # (B, M, w) regression-area Gaussian profile along x (the 0/1 mask for the rectangle)
    gy_r: Tensor  # (B, M, h) likewise along y
    inx_r: Tensor  # (B, M, w) bool: the regression area's columns (clipped to the map)
    iny_r: Tensor  # (B, M, h) bool: its rows


def _geometry(
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int,
    alpha: float,
    beta: float,
    wh_gaussian: bool,
    aspect_ratio: bool,
    class_aware: bool,
    min_overlap: float,
    radius_formula: RadiusFormula,
) -> _Geometry:
    """Sort the boxes into drawing order and compute their heatmap kernels and regression areas as
    separable 1-D profiles (see :func:`encode_targets` for the arguments; M >= 1)."""
    device = boxes.device
    h, w = int(output_size[0]), int(output_size[1])
    B, M = labels.shape
    C = int(num_classes)
    boxes = boxes.to(torch.float32)
    labels = labels.to(torch.int64)
    valid = (labels >= 0) & (labels < C)

    # --- processing order: largest area first (stable), so the smallest box is drawn last and wins.
    bw = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    bh = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    area = (bw + 1) * (bh + 1)  # >= 1, so log/sqrt are finite for degenerate boxes
    # order key: padding first (never drawn), then by decreasing area; stable keeps input order on ties
    key = torch.where(valid, area, torch.full_like(area, float("inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices  # (B, M)
    boxes = boxes.gather(1, order.unsqueeze(-1).expand(B, M, 4))
    labels = labels.gather(1, order)
    valid = valid.gather(1, order)
    area = area.gather(1, order)
    # rank 1..M in drawing order; 0 = padding (never owns a pixel)
    rank = torch.arange(1, M + 1, device=device, dtype=torch.int32).expand(B, M) * valid

    # --- feature-scale geometry (float32, same operation order as the released code)
    fx1 = (boxes[..., 0] / stride).clamp(0, w - 1)
    fy1 = (boxes[..., 1] / stride).clamp(0, h - 1)
    fx2 = (boxes[..., 2] / stride).clamp(0, w - 1)
    fy2 = (boxes[..., 3] / stride).clamp(0, h - 1)
    feat_w = (fx2 - fx1).clamp(min=0)
    feat_h = (fy2 - fy1).clamp(min=0)
    cx = torch.floor((boxes[..., 0] + boxes[..., 2]) / 2 / stride).to(torch.int64)
    cy = torch.floor((boxes[..., 1] + boxes[..., 3]) / 2 / stride).to(torch.int64)

    if aspect_ratio:
        rw_a = (feat_w / 2.0 * alpha).to(torch.int64)
        rh_a = (feat_h / 2.0 * alpha).to(torch.int64)
    else:
        r_iso = gaussian_radius(feat_h, feat_w, min_overlap=min_overlap, formula=radius_formula)
        r_iso = r_iso.clamp(min=0).to(torch.int64)
        rw_a = rh_a = r_iso

    xs = torch.arange(w, device=device)
    ys = torch.arange(h, device=device)
    gx_a, inx_a = _profile(xs, cx, rw_a)  # (B, M, w)
    gy_a, iny_a = _profile(ys, cy, rh_a)  # (B, M, h)

    # --- regression area per box: 1-D profiles (weights) and inside masks along x and y
    if wh_gaussian:
        if beta == alpha:
            gx_r, inx_r, gy_r, iny_r = gx_a, inx_a, gy_a, iny_a
        else:
            rw_b = (feat_w / 2.0 * beta).to(torch.int64)
            rh_b = (feat_h / 2.0 * beta).to(torch.int64)
            gx_r, inx_r = _profile(xs, cx, rw_b)
            gy_r, iny_r = _profile(ys, cy, rh_b)
    else:
        r1 = (1 - beta) / 2
        x1s = torch.round((1 - r1) * boxes[..., 0] + r1 * boxes[..., 2])
        y1s = torch.round((1 - r1) * boxes[..., 1] + r1 * boxes[..., 3])
        x2s = torch.round(r1 * boxes[..., 0] + (1 - r1) * boxes[..., 2])
        y2s = torch.round(r1 * boxes[..., 1] + (1 - r1) * boxes[..., 3])
        x1s, x2s = [torch.round(v / stride).clamp(0, w - 1).to(torch.int64) for v in (x1s, x2s)]
        y1s, y2s = [torch.round(v / stride).clamp(0, h - 1).to(torch.int64) for v in (y1s, y2s)]
        inx_r = _interval(xs, x1s, x2s)
        iny_r = _interval(ys, y1s, y2s)
        gx_r, gy_r = inx_r.to(torch.float32), iny_r.to(torch.float32)

    hm_channel = torch.where(valid, labels, torch.full_like(labels, C))
    group = hm_channel if class_aware else torch.zeros_like(labels)
    group = torch.where(valid, group, torch.zeros_like(group))
    return _Geometry(boxes, valid, area, rank, hm_channel, group, gx_a, gy_a, gx_r, gy_r, inx_r, iny_r)


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
        chunk_size: boxes processed at once in the (B, chunk, h, w) reductions (memory bound only;
            the result does not depend on it).

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
    geo = _geometry(
        boxes, labels, num_classes=C, output_size=(h, w), stride=stride, alpha=alpha, beta=beta,
        wh_gaussian=wh_gaussian, aspect_ratio=aspect_ratio, class_aware=class_aware, min_overlap=min_overlap,
        radius_formula=radius_formula,
    )
    boxes, area, rank, hm_channel, group = geo.boxes, geo.area, geo.rank, geo.hm_channel, geo.group
    gx_a, gy_a, gx_r, gy_r, inx_r, iny_r = geo.gx_a, geo.gy_a, geo.gx_r, geo.gy_r, geo.inx_r, geo.iny_r

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

    # --- the (B, m, h, w) reductions, chunked over boxes
    heatmap = torch.zeros(B, C + 1, h * w, device=device)  # channel C collects padding
    owner_rank = torch.zeros(B, G, h * w, device=device, dtype=torch.int32)
    for s in range(0, M, chunk_size):
        e = min(s + chunk_size, M)
        m = e - s
        vals = (gy_a[:, s:e, :, None] * gx_a[:, s:e, None, :]).reshape(B, m, h * w)
        heatmap.scatter_reduce_(1, hm_channel[:, s:e, None].expand(B, m, h * w), vals, reduce="amax")
        cover = iny_r[:, s:e, :, None] & inx_r[:, s:e, None, :]
        ranks = (cover * rank[:, s:e, None, None]).reshape(B, m, h * w)
        if class_aware:
            owner_rank.scatter_reduce_(1, group[:, s:e, None].expand(B, m, h * w), ranks, reduce="amax")
        else:
            owner_rank = torch.maximum(owner_rank, ranks.amax(dim=1, keepdim=True))
    heatmap = heatmap[:, :C].reshape(B, C, h, w)

    # --- gather the owning box's target and weight at every pixel
    owned = owner_rank > 0  # (B, G, h*w)
    owner = (owner_rank.to(torch.int64) - 1).clamp(min=0)  # index into the sorted boxes
    flat = owner.reshape(B, G * h * w)
    tgt = boxes.gather(1, flat.unsqueeze(-1).expand(B, G * h * w, 4))  # (B, G*h*w, 4)
    tgt = tgt.reshape(B, G, h * w, 4).permute(0, 1, 3, 2)  # (B, G, 4, h*w)
    tgt = torch.where(owned.unsqueeze(2), tgt, torch.full_like(tgt, -1.0))
    box_target = tgt.reshape(B, G * 4, h, w)

    owner_hw = owner.reshape(B, G, h, w)
    gx_o = gx_r.gather(1, owner_hw.reshape(B, G * h, w)).reshape(B, G, h, w)
    gy_o = gy_r.gather(1, owner_hw.permute(0, 1, 3, 2).reshape(B, G * w, h)).reshape(B, G, w, h)
    gy_o = gy_o.permute(0, 1, 3, 2)
    scale_o = scale.gather(1, flat).reshape(B, G, h, w)
    reg_weight = torch.where(owned.reshape(B, G, h, w), scale_o * gy_o * gx_o, torch.zeros_like(scale_o))
    return heatmap, box_target, reg_weight


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
        boxes, labels, num_classes=num_classes, output_size=(h, w), stride=stride, alpha=alpha, beta=beta,
        wh_gaussian=wh_gaussian, aspect_ratio=aspect_ratio, class_aware=class_aware, min_overlap=min_overlap,
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
