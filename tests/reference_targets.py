"""A deliberately plain reference for TTFNet target encoding: per image, per box, per pixel.

Written from shared/paper/reference-facts.md, independent of ``ttfnet_lightning.core.targets``:
slow and obvious on purpose. Box geometry uses float32 tensor arithmetic like the released code,
so integer truncations agree; kernel values use Python floats (float64).
"""

from __future__ import annotations

import math

import torch


def centernet_radius(h: float, w: float, o: float = 0.7) -> float:
    """CenterNet's gaussian_radius on ceil-ed sizes (its quirks kept)."""
    h, w = math.ceil(h), math.ceil(w)
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + math.sqrt(max(b2 * b2 - 4 * 4 * c2, 0))) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0))) / 2
    return min(r1, r2, r3)


def exact_radius(h: float, w: float, o: float = 0.7) -> float:
    """Smallest positive root over CornerNet's three corner-shift cases."""
    r1 = ((h + w) - math.sqrt(max((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o), 0))) / 2
    r2 = (2 * (h + w) - math.sqrt(max(4 * (h + w) ** 2 - 16 * (1 - o) * w * h, 0))) / 8
    r3 = (-2 * o * (h + w) + math.sqrt(max(4 * o * o * (h + w) ** 2 - 16 * o * (o - 1) * w * h, 0))) / (8 * o)
    return min(r1, r2, r3)


def _window(cx: int, cy: int, rw: int, rh: int, h: int, w: int) -> dict[tuple[int, int], float]:
    """Gaussian values on integer offsets of a (2rh+1) x (2rw+1) window, clipped to the map."""
    sx = (2 * rw + 1) / 6
    sy = (2 * rh + 1) / 6
    out = {}
    for dy in range(-rh, rh + 1):
        for dx in range(-rw, rw + 1):
            y, x = cy + dy, cx + dx
            if 0 <= y < h and 0 <= x < w:
                out[(y, x)] = math.exp(-(dx * dx / (2 * sx * sx) + dy * dy / (2 * sy * sy)))
    return out


def reference_encode(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    stride: int = 4,
    alpha: float = 0.54,
    beta: float = 0.54,
    wh_gaussian: bool = True,
    gaussian_weight: bool | None = None,
    area_weight: str = "log",
    aspect_ratio: bool = True,
    class_aware: bool = False,
    radius_formula: str = "centernet",
):
    if gaussian_weight is None:
        gaussian_weight = wh_gaussian
    B, M = labels.shape
    h, w = output_size
    C = num_classes
    G = C if class_aware else 1
    heat = torch.zeros(B, C, h, w, dtype=torch.float64)
    tgt = -torch.ones(B, 4 * G, h, w)
    wt = torch.zeros(B, G, h, w, dtype=torch.float64)
    boxes = boxes.float()
    for b in range(B):
        items = []
        for m in range(M):
            c = int(labels[b, m])
            if c < 0:
                continue
            x1, y1, x2, y2 = boxes[b, m]
            area = ((x2 - x1).clamp(min=0) + 1) * ((y2 - y1).clamp(min=0) + 1)
            items.append((float(area), m, c))
        items.sort(key=lambda t: -t[0])  # largest first, stable: equal areas keep input order
        for area, m, c in items:
            x1, y1, x2, y2 = boxes[b, m]
            fx1 = float((x1 / stride).clamp(0, w - 1))
            fx2 = float((x2 / stride).clamp(0, w - 1))
            fy1 = float((y1 / stride).clamp(0, h - 1))
            fy2 = float((y2 / stride).clamp(0, h - 1))
            fw = max(float(torch.tensor(fx2, dtype=torch.float32) - torch.tensor(fx1, dtype=torch.float32)), 0.0)
            fh = max(float(torch.tensor(fy2, dtype=torch.float32) - torch.tensor(fy1, dtype=torch.float32)), 0.0)
            cx = math.floor(float((x1 + x2) / 2 / stride))
            cy = math.floor(float((y1 + y2) / 2 / stride))

            def radii(k: float) -> tuple[int, int]:
                t32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731, B023
                return int(t32(fw) / 2.0 * k), int(t32(fh) / 2.0 * k)  # noqa: B023  (called at once)

            if aspect_ratio:
                rw, rh = radii(alpha)
            else:
                f = centernet_radius if radius_formula == "centernet" else exact_radius
                rw = rh = max(0, int(f(fh, fw)))
            kern = _window(cx, cy, rw, rh, h, w)
            for (y, x), v in kern.items():
                heat[b, c, y, x] = max(heat[b, c, y, x], v)

            if wh_gaussian:
                region = kern if beta == alpha else _window(cx, cy, *radii(beta), h, w)
            else:
                r1 = (1 - beta) / 2
                rx1 = torch.round((1 - r1) * x1 + r1 * x2)
                ry1 = torch.round((1 - r1) * y1 + r1 * y2)
                rx2 = torch.round(r1 * x1 + (1 - r1) * x2)
                ry2 = torch.round(r1 * y1 + (1 - r1) * y2)
                rx1, rx2 = [min(max(int(torch.round(v / stride)), 0), w - 1) for v in (rx1, rx2)]
                ry1, ry2 = [min(max(int(torch.round(v / stride)), 0), h - 1) for v in (ry1, ry2)]
                region = {(y, x): 1.0 for y in range(ry1, ry2 + 1) for x in range(rx1, rx2 + 1)}
            if not gaussian_weight:
                region = {k: 1.0 for k in region}
            box_w = {"log": math.log(area), "sqrt": math.sqrt(area), "area": area}.get(area_weight, 1.0)
            total = sum(region.values())
            g = c if class_aware else 0
            for (y, x), v in region.items():
                tgt[b, 4 * g : 4 * g + 4, y, x] = boxes[b, m]
                wt[b, g, y, x] = v if area_weight == "none" else box_w * v / total
    return heat.float(), tgt, wt.float()


# test inputs shared by the encoder's and the analysis's tests
H, W = 96, 128  # input pixels; output map 24 x 32


def random_batch(seed: int, B: int = 4, M: int = 14, C: int = 3):
    """Tiny, huge, overlapping, border-touching, zero-size, outside boxes; an empty image; padding."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(B, M, 4)
    labels = torch.full((B, M), -1, dtype=torch.int64)
    for b in range(B):
        n = [0, M, M // 2, 5][b % 4]  # image 0 has no box at all; image 1 is full
        for m in range(n):
            kind = int(torch.randint(0, 8, (1,), generator=g))
            cx, cy = float(torch.rand(1, generator=g)) * W, float(torch.rand(1, generator=g)) * H
            if kind == 0:  # tiny
                bw, bh = float(torch.rand(1, generator=g)) * 4, float(torch.rand(1, generator=g)) * 4
            elif kind == 1:  # huge, beyond the image
                bw, bh = W * (1 + float(torch.rand(1, generator=g))), H * (1 + float(torch.rand(1, generator=g)))
            elif kind == 2:  # zero width or height
                bw, bh = 0.0, float(torch.rand(1, generator=g)) * 40
            elif kind == 3:  # touching the border
                bw, bh = 30.0, 20.0
                cx = 15.0 if m % 2 else W - 15.0
            elif kind == 4:  # fully outside
                cx, cy, bw, bh = W + 30.0, -40.0, 10.0, 10.0
            elif kind == 5 and m > 0:  # duplicate / overlap an earlier box
                boxes[b, m] = boxes[b, m - 1] + torch.rand(4, generator=g) * 6
                labels[b, m] = int(torch.randint(0, C, (1,), generator=g))
                continue
            elif kind == 6:  # integer coordinates
                cx, cy = float(round(cx)), float(round(cy))
                bw, bh = float(torch.randint(2, 60, (1,), generator=g)), float(torch.randint(2, 60, (1,), generator=g))
            else:  # general, wide aspect ratios
                bw = 4 + float(torch.rand(1, generator=g)) * 80
                bh = bw * math.exp(float(torch.randn(1, generator=g)))
            boxes[b, m] = torch.tensor([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            labels[b, m] = int(torch.randint(0, C, (1,), generator=g))
    return boxes, labels
