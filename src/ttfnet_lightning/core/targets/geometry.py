"""Box geometry of the target encoder: each box's Gaussian radii, centre and heatmap/regression windows
(:func:`gaussian_radius`, the profiles and spans drawn on the output map)."""

from typing import Literal, NamedTuple

import torch
from torch import Tensor

AreaWeight = Literal["log", "sqrt", "area", "norm", "none"]
RadiusFormula = Literal["centernet", "exact"]

_AREA_WEIGHTS = ("log", "sqrt", "area", "norm", "none")
_RADIUS_FORMULAS = ("centernet", "exact")

#: encoder options that never change which pixels are samples (weights, memory, naming)
_WEIGHT_ONLY_OPTIONS = ("name", "gaussian_weight", "area_weight", "chunk_size")

__all__ = ["gaussian_radius", "gaussian_profile", "window_span", "AreaWeight", "RadiusFormula"]


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


def gaussian_profile(pos: Tensor, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
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
    d *= inside  # 0 outside the window: exp of large negative numbers is slow (underflow), and unused
    sigma = (2 * r + 1).to(torch.float32) / 6
    values = torch.exp((d * d) / (-2 * sigma * sigma))  # = exp(-(d * d) / (2 * sigma * sigma)), bit for bit
    values *= inside
    return values, inside


def _interval(pos: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(B, M, L) bool: ``lo <= pos <= hi`` for (B, M) integer bounds (inclusive)."""
    p = pos.view(1, 1, -1)
    return (p >= lo.unsqueeze(-1)) & (p <= hi.unsqueeze(-1))


def window_span(y1: Tensor, y2: Tensor, h: int, x1: Tensor, x2: Tensor, w: int) -> Tensor:
    """(4, B, M) int64: first row, number of rows, first column, number of columns of the
    inclusive ranges ``y1..y2``, ``x1..x2`` (B, M) clipped to the map; the first row/column is
    on the map even where the range misses it (0 rows/columns)."""
    y0, x0 = y1.clamp(min=0), x1.clamp(min=0)
    ny = (y2.clamp(max=h - 1) - y0 + 1).clamp(min=0)
    nx = (x2.clamp(max=w - 1) - x0 + 1).clamp(min=0)
    return torch.stack((y0.clamp(max=h - 1), ny, x0.clamp(max=w - 1), nx))


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
    span_a: Tensor  # (4, B, M) int64 first row, rows, first column, columns of the heatmap kernel's
    #                 clipped window (rows/columns 0: draws nothing, e.g. padding; first row/column on the map)
    span_r: Tensor  # (4, B, M) likewise for the regression area


def _drawing_order(boxes: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, ...]:
    """Boxes (B, M, 4) and labels (B, M) sorted largest area first (stable), so the smallest box is
    drawn last and wins; padding (labels outside 0..C-1) first, never drawn. Returns boxes (float32),
    labels, valid, area ((w + 1) * (h + 1) >= 1, finite log/sqrt for degenerate boxes) and rank
    (int32 1..M in drawing order, 0 for padding)."""
    B, M = labels.shape
    boxes = boxes.to(torch.float32)
    labels = labels.to(torch.int64)
    valid = (labels >= 0) & (labels < int(num_classes))
    bw = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    bh = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    area = (bw + 1) * (bh + 1)
    # order key: padding first (never drawn), then by decreasing area; stable keeps input order on ties
    key = torch.where(valid, area, torch.full_like(area, float("inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices  # (B, M)
    boxes = boxes.gather(1, order.unsqueeze(-1).expand(B, M, 4))
    labels, valid, area = labels.gather(1, order), valid.gather(1, order), area.gather(1, order)
    rank = torch.arange(1, M + 1, device=boxes.device, dtype=torch.int32).expand(B, M) * valid
    return boxes, labels, valid, area, rank


def _feature_boxes(boxes: Tensor, valid: Tensor, *, stride: int, h: int, w: int) -> tuple[Tensor, ...]:
    """Feature-scale width, height (float32) and integer centre x, y of each box (B, M), in the released
    code's operation order; padding gets size 0 at a centre just off the map (profiles 0, windows empty)."""
    fx1 = (boxes[..., 0] / stride).clamp(0, w - 1)
    fy1 = (boxes[..., 1] / stride).clamp(0, h - 1)
    fx2 = (boxes[..., 2] / stride).clamp(0, w - 1)
    fy2 = (boxes[..., 3] / stride).clamp(0, h - 1)
    feat_w = torch.where(valid, (fx2 - fx1).clamp(min=0), 0.0)
    feat_h = torch.where(valid, (fy2 - fy1).clamp(min=0), 0.0)
    cx = torch.floor((boxes[..., 0] + boxes[..., 2]) / 2 / stride).to(torch.int64)
    cy = torch.floor((boxes[..., 1] + boxes[..., 3]) / 2 / stride).to(torch.int64)
    return feat_w, feat_h, torch.where(valid, cx, -1), torch.where(valid, cy, -1)


def _regression_rectangle(
    boxes: Tensor, valid: Tensor, xs: Tensor, ys: Tensor, *, beta: float, stride: int
) -> tuple[Tensor, ...]:
    """The regression area without the Gaussian (wh_gaussian=False): the centre rectangle holding a
    ``beta`` share of each box's width and height, as 0/1 profiles. Returns gx_r, inx_r, gy_r, iny_r, span_r."""
    h, w = len(ys), len(xs)
    r1 = (1 - beta) / 2
    x1s = torch.round((1 - r1) * boxes[..., 0] + r1 * boxes[..., 2])
    y1s = torch.round((1 - r1) * boxes[..., 1] + r1 * boxes[..., 3])
    x2s = torch.round(r1 * boxes[..., 0] + (1 - r1) * boxes[..., 2])
    y2s = torch.round(r1 * boxes[..., 1] + (1 - r1) * boxes[..., 3])
    x1s, x2s = [torch.round(v / stride).clamp(0, w - 1).to(torch.int64) for v in (x1s, x2s)]
    y1s, y2s = [torch.round(v / stride).clamp(0, h - 1).to(torch.int64) for v in (y1s, y2s)]
    inx_r = _interval(xs, x1s, x2s)
    iny_r = _interval(ys, y1s, y2s)
    span_r = window_span(y1s, y2s, h, x1s, x2s, w)
    span_r[1] *= valid  # padding: no rows
    return inx_r.to(torch.float32), inx_r, iny_r.to(torch.float32), iny_r, span_r


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
    C = int(num_classes)
    boxes, labels, valid, area, rank = _drawing_order(boxes, labels, C)
    feat_w, feat_h, cx, cy = _feature_boxes(boxes, valid, stride=stride, h=h, w=w)

    if aspect_ratio:
        rw_a = (feat_w / 2.0 * alpha).to(torch.int64)
        rh_a = (feat_h / 2.0 * alpha).to(torch.int64)
    else:
        r_iso = gaussian_radius(feat_h, feat_w, min_overlap=min_overlap, formula=radius_formula)
        r_iso = r_iso.clamp(min=0).to(torch.int64)
        rw_a = rh_a = r_iso

    xs = torch.arange(w, device=device)
    ys = torch.arange(h, device=device)
    gx_a, inx_a = gaussian_profile(xs, cx, rw_a)  # (B, M, w)
    gy_a, iny_a = gaussian_profile(ys, cy, rh_a)  # (B, M, h)
    span_a = window_span(cy - rh_a, cy + rh_a, h, cx - rw_a, cx + rw_a, w)

    # --- regression area per box: 1-D profiles (weights) and inside masks along x and y
    if not wh_gaussian:
        gx_r, inx_r, gy_r, iny_r, span_r = _regression_rectangle(boxes, valid, xs, ys, beta=beta, stride=stride)
    elif beta == alpha:
        gx_r, inx_r, gy_r, iny_r, span_r = gx_a, inx_a, gy_a, iny_a, span_a
    else:
        rw_b = (feat_w / 2.0 * beta).to(torch.int64)
        rh_b = (feat_h / 2.0 * beta).to(torch.int64)
        gx_r, inx_r = gaussian_profile(xs, cx, rw_b)
        gy_r, iny_r = gaussian_profile(ys, cy, rh_b)
        span_r = window_span(cy - rh_b, cy + rh_b, h, cx - rw_b, cx + rw_b, w)

    hm_channel = torch.where(valid, labels, torch.full_like(labels, C))
    group = hm_channel if class_aware else torch.zeros_like(labels)
    group = torch.where(valid, group, torch.zeros_like(group))
    return _Geometry(boxes, valid, area, rank, hm_channel, group, gx_a, gy_a, gx_r, gy_r, inx_r, iny_r, span_a, span_r)
