"""Drawing the boxes' kernels onto the output map: boxes grouped into windows of equal shape, drawn by
maximum (heatmap) and by the smallest-box-wins overwrite order (regression) in a few batched calls."""

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ttfnet_lightning.core.targets.geometry import RadiusFormula, gaussian_radius

# shared with the CenterNet encoder (core/centernet.py); the rest stays private to the TTFNet encoder
__all__ = ["DrawLayer", "draw_max", "static_window"]


class DrawLayer(NamedTuple):
    """One output reduced by :func:`draw_max`: box n draws ``py[n, y] * px[n, x]`` into plane
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


def static_window(
    h: int,
    w: int,
    *,
    kind: Literal["aspect", "iso", "rect"],
    k: float = 0.0,
    min_overlap: float = 0.7,
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
        big = gaussian_radius(
            torch.tensor([h - 1.0], dtype=torch.float64),
            torch.tensor([w - 1.0], dtype=torch.float64),
            min_overlap=min_overlap,
            formula=radius_formula,
        )
        ry = rx = int(big.item()) + 1
    else:  # a rectangle of a box reaching beyond the image can cover the whole map
        return h, w
    return min(h, 2 * ry + 1), min(w, 2 * rx + 1)


def _windows(
    ny: Tensor, nx: Tensor, *, static: tuple[int, int], cap: int
) -> tuple[Tensor | None, list[tuple[int, int, int, int]]]:
    """Which boxes are drawn together, and in how large a window.

    Args:
        ny, nx: (N,) int64 rows and columns of each box's window (0: it draws nothing).
        static: (rows, columns) that hold any box's window (see :func:`static_window`).
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
            if padded > _GROUP_ELEMENTS or (
                (j - i) * rows * cols >= _MIN_GROUP_ELEMENTS and padded > _PADDING * (real + areas[j])
            ):
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


def draw_max(layers: list[DrawLayer], span: Tensor, *, h: int, w: int, static: tuple[int, int], cap: int) -> None:
    """Draw every box into each layer's output with an in-place scatter-max, touching only the
    box's window ``span`` ((4, N): first row, rows, first column, columns; see :func:`window_span`).
    The layers share the windows.

    A window starts at the box's first row and column and has its group's size, so it may run
    past the map's right or bottom edge; the profiles are 0 there, and the flat index then lands
    on a later pixel (the next row or plane, or the spare plane), where ``max(v, 0) = v``."""
    device = span.device
    lo_y, n_y, lo_x, n_x = span
    order, groups = _windows(n_y, n_x, static=static, cap=cap)
    if order is not None:  # the boxes to draw, sorted once so that every group is a slice
        lo_y, lo_x = lo_y.index_select(0, order), lo_x.index_select(0, order)
        layers = [DrawLayer(layer.out, *(t.index_select(0, order) for t in layer[1:])) for layer in layers]
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
