"""Pictures: the paper's Figure 3 for every target encoder, the paper tables as plots, AP against
training time, and detections drawn on images.

Two halves:

* **Drawing on images, no plotting library** (torch + PIL, core dependencies): :func:`class_color`,
  :func:`colorize`, :func:`overlay_heatmap`, :func:`draw_detections`, :func:`run_model`. ``predict``,
  the W&B validation images and the notebooks use them.
* **Figures** (matplotlib, imported inside the functions only: ``pip install -e ".[viz]"``):
  :func:`targets_figure` (Figure 3), :func:`table_figure` (one per paper table, also written by the
  tables aggregator as ``table.png``), :func:`time_to_accuracy_figure`, :func:`detections_figure`, :func:`batch_figure`.
  Importing this module never imports matplotlib.

Command line (what made the README's figures)::

    python -m ttfnet_lightning.viz targets --index 1 --dpi 70 --out docs/figures/targets.png   # COCO subset, else built-in data
    python -m ttfnet_lightning.viz table results/table2-cpu --out table2.png    # = the aggregator's table.png
    python -m ttfnet_lightning.viz time results/table1-cpu --out tta.png        # AP vs training time of a sweep's runs
    python -m ttfnet_lightning.viz detections --ckpt last.ckpt --out docs/figures/detections.png
    python -m ttfnet_lightning.viz batch protocol=cpu schedule=10x --out batch.png  # a training batch as the network sees it
    python -m ttfnet_lightning.viz strip notebooks/*.ipynb                      # outputs out before committing
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

__all__ = [
    "class_color", "class_colors", "colorize", "overlay_heatmap", "draw_detections", "run_model",
    "TargetMaps", "target_maps", "kernel_options", "kernel_names", "figure3_variants", "ablation_variants", "targets_figure",
    "read_validations", "sweep_runs", "read_table_csv", "table_figure", "time_to_accuracy_figure", "detections_figure",
    "sample_images", "compose", "train_tiny_model", "training_batches", "batch_figure", "save_figure", "subplots", "strip_notebook",
]

# ------------------------------------------------------------------------------------ colours
_GOLDEN = 0.618033988749895
# anchor colours of matplotlib's "inferno" (t = 0, 1/8, ..., 1), so that heatmaps look the same
# with and without matplotlib
_INFERNO = [(0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84), (228, 90, 49), (249, 142, 9), (249, 203, 53), (252, 255, 164)]
# box colours of the target panels: no red (red marks ambiguous pixels there)
_BOX_PALETTE = [(31, 119, 180), (44, 160, 44), (148, 103, 189), (23, 190, 207), (188, 189, 34), (140, 86, 75), (227, 119, 194),
                (127, 127, 127), (174, 199, 232), (152, 223, 138), (255, 187, 120), (197, 176, 213)]
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
    order = torch.argsort(scores, stable=True) if scores is not None else torch.arange(len(boxes))  # best drawn last (on top)
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


@torch.no_grad()
def run_model(model: Any, images: Sequence[Tensor]) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
    """Detections and predicted heatmaps of a :class:`~ttfnet_lightning.lit_module.TTFNetModule`
    for images of any size: each (3, H, W) uint8 image is resized to the model's input size (as
    ``predict`` does), boxes come back in its own pixels, heatmaps (h, w) are the sigmoid, max
    over classes, at the output map's resolution."""
    from torchvision.transforms.v2 import functional as TF

    if not images:
        return [], []
    device = next(model.parameters()).device
    size = list(model.input_size)
    batch = torch.stack([TF.resize(im, size, antialias=True) for im in images]).to(device)
    meta = [{"orig_size": tuple(im.shape[-2:])} for im in images]
    hm, wh = model(model.normalize(batch))
    dets = model.decode(hm, wh, meta, tuple(size))
    heat = hm.float().sigmoid().amax(1).cpu()
    return [{k: v.cpu() for k, v in d.items()} for d in dets], list(heat)


# ------------------------------------------------------------------------------------ targets
@dataclass
class TargetMaps:
    """What one target encoder makes of one image's boxes, on the output map (h, w).

    heatmap: max over classes; weight: regression weight, summed over class channels (class-aware);
    owner: index of the box a pixel regresses to (-1: no sample; class-aware: the channel with the
    largest weight); coverage: boxes whose regression area covers the pixel (max over class channels);
    num_samples / num_ambiguous: regression samples and those covered by 2+ boxes, counted per class
    channel as :mod:`ttfnet_lightning.analyze` does.
    """

    heatmap: Tensor
    weight: Tensor
    owner: Tensor
    coverage: Tensor
    num_samples: int
    num_ambiguous: int
    stride: int

    @property
    def ambiguous(self) -> Tensor:
        return self.coverage >= 2

    @property
    def ambiguous_ratio(self) -> float:
        """Ambiguous / all regression samples, in percent (0 when there are none)."""
        return 100.0 * self.num_ambiguous / self.num_samples if self.num_samples else 0.0


def target_maps(
    boxes: Tensor, labels: Tensor, *, num_classes: int, image_size: Sequence[int], stride: int = 4, **options: Any
) -> TargetMaps:
    """:func:`~ttfnet_lightning.targets.encode_targets` and :func:`~ttfnet_lightning.targets.regression_coverage`
    for one image's boxes (M, 4) xyxy input pixels and labels (M,), with the encoder's keyword
    ``options`` (a kernel config's keys; ``name`` is ignored)."""
    from .targets import encode_targets, regression_coverage

    options = {k: v for k, v in options.items() if k != "name"}
    H, W = (int(s) for s in image_size)
    out = (H // stride, W // stride)
    b = boxes.detach().float().cpu().reshape(1, -1, 4)
    lab = labels.detach().cpu().long().reshape(1, -1)
    hm, tgt, wt = encode_targets(b, lab, num_classes=num_classes, output_size=out, stride=stride, **options)
    cov = regression_coverage(b, lab, num_classes=num_classes, output_size=out, stride=stride, **options)[0]  # (G, h, w)
    G = wt.shape[1]
    wt, tgt = wt[0], tgt[0].reshape(G, 4, *out)
    best = wt.argmax(0)  # (h, w): the class channel shown where several own a pixel
    owner_box = tgt.gather(0, best[None, None].expand(1, 4, *out))[0]  # (4, h, w)
    match = (owner_box[None] == b[0][:, :, None, None]).all(1)  # (M, h, w)
    owner = torch.where((wt.amax(0) > 0) & match.any(0), match.float().argmax(0), torch.full(out, -1))
    return TargetMaps(
        heatmap=hm[0].amax(0), weight=wt.sum(0), owner=owner.long(), coverage=cov.amax(0),
        num_samples=int((cov >= 1).sum()), num_ambiguous=int((cov >= 2).sum()), stride=stride,
    )


def _kernel_dir() -> Path:
    return Path(str(resources.files("ttfnet_lightning").joinpath("conf", "kernel")))


def kernel_names() -> list[str]:
    """The ``kernel`` config group's options (``conf/kernel/*.yaml``), the released one first."""
    names = sorted(p.stem for p in _kernel_dir().glob("*.yaml"))
    return sorted(names, key=lambda n: n != "ttfnet")


def kernel_options(name: str = "ttfnet", **overrides: Any) -> dict[str, Any]:
    """The encoder options of ``conf/kernel/<name>.yaml`` (its ``defaults`` followed, as Hydra
    composes them), with ``overrides`` on top; ``name`` is left out."""
    path = _kernel_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown kernel {name!r}; options: {kernel_names()}")
    raw = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {}
    for d in raw.pop("defaults", None) or ["_self_"]:
        out.update(raw if d == "_self_" else kernel_options(str(d)))
    out.update(overrides)
    out.pop("name", None)
    return out


def figure3_variants(alpha: float = 0.54, beta: float = 0.54, rect_beta: float = 0.3) -> dict[str, dict[str, Any]]:
    """The paper's Figure 3 as encoder options: (a) CenterNet (isotropic heatmap, the centre pixel
    as the only regression sample), (b) the whole box (FCOS), (c) a centre rectangle of relative
    size ``rect_beta``, (d) TTFNet's Gaussian area with Gaussian weights (``alpha``, ``beta``)."""
    return {
        "(a) CenterNet: centre pixel": kernel_options("ttfnet", alpha=alpha, beta=0.01, aspect_ratio=False),
        "(b) FCOS: whole box": kernel_options("rect", alpha=alpha, beta=1.0),
        f"(c) rectangle, beta={rect_beta:g}": kernel_options("rect", alpha=alpha, beta=rect_beta),
        f"(d) TTFNet, a={alpha:g} b={beta:g}": kernel_options("ttfnet", alpha=alpha, beta=beta),
    }


def ablation_variants(alpha: float = 0.54, beta: float = 0.54, rect_beta: float = 0.3) -> dict[str, dict[str, Any]]:
    """Every other option of the ``kernel`` config group (the paper's ablations, Tables 1-3) at
    ``alpha``/``beta`` (``rect`` at ``rect_beta``), plus the sqrt area weight of Table 1."""
    out = {}
    for name in kernel_names():
        if name == "ttfnet":
            continue
        out[f"{name}" + (f", beta={rect_beta:g}" if name == "rect" else "")] = kernel_options(
            name, alpha=alpha, beta=rect_beta if name == "rect" else beta)
    out["area weight sqrt"] = kernel_options("ttfnet", alpha=alpha, beta=beta, area_weight="sqrt")
    return out


def subplots(nrows: int, ncols: int, figsize: tuple[float, float], *, squeeze: bool = False) -> tuple[Any, Any]:
    """A matplotlib Figure and its axes without pyplot (no global figure state: nothing to close,
    nothing shown twice in a notebook; Jupyter displays a returned Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _upsample(a: np.ndarray, stride: int, size: tuple[int, int]) -> np.ndarray:
    """A map of the output grid at input resolution (each cell a stride x stride block)."""
    up = np.repeat(np.repeat(a, stride, axis=0), stride, axis=1)
    H, W = size
    pad = [(0, max(0, H - up.shape[0])), (0, max(0, W - up.shape[1]))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(up, pad, mode="edge")[:H, :W]


def _blend(base: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32)
    return (base.astype(np.float32) * (1 - a) + rgb.astype(np.float32) * a).clip(0, 255).astype(np.uint8)


def targets_figure(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    variants: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    stride: int = 4,
    panel_size: float = 2.6,
    weight_decades: float = 3.0,
    title: str | None = None,
) -> Any:
    """Figure 3 for one image: a column per encoder variant, rows = heatmap (its peaks, the positive
    samples, marked), regression area (each sample coloured by the box it regresses to, ambiguous
    samples, covered by 2+ boxes, in red; with few samples each is also marked by a dot) and
    regression weight (brighter = larger; log scale over ``weight_decades`` decades below the
    panel's largest weight). Returns a matplotlib Figure."""
    from matplotlib.patches import Rectangle

    H, W = image.shape[-2:]
    img = image.detach().cpu().permute(1, 2, 0).numpy()
    dim = (img.astype(np.float32) * 0.45 + 255 * 0.1).astype(np.uint8)  # the image, faded
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    labels = labels.detach().cpu().long().reshape(-1)
    box_rgb = np.array([_BOX_PALETTE[i % len(_BOX_PALETTE)] for i in range(len(boxes))] or [(0, 0, 0)], dtype=np.uint8)
    n = len(variants)
    fig, axes = subplots(3, n, (panel_size * n, panel_size * 3 + 0.6))
    rows = ["heatmap (peaks: positives)", "regression area\n(red: ambiguous)", f"regression weight\n(log scale, {weight_decades:g} decades)"]
    for j, (name, opts) in enumerate(variants.items()):
        m = target_maps(boxes, labels, num_classes=num_classes, image_size=(H, W), stride=stride, **opts)
        hm = m.heatmap.numpy()
        heat_rgb = colorize(torch.from_numpy(_upsample(hm, stride, (H, W)))).permute(1, 2, 0).numpy()
        panels = [_blend(dim, heat_rgb, 0.9 * _upsample(hm, stride, (H, W)))]
        owner = _upsample(m.owner.numpy(), stride, (H, W))
        area = _blend(dim, box_rgb[np.clip(owner, 0, None)], 0.8 * (owner >= 0))
        amb = _upsample(m.ambiguous.numpy(), stride, (H, W))
        panels.append(_blend(area, np.broadcast_to(np.array(AMBIGUOUS_RGB, np.uint8), (H, W, 3)), 0.95 * amb))
        wt = m.weight.numpy()
        with np.errstate(divide="ignore"):
            wn = np.clip(1 + np.log10(wt / wt.max()) / weight_decades, 0, 1) if wt.max() > 0 else wt
        w_rgb = colorize(torch.from_numpy(0.2 + 0.8 * _upsample(wn, stride, (H, W)))).permute(1, 2, 0).numpy()
        panels.append(_blend(dim // 2, w_rgb, _upsample((wt > 0).astype(np.float32), stride, (H, W))))
        for i, pic in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(pic, interpolation="nearest")
            for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.8, ec=tuple(box_rgb[k] / 255)))
            if i == 0:
                ys, xs = np.nonzero(hm >= 1.0)
                ax.scatter((xs + 0.5) * stride, (ys + 0.5) * stride, s=6, c="white", marker="o", linewidths=0)
            if i == 1 and 0 < m.num_samples <= 100:  # single pixels would be invisible
                ys, xs = np.nonzero(m.owner.numpy() >= 0)
                ax.scatter((xs + 0.5) * stride, (ys + 0.5) * stride, s=10, c=box_rgb[m.owner.numpy()[ys, xs]] / 255, marker="s",
                           edgecolors="white", linewidths=0.4)
            ax.set_xlim(-0.5, W - 0.5)  # markers near the border would widen the axes
            ax.set_ylim(H - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
        axes[0, j].set_title(f"{name}\n{m.num_samples} samples, {m.ambiguous_ratio:.1f}% ambiguous", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------- experiments
def read_validations(metrics_csv: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` that hold a validation (``time/train_seconds`` logged
    with it): ``{"hours": training hours (validation excluded), "step": ..., "val/AP": ..., ...}``."""
    out = []
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            if not r.get("time/train_seconds"):
                continue
            row = {"hours": float(r["time/train_seconds"]) / 3600, "step": float(r.get("time/step") or r.get("step") or "nan")}
            row.update({k: float(v) for k, v in r.items() if k.startswith("val/") and v not in (None, "")})
            out.append(row)
    return out


def sweep_runs(path: str | Path) -> dict[str, Path]:
    """``{label: metrics.csv}``: the run ``path`` itself when it holds a ``metrics.csv``, else every
    job directory of the sweep ``path`` that holds one (label = the job dir's name)."""
    path = Path(path)
    if (path / "metrics.csv").is_file():
        return {path.name: path / "metrics.csv"}
    return {p.parent.name: p for p in sorted(path.glob("*/metrics.csv"))}


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_table_csv(path: str | Path) -> list[dict[str, Any]]:
    """``table.csv`` as the aggregator wrote it (one row per cell), numbers parsed."""
    with open(path, newline="") as f:
        return _parse_rows(list(csv.DictReader(f)))


def _parse_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        values = r.get("values")
        if isinstance(values, str):
            values = [float(v) for v in values.split()]
        out.append({"table": str(r.get("table", "")), "row": str(r["row"]), "column": str(r["column"]), "mean": _float(r.get("mean")),
                    "std": _float(r.get("std")), "values": list(values or []), "paper": _float(r.get("paper")),
                    "collapsed": int(_float(r.get("collapsed")) or 0)})
    return out


def _paper() -> dict[str, Any]:
    from .tables import paper_values

    return paper_values()


_OURS = "#1f77b4"
_PAPER = "#d62728"


def _bars(ax: Any, labels: Sequence[str], cells: Sequence[dict[str, Any] | None], *, color: str, ours: bool, offset: float = 0.0,
          width: float = 0.8, label: str | None = None) -> None:
    x = np.arange(len(labels)) + offset
    if ours:
        mean = [c["mean"] if c and c["mean"] is not None else np.nan for c in cells]
        err = [c["std"] if c and c["std"] is not None else 0 for c in cells]
        ax.bar(x, mean, width, yerr=err, color=color, alpha=0.75, capsize=2, label=label)
        for xi, c in zip(x, cells):
            if c and c["values"]:
                ax.scatter([xi] * len(c["values"]), c["values"], s=8, c="black", zorder=3)
            if c and c.get("collapsed"):
                ax.scatter([xi], [c["mean"]], s=60, marker="x", color="black", zorder=4)
    else:
        ax.bar(x, [c["paper"] if c and c["paper"] is not None else np.nan for c in cells], width, color=color, alpha=0.75, label=label)


def _line(ax: Any, x: Sequence[float], cells: Sequence[dict[str, Any] | None], **kw: Any) -> None:
    """Means with std error bars, each seed a small dot; a cell with collapsed runs (the aggregator's
    dagger: box regression never learned) gets a black x."""
    pts = [(xi, c) for xi, c in zip(x, cells) if c and c["mean"] is not None]
    if not pts:
        return
    line = ax.errorbar([p[0] for p in pts], [c["mean"] for _, c in pts], yerr=[c["std"] or 0 for _, c in pts], marker="o", capsize=2, **kw)
    color = line.lines[0].get_color()
    for xi, c in pts:
        ax.scatter([xi] * len(c["values"]), c["values"], s=7, color=color, alpha=0.6, zorder=3)
        if c.get("collapsed"):
            ax.scatter([xi], [c["mean"]], s=60, marker="x", color="black", zorder=4)


def _log_x(ax: Any, ticks: Sequence[float]) -> None:
    """Log-scale x axis labelled at ``ticks`` only (no crowded minor labels)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = sorted(set(float(t) for t in ticks))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _style(ax: Any, title: str, ylabel: str = "AP") -> None:
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def table_figure(rows: Sequence[Mapping[str, Any]] | str | Path, *, name: str | None = None, title: str | None = None) -> Any:
    """One paper table as a plot, ours (mean ± std over seeds, each seed a dot) beside the paper's
    values (paper: COCO and TTFNet-53; ours: the protocol of the sweep, so compare shapes, not
    levels). ``rows``: the aggregator's cells (``Table.csv_rows()``) or a ``table.csv`` path.

    Table 1, 3, 6: bars; Table 2: AP and ambiguity ratio against beta; Table 4: AP against FPS
    (the speed-accuracy trade-off of the shortcut convs); Table 5: AP against beta, a line per LR.
    Returns a matplotlib Figure."""
    rows = read_table_csv(rows) if isinstance(rows, (str, Path)) else _parse_rows(rows)
    name = name or (rows[0]["table"] if rows else "")
    cells = {(r["row"], r["column"]): r for r in rows}
    paper = _paper()
    plotter = {"table1": _plot_table1, "table2": _plot_table2, "table3": _plot_table3, "table4": _plot_table4,
               "table5": _plot_table5, "table6": _plot_table6}.get(name, _plot_generic)
    fig = plotter(cells, paper.get(name, {}))
    collapsed = " x = runs whose box regression collapsed;" if any(r["collapsed"] for r in rows) else ""
    paper_net = "R18 / R34 / D53" if name == "table6" else "TTFNet-53"  # Table 6 compares backbones
    fig.suptitle(title or f"{name}: ours (mean ± std over seeds, dots = seeds;{collapsed} this sweep's protocol) vs paper (COCO, {paper_net})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _plot_table1(cells: dict, p: dict) -> Any:
    cols = list(p.get("columns") or sorted({c for _, c in cells}))
    fig, axes = subplots(1, 2, (11, 3.8), squeeze=True)
    for ax, ours, color, t in ((axes[0], True, _OURS, "ours"), (axes[1], False, _PAPER, "paper")):
        _bars(ax, cols, [cells.get(("AP", c)) for c in cols], color=color, ours=ours)
        ax.set_xticks(range(len(cols)), cols, rotation=25, ha="right", fontsize=8)
        _style(ax, f"Table 1, regression weights: {t}")
    return fig


def _beta_cols(cells: dict, row: str) -> list[str]:
    return sorted({c for r, c in cells if r == row and _float(c) is not None}, key=float)


def _plot_table2(cells: dict, p: dict) -> Any:
    fig, axes = subplots(1, 3, (14, 3.8), squeeze=True)
    for mode, color in (("Agnostic", _OURS), ("Aware", "#ff7f0e")):
        cols = _beta_cols(cells, f"{mode} AP")
        _line(axes[0], [float(c) for c in cols], [cells.get((f"{mode} AP", c)) for c in cols], color=color, label=mode)
        if p:
            axes[1].plot(p["beta"], p[mode]["AP"], marker="s", color=color, ls="--", label=mode)
            axes[2].plot(p["beta"], p[mode]["Ratio"], marker="s", color=color, ls="--", label=f"paper {mode}")
        rc = _beta_cols(cells, f"{mode} Ratio %")
        _line(axes[2], [float(c) for c in rc], [cells.get((f"{mode} Ratio %", c)) for c in rc], color=color, label=f"ours {mode}")
    betas = {float(c) for r, c in cells if _float(c) is not None} | set(p.get("beta", []))
    for ax, t, yl in ((axes[0], "ours: AP vs rectangle beta", "AP"), (axes[1], "paper: AP vs rectangle beta", "AP"),
                      (axes[2], "ambiguous samples vs beta", "ambiguous %")):
        _log_x(ax, betas)
        ax.set_xlabel("beta (relative size of the rectangle)")
        _style(ax, t, yl)
        ax.legend(fontsize=7)
    return fig


def _t3_label(row: str) -> str:
    parts = [s.strip() for s in row.split("|")]
    if len(parts) != 3:
        return row
    beta, gauss, aspect = parts
    return f"{'Gaussian' if gauss else 'rectangle'} {beta}" + (" +aspect" if aspect else "")


def _plot_table3(cells: dict, p: dict) -> Any:
    rows = list(dict.fromkeys(r for r, c in cells if c == "AP"))
    if p:
        order = [f"{b:g} | {'X' if g else ''} | {'X' if a else ''}" for b, g, a, *_ in p["rows"]]
        rows = [r for r in order if r in rows] + [r for r in rows if r not in order]
    labels = [_t3_label(r) for r in rows]
    fig, axes = subplots(1, 3, (14, 3.8), squeeze=True)
    _bars(axes[0], labels, [cells.get((r, "AP")) for r in rows], color=_OURS, ours=True)
    _bars(axes[1], labels, [cells.get((r, "AP")) for r in rows], color=_PAPER, ours=False)
    _bars(axes[2], labels, [cells.get((r, "Ratio %")) for r in rows], color=_OURS, ours=True, offset=-0.2, width=0.4, label="ours")
    _bars(axes[2], labels, [cells.get((r, "Ratio %")) for r in rows], color=_PAPER, ours=False, offset=0.2, width=0.4, label="paper")
    axes[2].legend(fontsize=7)
    for ax, t, yl in ((axes[0], "ours: AP per kernel", "AP"), (axes[1], "paper: AP per kernel", "AP"), (axes[2], "ambiguous samples", "ambiguous %")):
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
        _style(ax, f"Table 3, {t}", yl)
    return fig


def _plot_table4(cells: dict, p: dict) -> Any:
    cols = [c for r, c in cells if r == "AP"]
    fig, axes = subplots(1, 2, (11, 4), squeeze=True)
    for c in cols:
        ap, fps = cells.get(("AP", c)), cells.get(("FPS", c))
        if ap and fps and ap["mean"] is not None and fps["mean"] is not None:
            axes[0].errorbar(fps["mean"], ap["mean"], xerr=fps["std"] or 0, yerr=ap["std"] or 0, marker="o", color=_OURS, capsize=2)
            axes[0].annotate(c, (fps["mean"], ap["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if ap and fps and ap["paper"] is not None and fps["paper"] is not None:
            axes[1].plot(fps["paper"], ap["paper"], marker="s", color=_PAPER)
            axes[1].annotate(c, (fps["paper"], ap["paper"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for ax, t in ((axes[0], "ours (images/s on this machine's CPU)"), (axes[1], "paper (images/s on a GTX 1080Ti)")):
        ax.set_xlabel("FPS (model only, batch 1)")
        _style(ax, f"Table 4, shortcut convs (stage 2,3,4): {t}")
    return fig


_LR_COL = re.compile(r"LR (?P<lr>[0-9.e-]+) \((?P<mult>[0-9.]+)x\) (?P<sched>\S+)")


def _plot_table5(cells: dict, p: dict) -> Any:
    fig, axes = subplots(1, 2, (11, 4), squeeze=True)
    cols = list(dict.fromkeys(c for _, c in cells))
    cmap = _cmap("viridis")
    mults = sorted({float(m.group("mult")) for c in cols if (m := _LR_COL.match(c))} | {round(lr / p["default_lr"], 2) for lr in p.get("lr", [])})
    color = {m: cmap(i / max(len(mults) - 1, 1)) for i, m in enumerate(mults)}
    for c in cols:
        m = _LR_COL.match(c)
        if not m:
            continue
        betas = sorted({r for r, cc in cells if cc == c and _float(r) is not None}, key=float)
        mult = float(m.group("mult"))
        _line(axes[0], [float(b) for b in betas], [cells.get((b, c)) for b in betas], color=color[mult],
              ls="-" if m.group("sched") == "1x" else "--", label=f"LR {float(m.group('lr')):g} ({mult:g}x) {m.group('sched')}")
    if p:
        for i, lr in enumerate(p["lr"]):
            mult = round(lr / p["default_lr"], 2)
            for s, sched in enumerate(p["schedules"]):
                axes[1].plot(p["beta"], [row[2 * i + s] for row in p["AP"]], marker="s", color=color[mult], ls="-" if s == 0 else "--",
                             label=f"LR {lr:g} ({mult:g}x) {sched}")
    betas = {float(r) for r, _ in cells if _float(r) is not None} | set(p.get("beta", []))
    for ax, t in ((axes[0], "ours"), (axes[1], "paper")):
        _log_x(ax, betas)
        ax.set_xlabel("beta (regression kernel size)")
        _style(ax, f"Table 5, AP vs beta per learning rate: {t}")
        ax.legend(fontsize=7)
    return fig


def _plot_table6(cells: dict, p: dict) -> Any:
    rows = list(p.get("rows") or dict.fromkeys(r for r, _ in cells))
    cols = list(p.get("backbones") or dict.fromkeys(c for _, c in cells))
    fig, axes = subplots(1, 2, (11, 3.8), squeeze=True)
    w = 0.8 / max(len(rows), 1)
    cmap = _cmap("tab10")
    for i, r in enumerate(rows):
        off = (i - (len(rows) - 1) / 2) * w
        _bars(axes[0], cols, [cells.get((r, c)) for c in cols], color=cmap(i), ours=True, offset=off, width=w, label=r)
        _bars(axes[1], cols, [cells.get((r, c)) for c in cols], color=cmap(i), ours=False, offset=off, width=w, label=r)
    for ax, t in ((axes[0], "ours"), (axes[1], "paper")):
        ax.set_xticks(range(len(cols)), cols)
        _style(ax, f"Table 6, long schedules: {t}")
        ax.legend(fontsize=7)
    return fig


def _plot_generic(cells: dict, p: dict) -> Any:
    keys = [k for k, c in cells.items() if c["mean"] is not None or c["paper"] is not None]
    labels = [f"{r} / {c}" for r, c in keys]
    fig, axes = subplots(1, 1, (max(6, 0.5 * len(keys)), 3.8))
    ax = axes[0, 0]
    _bars(ax, labels, [cells[k] for k in keys], color=_OURS, ours=True, offset=-0.2, width=0.4, label="ours")
    _bars(ax, labels, [cells[k] for k in keys], color=_PAPER, ours=False, offset=0.2, width=0.4, label="paper")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    _style(ax, "cells", "value")
    ax.legend(fontsize=7)
    return fig


def _group_label(label: str) -> str:
    """A run's label without its seed (the runs of one table cell share a colour)."""
    return re.sub(r"(^|,)seed=\d+", "", label).strip(",") or label


def time_to_accuracy_figure(runs: Mapping[str, str | Path], *, metric: str = "val/AP", paper: bool = True, legend: bool = True,
                            title: str | None = None) -> Any:
    """AP against training time (validation excluded) for runs ``{label: metrics.csv}``, runs of
    the same setting (labels equal up to ``seed=N``) in one colour; with ``paper`` a second panel
    shows the paper's Table 7 (COCO AP against training hours on 8 GTX 1080Ti). Returns a Figure."""
    fig, axes = subplots(1, 2 if paper else 1, (12 if paper else 6.5, 4.2))
    ax = axes[0, 0]
    groups = list(dict.fromkeys(_group_label(k) for k in runs))
    cmap = _cmap("tab10" if len(groups) <= 10 else "tab20")
    seen: set[str] = set()
    for label, path in runs.items():
        v = [r for r in read_validations(path) if metric in r]
        if not v:
            continue
        g = _group_label(label)
        ax.plot([r["hours"] * 60 for r in v], [r[metric] for r in v], marker="o", ms=3, color=cmap(groups.index(g) % cmap.N),
                label=None if g in seen else g)
        seen.add(g)
    ax.set_xlabel("training time (minutes, validation excluded)")
    _style(ax, title or f"ours: {metric} against training time", metric)
    if legend and seen:
        ax.legend(fontsize=6, ncol=1 + len(seen) // 10)
    if paper:
        ax = axes[0, 1]
        for method, backbone, _fps, hours, ap in _paper().get("table7", {}).get("rows", []):
            ttf = method.startswith("TTFNet")
            ax.scatter(hours, ap, s=25, c=_PAPER if ttf else "grey", marker="s" if ttf else "o", zorder=3 if ttf else 2)
            ax.annotate(f"{method} {backbone}", (hours, ap), textcoords="offset points", xytext=(3, 2), fontsize=6,
                        color=_PAPER if ttf else "dimgrey")
        _log_x(ax, [2, 5, 10, 20, 50])
        ax.set_xlabel("training hours (8 GTX 1080Ti, log scale)")
        _style(ax, "paper, Table 7: COCO AP against training time", "AP")
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------- detections
def detections_figure(
    images: Sequence[Tensor],
    detections: Sequence[Mapping[str, Tensor]],
    *,
    class_names: Sequence[str] | None = None,
    heatmaps: Sequence[Tensor] | None = None,
    targets: Sequence[Mapping[str, Tensor]] | None = None,
    score_threshold: float = 0.3,
    panel_size: float = 3.2,
    min_pixels: int = 384,
) -> Any:
    """Detections drawn on images (class name and score, a colour per class), one column per
    image; a second row with the predicted heatmap (scaled to its maximum, given in the title)
    overlaid when ``heatmaps`` are given, with the ground truth ``targets`` (``{boxes, labels}``)
    in white. Images smaller than ``min_pixels`` are enlarged first, so that labels stay
    readable. Returns a Figure."""
    from torchvision.transforms.v2 import functional as TF

    n = len(images)
    nrows = 2 if heatmaps is not None else 1
    fig, axes = subplots(nrows, max(n, 1), (panel_size * max(n, 1), panel_size * nrows + 0.3))
    for j, (img, det) in enumerate(zip(images, detections)):
        H, W = img.shape[-2:]
        f = max(1, math.ceil(min_pixels / max(H, W)))
        big = TF.resize(img, [H * f, W * f], antialias=True) if f > 1 else img
        drawn = draw_detections(big, det["boxes"] * f, det["labels"], det["scores"], class_names=class_names, score_threshold=score_threshold)
        k = int((det["scores"] >= score_threshold).sum())
        axes[0, j].imshow(drawn.permute(1, 2, 0).numpy())
        axes[0, j].set_title(f"{k} detections, score >= {score_threshold:g}", fontsize=8)
        if heatmaps is not None:
            over = overlay_heatmap(big, heatmaps[j], alpha=0.6, vmax=None)
            if targets is not None and len(targets[j]["boxes"]):
                t = targets[j]
                over = draw_detections(over, t["boxes"] * f, t["labels"], class_names=class_names, colors=[(255, 255, 255)] * 10_000)
            axes[1, j].imshow(over.permute(1, 2, 0).numpy())
            axes[1, j].set_title(f"heatmap / its max ({float(heatmaps[j].max()):.2f})" + (", true boxes" if targets is not None else ""), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- data and models
def _shared_data() -> Path:
    here = Path(__file__).resolve()
    for cand in (Path.cwd().parent / "shared" / "data", Path.cwd() / ".." / ".." / "shared" / "data", here.parents[3] / "shared" / "data"):
        if cand.is_dir():
            return cand.resolve()
    return here.parents[3] / "shared" / "data"


def sample_images(
    source: str = "auto", *, num_images: int = 2, image_size: int | Sequence[int] = 512, coco_root: str | Path | None = None,
    split: str = "val2017", min_boxes: int = 3, seed: int = 0, shape_classes: Sequence[str] | None = None,
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[str], str]:
    """A few real images with their training boxes, resized to ``image_size`` as training does
    (aspect ratio not kept): ``([(image (3, H, W) uint8, boxes (M, 4), labels (M,)), ...], class
    names, source used)``. ``source``: ``"coco"`` (``coco_root``, default ``../shared/data/coco-mini``:
    the images with the most boxes, at least ``min_boxes``), ``"shapes"`` (the built-in data's
    validation stream, with ``shape_classes``, default its five) or ``"auto"`` (COCO when it is
    there, else shapes). ``seed``: skip that many images."""
    from .data import CocoDetection, ShapesDataset, build_transforms
    from .data.transforms import as_size

    size = as_size(image_size)
    root = Path(coco_root) if coco_root is not None else _shared_data() / "coco-mini"
    if source == "auto":
        source = "coco" if (root / "annotations" / f"instances_{split}.json").is_file() else "shapes"
    if source == "coco":
        ds = CocoDetection(root=root, split=split, transforms=build_transforms(input_size=size, train=False), keep_empty=False)
        counts = [len(ds.annotations(i)["boxes"]) for i in range(len(ds))]
        order = sorted(range(len(ds)), key=lambda i: (-(min_boxes <= counts[i] <= 12), -counts[i], i))
        picked = order[seed: seed + num_images]
        names = ds.class_names
    elif source == "shapes":
        extra = {"classes": list(shape_classes)} if shape_classes else {}
        ds = ShapesDataset(num_images=seed + num_images, image_size=size, seed=10_000, min_objects=min_boxes, max_objects=max(min_boxes, 8), **extra)
        picked = list(range(seed, seed + num_images))
        names = ds.class_names
    else:
        raise ValueError(f"source must be 'auto', 'coco' or 'shapes', got {source!r}")
    out = []
    for i in picked:
        img, tgt = ds[i]
        out.append((img.as_subclass(Tensor), tgt["boxes"].as_subclass(Tensor).float(), tgt["labels"]))
    return out, list(names), source


def compose(config_name: str = "train", overrides: Sequence[str] = ()) -> Any:
    """A config composed from the package's ``conf/`` with Hydra's API (no command line, no chdir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .tables import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def train_tiny_model(output_dir: str | Path, *, steps: int = 60, image_size: int = 64, overrides: Sequence[str] = ()) -> Path:
    """Train a small TTFNet-R18 on the built-in data (``steps`` optimiser steps, batch 8, CSV
    logging only) into ``output_dir`` and return its ``last.ckpt``; a finished run there is reused
    (``train`` skips it). A stand-in when no trained checkpoint is at hand: it detects shapes only."""
    from .train import train

    out = Path(output_dir)
    per_epoch = 4
    epochs = max(1, math.ceil(steps / per_epoch))
    cfg = compose("train", [
        f"data.datamodule.input_size=[{image_size},{image_size}]", f"data.datamodule.num_train={8 * per_epoch}",
        "data.datamodule.num_val=8", "data.datamodule.batch_size=8", "data.datamodule.num_workers=0",
        f"schedule.max_epochs={epochs}", f"schedule.warmup_steps={min(20, steps // 4 + 1)}", f"schedule.milestones=[{max(1, epochs * 3 // 4)}]",
        f"trainer.check_val_every_n_epoch={epochs}", "trainer=cpu", "trainer.enable_progress_bar=false", "logger=csv",
        "callbacks.log_val_images=0", "callbacks.checkpoint_every_n_steps=null", f"output_dir={out}", *overrides,
    ])
    train(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"training wrote no {ckpt}")
    return ckpt


def training_batches(overrides: Sequence[str] = (), *, num_batches: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
    """The first ``num_batches`` training batches that ``train`` with these overrides would feed the
    network (the configured datamodule, its transforms and augmentation; loaded in this process).

    Returns:
        (batches, class_names): each batch as the collate function makes it (``images`` (B, 3, H, W)
        uint8, ``boxes`` (B, M, 4) xyxy pixels, ``labels`` (B, M), -1 = padding).
    """
    from .train import build_datamodule

    cfg = compose("train", [*overrides, "data.datamodule.num_workers=0"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) >= num_batches:
            break
    return batches, list(getattr(dm, "class_names", []) or [])


def batch_figure(batch: Mapping[str, Any], *, class_names: Sequence[str] | None = None, num_images: int = 8,
                 columns: int = 8, title: str | None = None) -> Any:
    """A training batch as the network sees it (``images`` uint8, as collated): each image with its
    target boxes (padding left out)."""
    images = batch["images"][:num_images]
    n = len(images)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, (2.2 * cols, 2.3 * rows + (0.4 if title else 0)))
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        ax.axis("off")
        if i >= n:
            continue
        keep = batch["labels"][i] >= 0
        drawn = draw_detections(images[i], batch["boxes"][i][keep], batch["labels"][i][keep], class_names=class_names)
        ax.imshow(drawn.permute(1, 2, 0).numpy())
        ax.set_title(f"{int(keep.sum())} boxes", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100, colors: int | None = 256) -> Path:
    """Save a figure as PNG; with ``colors`` the PNG is palette-quantised (a few times smaller,
    for figures committed to the repository)."""
    import io

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    im = Image.open(buf).convert("RGB")
    if colors:
        im = im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(path, optimize=True)
    return path


def strip_notebook(path: str | Path) -> bool:
    """Remove a notebook's outputs, execution counts and widget state in place (notebooks are
    stored without outputs; ``tests/test_notebooks.py`` checks it). Returns whether it changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after)
    return after != before


# ------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ttfnet_lightning.viz", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("targets", help="Figure 3: training samples of each target encoder on a real image")
    t.add_argument("--source", default="auto", choices=["auto", "coco", "shapes"])
    t.add_argument("--coco", default=None, help="COCO root (default ../shared/data/coco-mini)")
    t.add_argument("--index", type=int, default=0, help="which of the most crowded images")
    t.add_argument("--size", type=int, default=512)
    t.add_argument("--alpha", type=float, default=0.54)
    t.add_argument("--beta", type=float, default=0.54)
    t.add_argument("--rect-beta", type=float, default=0.3)
    t.add_argument("--ablations", action="store_true", help="the kernel group's other options instead of Figure 3's four")
    t.add_argument("--out", default="targets.png")
    tb = sub.add_parser("table", help="a paper-table sweep (its table.csv, else built now) as a plot")
    tb.add_argument("sweep_dir")
    tb.add_argument("--out", default=None, help="default: <sweep_dir>/table.png")
    tm = sub.add_parser("time", help="AP against training time for runs or sweeps")
    tm.add_argument("paths", nargs="+")
    tm.add_argument("--metric", default="val/AP")
    tm.add_argument("--out", default="time_to_accuracy.png")
    d = sub.add_parser("detections", help="a checkpoint's detections and heatmaps on a few images")
    d.add_argument("--ckpt", required=True)
    d.add_argument("--num-images", type=int, default=4)
    d.add_argument("--threshold", type=float, default=0.3)
    d.add_argument("--out", default="detections.png")
    bt = sub.add_parser("batch", help="the first training batch a config produces (augmentation included), boxes drawn")
    bt.add_argument("overrides", nargs="*", help="train's Hydra overrides, e.g. schedule=10x data.datamodule.input_size=[128,128]")
    bt.add_argument("--num-images", type=int, default=8)
    bt.add_argument("--out", default="batch.png")
    for p in (t, tb, tm, d, bt):
        p.add_argument("--dpi", type=int, default=80)
    st = sub.add_parser("strip", help="remove notebooks' outputs in place (they are stored without)")
    st.add_argument("notebooks", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "strip":
        for nb in args.notebooks:
            print(f"{nb}: {'stripped' if strip_notebook(nb) else 'already without outputs'}")
        return 0

    import matplotlib

    matplotlib.use("Agg")
    if args.cmd == "targets":
        samples, names, source = sample_images(args.source, num_images=1, image_size=args.size, coco_root=args.coco, seed=args.index)
        img, boxes, labels = samples[0]
        variants = ablation_variants(args.alpha, args.beta, args.rect_beta) if args.ablations else figure3_variants(args.alpha, args.beta, args.rect_beta)
        fig = targets_figure(img, boxes, labels, num_classes=len(names), variants=variants, class_names=names,
                             title=f"{source} image, {len(boxes)} boxes, {args.size} px input, stride-4 output map")
    elif args.cmd == "table":
        sweep = Path(args.sweep_dir)
        if (sweep / "table.csv").is_file():
            rows = read_table_csv(sweep / "table.csv")
        else:
            from .tables import build_table

            rows = build_table(sweep, ratio=False)[0].csv_rows()
        fig = table_figure(rows)
        args.out = args.out or str(sweep / "table.png")
    elif args.cmd == "batch":
        batches, names = training_batches(args.overrides)
        b = batches[0]
        H, W = b["images"].shape[-2:]
        fig = batch_figure(b, class_names=names or None, num_images=args.num_images,
                           title=f"first training batch, {H}x{W} px: {' '.join(args.overrides) or 'defaults'}")
    elif args.cmd == "time":
        runs: dict[str, Path] = {}
        for p in args.paths:
            runs.update(sweep_runs(p))
        fig = time_to_accuracy_figure(runs, metric=args.metric)
    else:
        from .checkpoints import load_model

        model = load_model(args.ckpt)
        H, W = model.input_size
        samples, _, _ = sample_images("shapes", num_images=args.num_images, image_size=(H, W), shape_classes=model.class_names)
        images = [s[0] for s in samples]
        dets, heat = run_model(model, images)
        fig = detections_figure(images, dets, class_names=model.class_names, heatmaps=heat,
                                targets=[{"boxes": s[1], "labels": s[2]} for s in samples], score_threshold=args.threshold)
    out = save_figure(fig, args.out, dpi=args.dpi)
    print(f"written: {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
