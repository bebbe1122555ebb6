"""Each paper table as a plot (:func:`table_figure`, also the aggregator's ``table.png``) and the axes
style that :mod:`ttfnet_lightning.paper.run_plots` shares. matplotlib is imported inside the functions only."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttfnet_lightning.paper.figures import colormap, subplots
from ttfnet_lightning.paper.values import paper_values


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
        out.append(
            {
                "table": str(r.get("table", "")),
                "row": str(r["row"]),
                "column": str(r["column"]),
                "mean": _float(r.get("mean")),
                "std": _float(r.get("std")),
                "values": list(values or []),
                "paper": _float(r.get("paper")),
                "collapsed": int(_float(r.get("collapsed")) or 0),
            }
        )
    return out


def _paper() -> dict[str, Any]:

    return paper_values()


OURS_COLOR = "#1f77b4"
PAPER_COLOR = "#d62728"


def _bars(
    ax: Any,
    labels: Sequence[str],
    cells: Sequence[dict[str, Any] | None],
    *,
    color: str,
    ours: bool,
    offset: float = 0.0,
    width: float = 0.8,
    label: str | None = None,
) -> None:
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
        ax.bar(
            x,
            [c["paper"] if c and c["paper"] is not None else np.nan for c in cells],
            width,
            color=color,
            alpha=0.75,
            label=label,
        )


def _line(ax: Any, x: Sequence[float], cells: Sequence[dict[str, Any] | None], **kw: Any) -> None:
    """Means with std error bars, each seed a small dot; a cell with collapsed runs (the aggregator's
    dagger: box regression never learned) gets a black x."""
    pts = [(xi, c) for xi, c in zip(x, cells) if c and c["mean"] is not None]
    if not pts:
        return
    line = ax.errorbar(
        [p[0] for p in pts],
        [c["mean"] for _, c in pts],
        yerr=[c["std"] or 0 for _, c in pts],
        marker="o",
        capsize=2,
        **kw,
    )
    color = line.lines[0].get_color()
    for xi, c in pts:
        ax.scatter([xi] * len(c["values"]), c["values"], s=7, color=color, alpha=0.6, zorder=3)
        if c.get("collapsed"):
            ax.scatter([xi], [c["mean"]], s=60, marker="x", color="black", zorder=4)


def log_x_axis(ax: Any, ticks: Sequence[float]) -> None:
    """Log-scale x axis labelled at ``ticks`` only (no crowded minor labels)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = sorted(set(float(t) for t in ticks))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())


def style_axes(ax: Any, title: str, ylabel: str = "AP") -> None:
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def table_figure(
    rows: Sequence[Mapping[str, Any]] | str | Path, *, name: str | None = None, title: str | None = None
) -> Any:
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
    plotter = {
        "table1": _plot_table1,
        "table2": _plot_table2,
        "table3": _plot_table3,
        "table4": _plot_table4,
        "table5": _plot_table5,
        "table6": _plot_table6,
        "modern": _plot_modern,
    }.get(name, _plot_generic)
    fig = plotter(cells, paper.get(name, {}))
    collapsed = " x = runs whose box regression collapsed;" if any(r["collapsed"] for r in rows) else ""
    paper_net = "R18 / R34 / D53" if name == "table6" else "TTFNet-53"  # Table 6 compares backbones
    against = "the paper's recipe (no paper values)" if name == "modern" else f"paper (COCO, {paper_net})"
    fig.suptitle(
        title or f"{name}: ours (mean ± std over seeds, dots = seeds;{collapsed} this sweep's protocol) vs {against}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _plot_table1(cells: dict, p: dict) -> Any:
    cols = list(p.get("columns") or sorted({c for _, c in cells}))
    fig, axes = subplots(1, 2, (11, 3.8), squeeze=True)
    for ax, ours, color, t in ((axes[0], True, OURS_COLOR, "ours"), (axes[1], False, PAPER_COLOR, "paper")):
        _bars(ax, cols, [cells.get(("AP", c)) for c in cols], color=color, ours=ours)
        ax.set_xticks(range(len(cols)), cols, rotation=25, ha="right", fontsize=8)
        style_axes(ax, f"Table 1, regression weights: {t}")
    return fig


def _beta_cols(cells: dict, row: str) -> list[str]:
    return sorted({c for r, c in cells if r == row and _float(c) is not None}, key=float)


def _plot_table2(cells: dict, p: dict) -> Any:
    fig, axes = subplots(1, 3, (14, 3.8), squeeze=True)
    for mode, color in (("Agnostic", OURS_COLOR), ("Aware", "#ff7f0e")):
        cols = _beta_cols(cells, f"{mode} AP")
        _line(axes[0], [float(c) for c in cols], [cells.get((f"{mode} AP", c)) for c in cols], color=color, label=mode)
        if p:
            axes[1].plot(p["beta"], p[mode]["AP"], marker="s", color=color, ls="--", label=mode)
            axes[2].plot(p["beta"], p[mode]["Ratio"], marker="s", color=color, ls="--", label=f"paper {mode}")
        rc = _beta_cols(cells, f"{mode} Ratio %")
        _line(
            axes[2],
            [float(c) for c in rc],
            [cells.get((f"{mode} Ratio %", c)) for c in rc],
            color=color,
            label=f"ours {mode}",
        )
    betas = {float(c) for r, c in cells if _float(c) is not None} | set(p.get("beta", []))
    for ax, t, yl in (
        (axes[0], "ours: AP vs rectangle beta", "AP"),
        (axes[1], "paper: AP vs rectangle beta", "AP"),
        (axes[2], "ambiguous samples vs beta", "ambiguous %"),
    ):
        log_x_axis(ax, betas)
        ax.set_xlabel("beta (relative size of the rectangle)")
        style_axes(ax, t, yl)
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
    _bars(axes[0], labels, [cells.get((r, "AP")) for r in rows], color=OURS_COLOR, ours=True)
    _bars(axes[1], labels, [cells.get((r, "AP")) for r in rows], color=PAPER_COLOR, ours=False)
    _bars(
        axes[2],
        labels,
        [cells.get((r, "Ratio %")) for r in rows],
        color=OURS_COLOR,
        ours=True,
        offset=-0.2,
        width=0.4,
        label="ours",
    )
    _bars(
        axes[2],
        labels,
        [cells.get((r, "Ratio %")) for r in rows],
        color=PAPER_COLOR,
        ours=False,
        offset=0.2,
        width=0.4,
        label="paper",
    )
    axes[2].legend(fontsize=7)
    for ax, t, yl in (
        (axes[0], "ours: AP per kernel", "AP"),
        (axes[1], "paper: AP per kernel", "AP"),
        (axes[2], "ambiguous samples", "ambiguous %"),
    ):
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
        style_axes(ax, f"Table 3, {t}", yl)
    return fig


def _plot_table4(cells: dict, p: dict) -> Any:
    cols = [c for r, c in cells if r == "AP"]
    fig, axes = subplots(1, 2, (11, 4), squeeze=True)
    for c in cols:
        ap, fps = cells.get(("AP", c)), cells.get(("FPS", c))
        if ap and fps and ap["mean"] is not None and fps["mean"] is not None:
            axes[0].errorbar(
                fps["mean"],
                ap["mean"],
                xerr=fps["std"] or 0,
                yerr=ap["std"] or 0,
                marker="o",
                color=OURS_COLOR,
                capsize=2,
            )
            axes[0].annotate(c, (fps["mean"], ap["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if ap and fps and ap["paper"] is not None and fps["paper"] is not None:
            axes[1].plot(fps["paper"], ap["paper"], marker="s", color=PAPER_COLOR)
            axes[1].annotate(c, (fps["paper"], ap["paper"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for ax, t in ((axes[0], "ours (images/s on this machine's CPU)"), (axes[1], "paper (images/s on a GTX 1080Ti)")):
        ax.set_xlabel("FPS (model only, batch 1)")
        style_axes(ax, f"Table 4, shortcut convs (stage 2,3,4): {t}")
    return fig


_LR_COL = re.compile(r"LR (?P<lr>[0-9.e-]+) \((?P<mult>[0-9.]+)x\) (?P<sched>\S+)")


def _plot_table5(cells: dict, p: dict) -> Any:
    fig, axes = subplots(1, 2, (11, 4), squeeze=True)
    cols = list(dict.fromkeys(c for _, c in cells))
    cmap = colormap("viridis")
    mults = sorted(
        {float(m.group("mult")) for c in cols if (m := _LR_COL.match(c))}
        | {round(lr / p["default_lr"], 2) for lr in p.get("lr", [])}
    )
    color = {m: cmap(i / max(len(mults) - 1, 1)) for i, m in enumerate(mults)}
    for c in cols:
        m = _LR_COL.match(c)
        if not m:
            continue
        betas = sorted({r for r, cc in cells if cc == c and _float(r) is not None}, key=float)
        mult = float(m.group("mult"))
        _line(
            axes[0],
            [float(b) for b in betas],
            [cells.get((b, c)) for b in betas],
            color=color[mult],
            ls="-" if m.group("sched") == "1x" else "--",
            label=f"LR {float(m.group('lr')):g} ({mult:g}x) {m.group('sched')}",
        )
    if p:
        for i, lr in enumerate(p["lr"]):
            mult = round(lr / p["default_lr"], 2)
            for s, sched in enumerate(p["schedules"]):
                axes[1].plot(
                    p["beta"],
                    [row[2 * i + s] for row in p["AP"]],
                    marker="s",
                    color=color[mult],
                    ls="-" if s == 0 else "--",
                    label=f"LR {lr:g} ({mult:g}x) {sched}",
                )
    betas = {float(r) for r, _ in cells if _float(r) is not None} | set(p.get("beta", []))
    for ax, t in ((axes[0], "ours"), (axes[1], "paper")):
        log_x_axis(ax, betas)
        ax.set_xlabel("beta (regression kernel size)")
        style_axes(ax, f"Table 5, AP vs beta per learning rate: {t}")
        ax.legend(fontsize=7)
    return fig


def _plot_table6(cells: dict, p: dict) -> Any:
    rows = list(p.get("rows") or dict.fromkeys(r for r, _ in cells))
    cols = list(p.get("backbones") or dict.fromkeys(c for _, c in cells))
    fig, axes = subplots(1, 2, (11, 3.8), squeeze=True)
    w = 0.8 / max(len(rows), 1)
    cmap = colormap("tab10")
    for i, r in enumerate(rows):
        off = (i - (len(rows) - 1) / 2) * w
        _bars(axes[0], cols, [cells.get((r, c)) for c in cols], color=cmap(i), ours=True, offset=off, width=w, label=r)
        _bars(axes[1], cols, [cells.get((r, c)) for c in cols], color=cmap(i), ours=False, offset=off, width=w, label=r)
    for ax, t in ((axes[0], "ours"), (axes[1], "paper")):
        ax.set_xticks(range(len(cols)), cols)
        style_axes(ax, f"Table 6, long schedules: {t}")
        ax.legend(fontsize=7)
    return fig


def _plot_modern(cells: dict, p: dict) -> Any:
    """experiment=modern: final AP50 and AP per option (bars), and each option's difference to the paper's recipe
    paired by seed (the seeds' spread cancels)."""
    options = list(dict.fromkeys(r for r, c in cells if c == "AP50"))
    fig, axes = subplots(1, 2, (11, 3.8), squeeze=True)
    for k, metric in enumerate(("AP50", "AP")):
        for ax, column in ((axes[0], metric), (axes[1], f"Δ{metric}")):
            _bars(
                ax,
                options,
                [cells.get((o, column)) for o in options],
                color=("#1f77b4", "#ff7f0e")[k],
                ours=True,
                offset=0.2 * (2 * k - 1),
                width=0.38,
                label=column if ax is axes[1] else f"val/{metric}",
            )
    for ax, title in ((axes[0], "final val AP50 and AP per option"), (axes[1], "difference to the paper's recipe")):
        ax.set_xticks(range(len(options)), options, rotation=15, ha="right", fontsize=8)
        ax.legend(fontsize=7)
        style_axes(ax, title)
    axes[1].axhline(0, color="grey", lw=0.8)
    return fig


def _plot_generic(cells: dict, p: dict) -> Any:
    keys = [k for k, c in cells.items() if c["mean"] is not None or c["paper"] is not None]
    labels = [f"{r} / {c}" for r, c in keys]
    fig, axes = subplots(1, 1, (max(6, 0.5 * len(keys)), 3.8))
    ax = axes[0, 0]
    _bars(ax, labels, [cells[k] for k in keys], color=OURS_COLOR, ours=True, offset=-0.2, width=0.4, label="ours")
    _bars(ax, labels, [cells[k] for k in keys], color=PAPER_COLOR, ours=False, offset=0.2, width=0.4, label="paper")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    style_axes(ax, "cells", "value")
    ax.legend(fontsize=7)
    return fig
