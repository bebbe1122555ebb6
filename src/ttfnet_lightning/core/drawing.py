"""Drawing on images without a plotting library (torch + PIL): class colours, heatmap colouring and
overlay, detections with class names and scores. ``predict``, the W&B validation images and the
figures use them."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

# ------------------------------------------------------------------------------------ colours
_GOLDEN = 0.618033988749895
# anchor colours of matplotlib's "inferno" (t = 0, 1/8, ..., 1), so that heatmaps look the same
# with and without matplotlib
_INFERNO = [
    (0, 0, 4),
    (33, 12, 74),
    (87, 16, 110),
    (138, 34, 106),
    (188, 55, 84),
    (228, 90, 49),
    (249, 142, 9),
    (249, 203, 53),
    (252, 255, 164),
]
# box colours of the target panels: no red (red marks ambiguous pixels there)
BOX_PALETTE = [
    (31, 119, 180),
    (44, 160, 44),
    (148, 103, 189),
    (23, 190, 207),
    (188, 189, 34),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (174, 199, 232),
    (152, 223, 138),
    (255, 187, 120),
    (197, 176, 213),
]
AMBIGUOUS_RGB = (255, 0, 0)


def class_color(k: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class ``k`` (the same whatever the number of classes:
    hues spaced by the golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((0.02 + int(k) * _GOLDEN) % 1.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def class_colors(n: int) -> list[tuple[int, int, int]]:
    return [class_color(k) for k in range(int(n))]


def colorize(values: Tensor, *, vmin: float = 0.0, vmax: float = 1.0) -> Tensor:
    """(h, w) values -> (3, h, w) uint8 RGB with the "inferno" colour map (no matplotlib)."""
    v = values.detach().float().cpu()
    t = ((v - vmin) / max(vmax - vmin, 1e-12)).clamp(0, 1) * (len(_INFERNO) - 1)
    lo = t.floor().long().clamp(max=len(_INFERNO) - 2)
    frac = (t - lo).unsqueeze(0)
    lut = torch.tensor(_INFERNO, dtype=torch.float32).T  # (3, K)
    rgb = lut[:, lo] * (1 - frac) + lut[:, lo + 1] * frac
    return rgb.round().clamp(0, 255).to(torch.uint8)


def overlay_heatmap(image: Tensor, heat: Tensor, *, alpha: float = 0.5, vmax: float | None = 1.0) -> Tensor:
    """``heat`` (h, w) (e.g. the predicted heatmap, max over classes) resized to the image (3, H, W)
    uint8 and blended over it: ``(1 - alpha) * image + alpha * inferno(heat / vmax)``, so the
    image shows darkened where the heatmap is 0 and the peaks glow; ``vmax=None`` scales the
    heatmap to its own maximum (a weak model's peaks are well below 1)."""
    H, W = image.shape[-2:]
    h = heat.detach().float().cpu()
    top = float(h.max()) if vmax is None else float(vmax)
    h = (h / max(top, 1e-12)).clamp(0, 1)
    h = torch.nn.functional.interpolate(h[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    out = image.cpu().float() * (1 - alpha) + colorize(h).float() * alpha
    return out.round().clamp(0, 255).to(torch.uint8)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _text_color(rgb: Sequence[int]) -> tuple[int, int, int]:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if lum > 140 else (255, 255, 255)


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    heatmap: Tensor | None = None,
    heatmap_alpha: float = 0.5,
    colors: Sequence[tuple[int, int, int]] | None = None,
    width: int | None = None,
    font_size: int | None = None,
) -> Tensor:
    """Boxes drawn on an image, one colour per class, each labelled ``"<class name> <score>"``
    on a filled tag (the score left out when ``scores`` is None, e.g. ground truth).

    Args:
        image: (3, H, W) uint8 RGB.
        boxes: (N, 4) xyxy in the image's pixels.
        labels: (N,) class indices.
        scores: (N,) or None; boxes below ``score_threshold`` are not drawn.
        class_names: label -> name (default: the index).
        heatmap: optional (h, w) in [0, 1] (any resolution) blended under the boxes with opacity
            ``heatmap_alpha`` (:func:`overlay_heatmap`).
        colors: per-class RGB (default :func:`class_color`).
        width, font_size: line width and label size in pixels (default: scaled with the image).
    Returns:
        (3, H, W) uint8.
    """
    from PIL import Image, ImageDraw

    if heatmap is not None:
        image = overlay_heatmap(image, heatmap, alpha=heatmap_alpha)
    H, W = image.shape[-2:]
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    labels = labels.detach().cpu().reshape(-1).long()
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if scores is not None:
        scores = scores.detach().float().cpu().reshape(-1)
        keep = scores >= score_threshold
    order = (
        torch.argsort(scores, stable=True) if scores is not None else torch.arange(len(boxes))
    )  # best drawn last (on top)
    width = width or max(1, round(max(H, W) / 250))
    font = _font(font_size or max(10, round(max(H, W) / 30)))
    pil = Image.fromarray(image.cpu().permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(pil)
    for i in order.tolist():
        if not keep[i]:
            continue
        c = int(labels[i])
        rgb = tuple(colors[c]) if colors is not None and c < len(colors) else class_color(c)
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=rgb, width=width)
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, b - t
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1  # above the box, inside when at the top
        tx = min(max(x1, 0), max(W - tw - 2 * width, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * width, ty + th + 2 * width], fill=rgb)
        draw.text((tx + width - l, ty + width - t), text, fill=_text_color(rgb), font=font)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()
