"""The race's plot (``race.png``, :mod:`ttfnet_lightning.paper.race`): val AP50 and val AP against training time,
one colour per detector, each seed a thin line with its validations as dots and the mean over the seeds bold.
matplotlib is imported inside the functions only (the ``viz`` extra)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttfnet_lightning.paper.figures import colormap, save_figure, subplots
from ttfnet_lightning.paper.plots import style_axes

log = logging.getLogger(__name__)

__all__ = ["mean_curve", "race_figure", "write_race_plot"]


def mean_curve(curves: Sequence[Sequence[dict[str, float]]], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(hours, mean)`` of ``metric`` over the seeds' ``curves``, each interpolated linearly onto the union of
    their validation times within the span they all cover (from the latest first validation to the earliest
    last one); None without a curve. One curve: itself."""
    points = [
        (np.array([r["hours"] for r in c], dtype=float), np.array([r[metric] for r in c], dtype=float))
        for c in curves
        if c
    ]
    if not points:
        return None
    if len(points) == 1:
        return points[0]
    lo, hi = max(h[0] for h, _ in points), min(h[-1] for h, _ in points)
    grid = np.unique(np.concatenate([h for h, _ in points]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:
        return None
    return grid, np.mean([np.interp(grid, h, v) for h, v in points], axis=0)


def _unit(hours: float) -> tuple[str, float]:
    """The time axis' unit: minutes for races of up to 3 hours per job, else hours."""
    return ("minutes", 60.0) if hours <= 3.0 else ("hours", 1.0)


def _mean_and_label(det: Any, metric: str) -> tuple[tuple[np.ndarray, np.ndarray] | None, str, int]:
    """The bold curve of ``det``, its legend label and how many seeds it averages: the mean over its finished
    seeds (over every seed when none has finished), so that a seed still running, whose validations cover only the
    start, neither shortens the mean nor, when its first validation falls just before the others', removes it; the
    label counts the running seeds."""
    with_curve = [r for r in det.runs if r.curve]
    finished = [r for r in with_curve if r.status == "finished"] or with_curve
    n, others = len(finished), len(with_curve) - len(finished)
    label = f"{det.label} ({n} seed{'s' if n != 1 else ''}" + (f", {others} more running)" if others else ")")
    return mean_curve([r.curve for r in finished], metric), label, n


def _plot_detector(ax: Any, det: Any, metric: str, *, color: Any, scale: float) -> None:
    """One detector on ``ax``: each seed's ``metric`` a thin line with its validations as dots, the mean bold."""
    for run in det.runs:
        if run.curve:
            xs, ys = [scale * r["hours"] for r in run.curve], [r[metric] for r in run.curve]
            ax.plot(xs, ys, color=color, lw=0.8, alpha=0.45, marker="o", ms=2)
    mean, label, n = _mean_and_label(det, metric)
    if mean is not None:
        one = {"marker": "o", "ms": 3} if n == 1 else {}  # one seed: its validations as dots
        ax.plot(scale * mean[0], mean[1], color=color, lw=2.4, label=label, **one)


def race_figure(detectors: Sequence[Any], *, levels: Sequence[float] = (), title: str | None = None) -> Any:
    """val AP50 (with the ``levels`` as dotted lines) and val AP against training time for the race's
    ``detectors`` (:class:`~ttfnet_lightning.paper.race.Detector`). Returns a matplotlib Figure."""
    fig, axes = subplots(1, 2, (12, 4.6))
    cmap = colormap("tab10")
    longest = max((r.curve[-1]["hours"] for d in detectors for r in d.runs if r.curve), default=0.0)
    unit, scale = _unit(longest)
    for ax, metric in zip(axes[0], ("val/AP50", "val/AP")):
        for i, det in enumerate(detectors):
            _plot_detector(ax, det, metric, color=cmap(i % cmap.N), scale=scale)
        if metric == "val/AP50":
            for level in levels:
                ax.axhline(level, color="grey", lw=0.7, ls=":")
        ax.set_xlabel(f"training time ({unit}, validation excluded)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        style_axes(ax, f"{metric} against training time (thin: seeds, bold: mean)", metric)
    axes[0, 0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_race_plot(detectors: Sequence[Any], path: str | Path, *, levels: Sequence[float] = ()) -> Path | None:
    """``race.png`` at ``path``; None (and a note in the log) without matplotlib or on a plotting failure (the
    race's table is written either way)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.info("race.png not written: matplotlib is not installed (pip install -e '.[viz]')")
        return None
    try:
        fig = race_figure(detectors, levels=levels, title=f"The race: {Path(path).parent.name}")
        return save_figure(fig, path, dpi=90)
    except Exception as exc:  # a plotting failure must not cost the table
        log.warning("race.png not written: %s: %s", type(exc).__name__, exc)
        return None
