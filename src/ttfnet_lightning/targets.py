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
two 1-D profiles (length h and w) and every per-box sum is a product of two 1-D sums. The only 2-D
work is the per-class max for the heatmap and the "who owns this pixel" reduction (max drawing
rank), each an in-place scatter-max of every box's values over its own window only (not the whole
map), written straight into the zero-filled output; then the owner's target and weight are
gathered per pixel. Boxes are drawn in groups that share a window size: on an accelerator, a
static bound known from the map size and kernel options (no host synchronisation); on the CPU,
where reading a tensor costs nothing, the boxes are sorted by window size and each group gets the
size its boxes need. There is no Python loop over boxes or images (only over groups of boxes);
the result does not depend on the grouping (max is exact and order-free).

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
    d *= inside  # 0 outside the window: exp of large negative numbers is slow (underflow), and unused
    sigma = (2 * r + 1).to(torch.float32) / 6
    values = torch.exp((d * d) / (-2 * sigma * sigma))  # = exp(-(d * d) / (2 * sigma * sigma)), bit for bit
    values *= inside
    return values, inside


def _interval(pos: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(B, M, L) bool: ``lo <= pos <= hi`` for (B, M) integer bounds (inclusive)."""
    p = pos.view(1, 1, -1)
    return (p >= lo.unsqueeze(-1)) & (p <= hi.unsqueeze(-1))


def _span(y1: Tensor, y2: Tensor, h: int, x1: Tensor, x2: Tensor, w: int) -> Tensor:
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
    # padding draws nothing: radius 0 at a centre just off the map (profiles 0, windows empty)
    feat_w = torch.where(valid, feat_w, 0.0)
    feat_h = torch.where(valid, feat_h, 0.0)
    cx = torch.where(valid, cx, -1)
    cy = torch.where(valid, cy, -1)

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
    span_a = _span(cy - rh_a, cy + rh_a, h, cx - rw_a, cx + rw_a, w)

    # --- regression area per box: 1-D profiles (weights) and inside masks along x and y
    if wh_gaussian:
        if beta == alpha:
            gx_r, inx_r, gy_r, iny_r, span_r = gx_a, inx_a, gy_a, iny_a, span_a
        else:
            rw_b = (feat_w / 2.0 * beta).to(torch.int64)
            rh_b = (feat_h / 2.0 * beta).to(torch.int64)
            gx_r, inx_r = _profile(xs, cx, rw_b)
            gy_r, iny_r = _profile(ys, cy, rh_b)
            span_r = _span(cy - rh_b, cy + rh_b, h, cx - rw_b, cx + rw_b, w)
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
        span_r = _span(y1s, y2s, h, x1s, x2s, w)
        span_r[1] *= valid  # padding: no rows

    hm_channel = torch.where(valid, labels, torch.full_like(labels, C))
    group = hm_channel if class_aware else torch.zeros_like(labels)
    group = torch.where(valid, group, torch.zeros_like(group))
    return _Geometry(boxes, valid, area, rank, hm_channel, group, gx_a, gy_a, gx_r, gy_r, inx_r, iny_r, span_a, span_r)


class _Layer(NamedTuple):
    """One output reduced by :func:`_draw_max`: box n draws ``py[n, y] * px[n, x]`` into plane
    ``row[n]`` of ``out`` (a flat view of (planes + 1, h, w)), keeping the element-wise max. The
    last plane is spare: a window that runs past a plane's last row spills zeros into the next."""

    out: Tensor  # ((planes + 1) * h * w,) flat, contiguous, >= 0; reduced in place
    row: Tensor  # (N,) int64 plane of each box
    py: Tensor  # (N, h) row profile, 0 outside the box's rows
    px: Tensor  # (N, w) column profile, 0 outside its columns


def _radius_bound(length: int, k: float) -> int:
    """Upper bound on ``int(f / 2 * k)`` over feature sizes ``0 <= f <= length - 1`` (+1 for
    float32 rounding); a negative or NaN factor draws at most one pixel."""
    r = (length - 1) / 2 * k
    return int(r) + 1 if r == r and r > 0 else 1


def _static_window(
    h: int, w: int, *, kind: Literal["aspect", "iso", "rect"], k: float = 0.0, min_overlap: float = 0.7,
    radius_formula: RadiusFormula = "centernet",
) -> tuple[int, int]:
    """(rows, columns) that contain every box's clipped window, known without reading the boxes
    (for accelerators, where reading them would synchronise): ``2 R + 1`` for the largest radius
    ``R`` a box on this map can get, at most the map."""
    if kind == "aspect":
        ry, rx = _radius_bound(h, k), _radius_bound(w, k)
    elif kind == "iso" and 0 < min_overlap < 1:
        # every one of the three radii grows with the box's height and width (0 < o < 1), and a
        # feature-scale box is at most (h - 1) x (w - 1): the radius of that box bounds them all
        big = gaussian_radius(torch.tensor([h - 1.0], dtype=torch.float64), torch.tensor([w - 1.0], dtype=torch.float64),
                              min_overlap=min_overlap, formula=radius_formula)
        ry = rx = int(big.item()) + 1
    else:  # a rectangle of a box reaching beyond the image can cover the whole map
        return h, w
    return min(h, 2 * ry + 1), min(w, 2 * rx + 1)


def _windows(ny: Tensor, nx: Tensor, *, static: tuple[int, int], cap: int) -> tuple[Tensor | None, list[tuple[int, int, int, int]]]:
    """Which boxes are drawn together, and in how large a window.

    Args:
        ny, nx: (N,) int64 rows and columns of each box's window (0: it draws nothing).
        static: (rows, columns) that hold any box's window (see :func:`_static_window`).
        cap: most boxes in one group.
    Returns:
        ``order``: the boxes to draw, in the order the groups refer to (None: all, as given), and
        the groups as ``(start, end, rows, columns)`` over that order.

    On the CPU the sizes are read (free there): boxes that draw nothing are dropped, the rest are
    sorted by window area (in octaves), then rows, so that neighbours have similar shapes, and
    grouped so that a group's windows, padded to its largest rows and columns, cost at most
    about ``_PADDING`` times their real area. Elsewhere reading them would wait for the device:
    every box is drawn in the ``static`` window, ``cap`` at a time."""
    N = ny.shape[0]
    if ny.device.type != "cpu" or not _FIT_ON_CPU:
        return None, [(s, min(s + cap, N), *static) for s in range(0, N, cap)]
    h_max = static[0]  # >= every box's rows
    area = ny * nx
    octave = torch.log2(area.clamp(min=1).to(torch.float32)).to(torch.int64)
    key = torch.where(area > 0, octave * (h_max + 1) + ny, -1)
    order = torch.argsort(key, descending=True, stable=True)
    hs, ws, areas = ny[order].tolist(), nx[order].tolist(), area[order].tolist()
    n = sum(a > 0 for a in areas)
    groups, i = [], 0
    while i < n:
        rows, cols, real, j = hs[i], ws[i], areas[i], i + 1
        while j < n and j - i < cap:
            r, c = max(rows, hs[j]), max(cols, ws[j])
            padded = (j - i + 1) * r * c
            if padded > _GROUP_ELEMENTS or ((j - i) * rows * cols >= _MIN_GROUP_ELEMENTS and padded > _PADDING * (real + areas[j])):
                break
            rows, cols, real, j = r, c, real + areas[j], j + 1
        groups.append((i, j, rows, cols))
        i = j
    return order[:n], groups


#: grouping on the CPU (see :func:`_windows`): a group is closed when padding would exceed
#: _PADDING x its real area, unless it is still smaller than _MIN_GROUP_ELEMENTS (a group costs
#: a few calls: merging small ones is cheaper), and always at _GROUP_ELEMENTS window pixels
#: (temporaries ~16 bytes each; fresh memory costs page faults, which dominate small work here)
_PADDING = 1.5
_MIN_GROUP_ELEMENTS = 1 << 14
_GROUP_ELEMENTS = 1 << 17
#: fit the windows to the boxes on the CPU (False: the accelerators' static windows; for tests)
_FIT_ON_CPU = True


def _draw_max(layers: list[_Layer], span: Tensor, *, h: int, w: int, static: tuple[int, int], cap: int) -> None:
    """Draw every box into each layer's output with an in-place scatter-max, touching only the
    box's window ``span`` ((4, N): first row, rows, first column, columns; see :func:`_span`).
    The layers share the windows.

    A window starts at the box's first row and column and has its group's size, so it may run
    past the map's right or bottom edge; the profiles are 0 there, and the flat index then lands
    on a later pixel (the next row or plane, or the spare plane), where ``max(v, 0) = v``."""
    device = span.device
    lo_y, n_y, lo_x, n_x = span
    order, groups = _windows(n_y, n_x, static=static, cap=cap)
    if order is not None:  # the boxes to draw, sorted once so that every group is a slice
        lo_y, lo_x = lo_y.index_select(0, order), lo_x.index_select(0, order)
        layers = [_Layer(layer.out, *(t.index_select(0, order) for t in layer[1:])) for layer in layers]
    windowed = [(s, e, r, c) for s, e, r, c in groups if (r, c) != (h, w)]
    if windowed:  # every box's profiles over its window of the largest size, starting at (lo_y, lo_x)
        rows, cols = max(g[2] for g in windowed), max(g[3] for g in windowed)
        ar_y, ar_x = torch.arange(rows, device=device), torch.arange(cols, device=device)
        ys, xs = lo_y.unsqueeze(-1) + ar_y, lo_x.unsqueeze(-1) + ar_x  # (N, rows), (N, cols)
        offsets = (ar_y * w).unsqueeze(-1) + ar_x  # (rows, cols) flat offsets in a plane
        start = lo_y * w + lo_x
        wins = [
            (
                torch.nn.functional.pad(layer.py, (0, rows)).gather(1, ys),  # 0 past the map
                torch.nn.functional.pad(layer.px, (0, cols)).gather(1, xs),
                torch.add(start, layer.row, alpha=h * w),  # flat index of each window's origin
            )
            for layer in layers
        ]
    for s, e, rows, cols in groups:
        if (rows, cols) == (h, w):  # whole map: origin 0, the pixel index is implicit (no index tensor)
            for layer in layers:
                vals = layer.py[s:e].unsqueeze(-1) * layer.px[s:e].unsqueeze(-2)  # (n, h, w)
                index = layer.row[s:e].unsqueeze(-1).expand(e - s, h * w)
                layer.out.view(-1, h * w).scatter_reduce_(0, index, vals.view(-1, h * w), reduce="amax")
                del vals  # before the next layer's: the allocator reuses the memory
            continue
        for layer, (pyw, pxw, origin) in zip(layers, wins):
            vals = pyw[s:e, :rows].unsqueeze(-1) * pxw[s:e, :cols].unsqueeze(-2)  # (n, rows, cols)
            index = origin[s:e].view(-1, 1, 1) + offsets[:rows, :cols]
            layer.out.scatter_reduce_(0, index.view(-1), vals.view(-1), reduce="amax")
            del vals, index


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

    # --- heatmap (per-class max) and pixel owner (max drawing rank) over each box's window only
    N = B * M
    image = torch.arange(B, device=device).unsqueeze(1)
    heat_planes = torch.zeros(B * C + 1, h, w, device=device)  # + a spare plane (see _Layer)
    owner_planes = torch.zeros(B * G + 1, h, w, device=device, dtype=torch.int32)  # int32: fast products
    heatmap = heat_planes[: B * C].view(B, C, h, w)  # contiguous (its storage holds the spare plane too)
    owner_rank = owner_planes[: B * G].view(B, G, h, w)  # 0: no box, else 1 + index in drawing order
    heat = _Layer(heat_planes.view(-1), (image * C + hm_channel.clamp(max=max(C - 1, 0))).view(N), gy_a.view(N, h), gx_a.view(N, w))
    own = _Layer(
        owner_planes.view(-1), (image * G + group).view(N),
        (iny_r * rank.unsqueeze(-1)).view(N, h), inx_r.to(torch.int32).view(N, w),
    )
    win = dict(h=h, w=w, cap=chunk_size * B)
    heat_static = _static_window(
        h, w, kind="aspect" if aspect_ratio else "iso", k=alpha, min_overlap=min_overlap, radius_formula=radius_formula
    )
    layers = [heat] if C > 0 else []
    if wh_gaussian and beta == alpha:  # one kernel for both: the same windows
        _draw_max([*layers, own], geo.span_a.view(4, N), static=heat_static, **win)
    else:
        _draw_max(layers, geo.span_a.view(4, N), static=heat_static, **win)
        reg_static = _static_window(h, w, kind="aspect", k=beta) if wh_gaussian else (h, w)
        _draw_max([own], geo.span_r.view(4, N), static=reg_static, **win)

    # --- gather the owning box's target and weight at every pixel; index 0 = no owner
    owner_rank = owner_rank.to(torch.int64)  # 1 + the owner's index in drawing order (gather indices)
    owner = owner_rank.view(B, G * h * w)
    table = torch.cat((boxes.new_full((B, 1, 4), -1.0), boxes), 1).transpose(1, 2).contiguous()  # (B, 4, 1 + M)
    box_target = table.gather(2, owner.unsqueeze(1).expand(B, 4, G * h * w))  # (B, 4, G*h*w)
    box_target = box_target.view(B, 4, G, h, w).transpose(1, 2).reshape(B, G * 4, h, w)
    # weight = scale * gy(y) * gx(x) of the owner (0 for none): gather (scale * gy) by row, gx by column
    sgy = torch.cat((gy_r.new_zeros(B, 1, h), scale.unsqueeze(-1) * gy_r), 1).transpose(1, 2).contiguous()  # (B, h, 1 + M)
    gx_t = torch.cat((gx_r.new_zeros(B, 1, w), gx_r), 1)  # (B, 1 + M, w)
    reg_weight = sgy.unsqueeze(1).expand(B, G, h, M + 1).gather(3, owner_rank)  # (B, G, h, w)
    reg_weight *= gx_t.unsqueeze(1).expand(B, G, M + 1, w).gather(2, owner_rank)
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
