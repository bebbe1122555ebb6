"""The pictures of an error analysis (:mod:`ttfnet_lightning.training.error_analysis`).

:func:`save_analysis_figures`: per-class AP bars, precision-recall curves, the confusion matrix, F1
against the score threshold and AP by object size, with matplotlib (imported inside the functions:
``pip install -e .[viz]``; figures are ``matplotlib.figure.Figure``, pyplot's global state is not
used). :func:`save_worst_images`: the images with the most errors, ground truth beside predictions,
drawn with :mod:`ttfnet_lightning.core.drawing` (PIL, no matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ttfnet_lightning.core.drawing import class_color, draw_detections

__all__ = [
    "per_class_figure",
    "pr_figure",
    "confusion_figure",
    "f1_figure",
    "size_figure",
    "save_analysis_figures",
    "save_worst_images",
]

MANY = 20  # more classes: the per-class chart shows the top and bottom TOP_N, the curves no legend
TOP_N = 10
GOOD, BAD = (40, 170, 60), (230, 40, 40)  # matched / error boxes of the worst images


def _figure(w: float, h: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _ap_text(v: float) -> str:
    return "n/a" if v < 0 else f"{v:.1f}"


def per_class_figure(per_class: Sequence[dict[str, Any]]) -> Any:
    """Horizontal AP / AP50 bars per class, best first; with more than ``MANY`` classes the top and
    bottom ``TOP_N`` of those with ground truth."""
    rows = sorted((r for r in per_class if r["AP"] >= 0), key=lambda r: -r["AP"])
    title = f"AP per class (COCOeval, {len(rows)} classes with ground truth)"
    if len(rows) > MANY:
        title = f"AP per class: top {TOP_N} and bottom {TOP_N} of the {len(rows)} with ground truth"
        rows = rows[:TOP_N] + rows[-TOP_N:]
    fig, (ax,) = _figure(7, 1.2 + 0.32 * max(len(rows), 1))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["AP50"] for r in rows], height=0.4, color="#9ecae1", label="AP50")
    ax.barh(y + 0.2, [r["AP"] for r in rows], height=0.4, color="#3182bd", label="AP (IoU 0.5:0.95)")
    for i, r in enumerate(rows):
        ax.text(
            max(r["AP50"], r["AP"]) + 1,
            i,
            f"{r['AP']:.1f} / {r['AP50']:.1f}  ({r['num_gt']} box{'es' * (r['num_gt'] != 1)})",
            va="center",
        )
    ax.set_yticks(y, [r["class"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 140)
    ax.set_xlabel("AP (%)")
    fig.legend(loc="outside lower center", ncol=2, fontsize="small")
    ax.set_title(title)
    return fig


def _curve_axes(ax: Any, x: np.ndarray, curves: np.ndarray, overall: np.ndarray, names: Sequence[str]) -> None:
    """Per-class curves (thin; labelled when few), the overall one thick and black."""
    few = len(names) <= 10
    for k, (name, c) in enumerate(zip(names, curves)):
        if not np.all(np.isnan(c)):
            color = np.array(class_color(k)) / 255 if few else "0.6"
            ax.plot(x, c, lw=1 if few else 0.6, alpha=1 if few else 0.4, color=color, label=name if few else None)
    ax.plot(x, overall, lw=2.5, color="black", label="all classes")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)


def pr_figure(pr: dict[str, Any], class_names: Sequence[str]) -> Any:
    """Precision against recall per class and their mean, at IoU 0.5 and averaged over 0.5:0.95."""
    fig, axes = _figure(11, 4.6, 2)
    for ax, key, what in ((axes[0], "at50", "IoU 0.5"), (axes[1], "mean", "mean over IoU 0.5:0.95")):
        overall = pr[f"overall_{key}"]
        _curve_axes(ax, pr["recall"], pr[key], overall, class_names)
        ap = np.nanmean(overall) * 100 if not np.all(np.isnan(overall)) else float("nan")
        ax.set_title(f"{what}: mean over classes = {'AP50' if key == 'at50' else 'AP'} {ap:.1f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision (interpolated)")
    axes[0].legend(fontsize="small", loc="lower left")
    fig.suptitle("precision-recall (COCOeval, 101 recall points, up to 100 detections per image)")
    return fig


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], *, iou: float, score_threshold: float) -> Any:
    """Counts, coloured by each row's share (rows: ground truth + background = false detections;
    columns: predicted + background = missed)."""
    K = len(class_names)
    side = min(3 + 0.45 * (K + 1), 16)
    fig, (ax,) = _figure(side + 1.5, side)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row")
    if K <= MANY:
        for i, j in np.ndindex(cm.shape):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    labels = [*class_names, "background"]
    size = "medium" if K <= MANY else "xx-small"
    ax.set_xticks(range(K + 1), [*class_names, "missed"], rotation=45 if K > 4 else 0, ha="right", fontsize=size)
    ax.set_yticks(range(K + 1), [*labels[:-1], "false det."], fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(
        f"confusion matrix: IoU >= {iou:g}, score >= {score_threshold:.3f}\n(class-agnostic COCOeval matching)"
    )
    return fig


def f1_figure(f1: dict[str, Any], class_names: Sequence[str]) -> Any:
    """Pooled precision, recall and F1 against the score threshold, F1 per class, the best threshold."""
    fig, (ax,) = _figure(8.5, 4.6)
    t = f1["thresholds"]
    _curve_axes(ax, t, f1["f1_per_class"], f1["f1"], class_names)
    ax.lines[-1].set_label("F1, all classes pooled")
    ax.plot(t, f1["precision"], lw=1.5, ls="--", color="tab:blue", label="precision, pooled")
    ax.plot(t, f1["recall"], lw=1.5, ls=":", color="tab:red", label="recall, pooled")
    best = f1["best"]
    if best:
        ax.axvline(best["threshold"], color="0.3", lw=1)
        text = f"best: score >= {best['threshold']:.3f}\nF1 {best['f1']:.3f}"
        ax.annotate(
            f"{text} (P {best['precision']:.2f}, R {best['recall']:.2f})",
            (best["threshold"], best["f1"]),
            xytext=(10, 10),
            textcoords="offset points",
        )
    ax.set_xlabel("score threshold")
    ax.set_ylabel("F1 / precision / recall")
    ax.set_title(f"F1 against confidence at IoU 0.5 ({f1['num_gt']} ground-truth boxes)")
    fig.legend(fontsize="small", loc="outside right upper")
    return fig


def size_figure(sizes: Sequence[dict[str, Any]]) -> Any:
    """AP and AP50 for all / small / medium / large objects, with their ground-truth counts."""
    fig, (ax,) = _figure(6, 3.8)
    x = np.arange(len(sizes))
    for dx, key, color in ((-0.2, "AP50", "#9ecae1"), (0.2, "AP", "#3182bd")):
        values = [max(r[key], 0) for r in sizes]
        ax.bar(x + dx, values, width=0.4, color=color, label=key if key == "AP50" else "AP (IoU 0.5:0.95)")
        for xi, r, v in zip(x, sizes, values):
            ax.text(xi + dx, v + 1, _ap_text(r[key]), ha="center", fontsize="small")
    ax.set_xticks(x, [f"{r['size']}\narea {r['area_range']}\n{r['num_gt']} boxes" for r in sizes])
    ax.set_ylim(0, max([r["AP50"] for r in sizes] + [1]) * 1.2 + 5)
    ax.set_ylabel("AP (%)")
    ax.set_title("AP by object size (COCO area ranges)")
    ax.legend(fontsize="small")
    return fig


def save_analysis_figures(a: Any, out: Path, *, dpi: int = 80) -> dict[str, Path]:
    """The matplotlib figures of an :class:`~ttfnet_lightning.training.error_analysis.Analysis` as
    ``out/<name>.png``; returns ``{name: path}``."""
    figures = {
        "per_class_ap": per_class_figure(a.per_class),
        "pr_curves": pr_figure(a.pr, a.class_names),
        "confusion_matrix": confusion_figure(a.confusion, a.class_names, iou=a.iou, score_threshold=a.score_threshold),
        "f1_confidence": f1_figure(a.f1, a.class_names),
        "size_ap": size_figure(a.sizes),
    }
    paths = {}
    for name, fig in figures.items():
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=dpi)
    return paths


def _panel(
    image: Tensor, parts: Sequence[tuple[dict[str, Any], tuple[int, int, int]]], names: Sequence[str], height: int
) -> Tensor:
    """``image`` (3, H, W) uint8 scaled to ``height`` with each part's boxes (``_boxes`` dicts) in its colour."""
    scale = height / image.shape[-2]
    w = max(1, round(image.shape[-1] * scale))
    image = torch.nn.functional.interpolate(image[None].float(), size=(height, w), mode="bilinear")[0]
    image = image.round().clamp(0, 255).to(torch.uint8)
    for boxes, color in parts:
        if boxes["boxes"]:
            scores = None if boxes["scores"] is None else torch.tensor(boxes["scores"])
            image = draw_detections(
                image,
                torch.tensor(boxes["boxes"]) * scale,
                torch.tensor(boxes["labels"]),
                scores,
                class_names=names,
                colors=[color] * len(names),
                width=2,
                font_size=12,
            )
    return image


def save_worst_images(
    worst: Sequence[dict[str, Any]],
    images: Sequence[Tensor],
    class_names: Sequence[str],
    path: Path,
    *,
    note: str = "",
    height: int = 240,
) -> Path | None:
    """The images with the most errors (``Analysis.worst``, ``images`` (3, H, W) uint8 in the same
    order) as one PNG: per image, the ground truth (green: found, red: missed) beside the detections
    (green: true positive, red: false); two pairs per row. None when there is no such image."""
    from PIL import Image, ImageDraw, ImageFont

    if not worst:
        return None
    pairs = []
    for w, img in zip(worst, images):
        gt = _panel(img, [(w["found_boxes"], GOOD), (w["missed_boxes"], BAD)], class_names, height)
        det = _panel(img, [(w["tp_boxes"], GOOD), (w["false_boxes"], BAD)], class_names, height)
        pairs.append((f"image {w['image_id']}: {w['missed']} missed, {w['false']} false", gt, det))
    head, gap = 22, 8
    pair_w = max(g.shape[-1] + d.shape[-1] for _, g, d in pairs) + gap
    cols = min(2, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * (pair_w + gap), head + rows * (height + head + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)  # Pillow >= 10.1
    except TypeError:
        font = ImageFont.load_default()
    legend = "left: ground truth (green found, red missed); right: detections (green correct, red false)"
    draw.text((gap, 4), f"{legend}{'; ' + note if note else ''}", fill="black", font=font)
    for i, (text, g, d) in enumerate(pairs):
        x, y = (i % cols) * (pair_w + gap) + gap, head + (i // cols) * (height + head + gap)
        draw.text((x, y + 4), text, fill="black", font=font)
        canvas.paste(Image.fromarray(g.permute(1, 2, 0).numpy()), (x, y + head))
        canvas.paste(Image.fromarray(d.permute(1, 2, 0).numpy()), (x + g.shape[-1] + gap // 2, y + head))
    canvas.save(path)
    return path
