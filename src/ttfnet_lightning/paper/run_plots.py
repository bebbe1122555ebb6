"""A run's or a sweep's curves and pictures: AP against training time (:func:`time_to_accuracy_figure`,
from the runs' ``metrics.csv``) and detections on images (:func:`detections_figure`). matplotlib is
imported inside the functions only."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ttfnet_lightning.core.drawing import draw_detections, overlay_heatmap
from ttfnet_lightning.paper.figures import colormap, subplots
from ttfnet_lightning.paper.plots import PAPER_COLOR, log_x_axis, style_axes
from ttfnet_lightning.paper.values import paper_values


def read_validations(metrics_csv: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` that hold a validation (``time/train_seconds`` logged
    with it): ``{"hours": training hours (validation excluded), "step": ..., "val/AP": ..., ...}``."""
    out = []
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            if not r.get("time/train_seconds"):
                continue
            row = {
                "hours": float(r["time/train_seconds"]) / 3600,
                "step": float(r.get("time/step") or r.get("step") or "nan"),
            }
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


def _group_label(label: str) -> str:
    """A run's label without its seed (the runs of one table cell share a colour)."""
    return re.sub(r"(^|,)seed=\d+", "", label).strip(",") or label


def time_to_accuracy_figure(
    runs: Mapping[str, str | Path],
    *,
    metric: str = "val/AP",
    paper: bool = True,
    legend: bool = True,
    title: str | None = None,
) -> Any:
    """AP against training time (validation excluded) for runs ``{label: metrics.csv}``, runs of
    the same setting (labels equal up to ``seed=N``) in one colour; with ``paper`` a second panel
    shows the paper's Table 7 (COCO AP against training hours on 8 GTX 1080Ti). Returns a Figure."""
    fig, axes = subplots(1, 2 if paper else 1, (12 if paper else 6.5, 4.2))
    ax = axes[0, 0]
    groups = list(dict.fromkeys(_group_label(k) for k in runs))
    cmap = colormap("tab10" if len(groups) <= 10 else "tab20")
    seen: set[str] = set()
    for label, path in runs.items():
        v = [r for r in read_validations(path) if metric in r]
        if not v:
            continue
        g = _group_label(label)
        ax.plot(
            [r["hours"] * 60 for r in v],
            [r[metric] for r in v],
            marker="o",
            ms=3,
            color=cmap(groups.index(g) % cmap.N),
            label=None if g in seen else g,
        )
        seen.add(g)
    ax.set_xlabel("training time (minutes, validation excluded)")
    style_axes(ax, title or f"ours: {metric} against training time", metric)
    if legend and seen:
        ax.legend(fontsize=6, ncol=1 + len(seen) // 10)
    if paper:
        ax = axes[0, 1]
        for method, backbone, _fps, hours, ap in paper_values().get("table7", {}).get("rows", []):
            ttf = method.startswith("TTFNet")
            ax.scatter(
                hours, ap, s=25, c=PAPER_COLOR if ttf else "grey", marker="s" if ttf else "o", zorder=3 if ttf else 2
            )
            ax.annotate(
                f"{method} {backbone}",
                (hours, ap),
                textcoords="offset points",
                xytext=(3, 2),
                fontsize=6,
                color=PAPER_COLOR if ttf else "dimgrey",
            )
        log_x_axis(ax, [2, 5, 10, 20, 50])
        ax.set_xlabel("training hours (8 GTX 1080Ti, log scale)")
        style_axes(ax, "paper, Table 7: COCO AP against training time", "AP")
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
        drawn = draw_detections(
            big,
            det["boxes"] * f,
            det["labels"],
            det["scores"],
            class_names=class_names,
            score_threshold=score_threshold,
        )
        k = int((det["scores"] >= score_threshold).sum())
        axes[0, j].imshow(drawn.permute(1, 2, 0).numpy())
        axes[0, j].set_title(f"{k} detections, score >= {score_threshold:g}", fontsize=8)
        if heatmaps is not None:
            over = overlay_heatmap(big, heatmaps[j], alpha=0.6, vmax=None)
            if targets is not None and len(targets[j]["boxes"]):
                t = targets[j]
                over = draw_detections(
                    over, t["boxes"] * f, t["labels"], class_names=class_names, colors=[(255, 255, 255)] * 10_000
                )
            axes[1, j].imshow(over.permute(1, 2, 0).numpy())
            axes[1, j].set_title(
                f"heatmap / its max ({float(heatmaps[j].max()):.2f})" + (", true boxes" if targets is not None else ""),
                fontsize=8,
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
