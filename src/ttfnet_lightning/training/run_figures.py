"""A run's results plot (``<run>/results.png``, from its ``metrics.csv``) and what a finished run
writes at its end (:func:`finish_run_figures`: the plot and the error analysis of its last
validation, ``<run>/analysis/``, also logged to W&B).

``results.png``: the loss terms and the learning rate against the training step, the validation
AP / AP50 against the step and against training hours (``time/train_hours``, validation excluded).
matplotlib is imported inside the functions (``pip install -e .[viz]``); without it the plot is
skipped with one log line. ``python -m ttfnet_lightning.viz run <run>`` makes it for any run folder.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttfnet_lightning.training.error_analysis import ANALYSIS_DIR, write_error_analysis

log = logging.getLogger(__name__)

__all__ = ["RESULTS_PNG", "read_metrics", "results_figure", "write_results_figure", "finish_run_figures"]

RESULTS_PNG = "results.png"
AP_KEYS = ("val/AP", "val/AP50")


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_metrics(metrics_csv: str | Path) -> dict[str, list[tuple[float, float, float | None]]]:
    """``{key: [(step, value, training hours or None), ...]}`` of a run's ``metrics.csv`` (every
    logged key; the hours are those logged in the same row, i.e. with each validation).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file has no ``step`` column."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.csv at {path} (a run folder holds one after its first logged step)")
    series: dict[str, list[tuple[float, float, float | None]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "step" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no 'step' column; columns: {reader.fieldnames}")
        for row in reader:
            step, hours = _number(row.get("step")), _number(row.get("time/train_hours"))
            for key, text in row.items():
                value = _number(text)
                if step is not None and value is not None and key not in ("step", "epoch"):
                    series.setdefault(key, []).append((step, value, hours))
    return series


def _plot(ax: Any, series: dict[str, list], keys: Sequence[str], *, missing: str, x: int = 0, marker: str = "") -> bool:
    """Lines of ``keys`` (x: 0 step, 2 hours) that have points, else the text "no ``missing`` in
    metrics.csv"; whether any was drawn. AP values of -1 (no ground truth of a size) are left out."""
    drawn = False
    for key in keys:
        pts = [
            (p[x], p[1])
            for p in series.get(key, [])
            if p[x] is not None and not (key.startswith("val/AP") and p[1] < 0)
        ]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=3, lw=1.3, label=key)
            drawn = True
    if drawn:
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, f"no {missing} in metrics.csv", ha="center", transform=ax.transAxes)
    return drawn


def results_figure(run_dir: str | Path) -> Any:
    """The run's results plot (a ``matplotlib.figure.Figure``, 2 x 2 panels) from ``<run_dir>/metrics.csv``."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    series = read_metrics(run_dir / "metrics.csv")
    losses = sorted(k for k in series if k.startswith("train/loss")) + [k for k in ("val/loss",) if k in series]
    lrs = sorted(k for k in series if k.startswith("train/lr"))
    title = _title(run_dir, series)
    fig = Figure(figsize=(11, 7), layout="constrained")
    (loss_ax, lr_ax), (step_ax, hour_ax) = fig.subplots(2, 2)
    if _plot(loss_ax, series, losses, missing="train/loss*") and all(p[1] > 0 for k in losses for p in series[k]):
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        loss_ax.yaxis.set_minor_formatter(NullFormatter())
    loss_ax.set(title="loss terms", xlabel="step", ylabel="loss")
    _plot(lr_ax, series, lrs, missing="train/lr* (LearningRateMonitor)")
    lr_ax.set(title="learning rate", xlabel="step", ylabel="learning rate")
    _plot(step_ax, series, AP_KEYS, missing="validation", marker="o")
    step_ax.set(title="validation AP", xlabel="step", ylabel="AP (%)")
    hours = [p[2] for k in AP_KEYS for p in series.get(k, []) if p[2] is not None]
    unit = "hours" if hours and max(hours) >= 1 else "minutes"
    if unit == "minutes":  # short runs: minutes read better
        series = {k: [(s, v, None if h is None else h * 60) for s, v, h in series.get(k, [])] for k in AP_KEYS}
    _plot(hour_ax, series, AP_KEYS, missing="validation with time/train_hours", x=2, marker="o")
    hour_ax.set(title="validation AP against training time", xlabel=f"training {unit} (validation excluded)")
    hour_ax.set_ylabel("AP (%)")
    fig.suptitle(title)
    return fig


def _title(run_dir: Path, series: dict[str, list]) -> str:
    """The run folder's name and its last validation."""
    last = {k: series[k][-1] for k in AP_KEYS if series.get(k)}
    if not last:
        return f"{run_dir.name}: no validation yet"
    step, _, hours = next(iter(last.values()))
    ap = ", ".join(f"{k.split('/')[-1]} {v[1]:.2f}" for k, v in last.items())
    when = f"step {step:.0f}" + (f", {_duration(hours)} of training" if hours is not None else "")
    name = run_dir.resolve().name
    name = name if len(name) <= 110 else name[:107] + "..."
    return f"{name}\nlast validation: {ap} ({when})"


def _duration(hours: float) -> str:
    seconds = hours * 3600
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min" if seconds < 3600 else f"{hours:.2f} h"


def write_results_figure(run_dir: str | Path, out: str | Path | None = None, *, dpi: int = 80) -> Path:
    """``results_figure(run_dir)`` saved as ``out`` (default ``<run_dir>/results.png``)."""
    path = Path(out) if out is not None else Path(run_dir) / RESULTS_PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    results_figure(run_dir).savefig(path, dpi=dpi)
    return path


def _val_images(trainer: Any, datamodule: Any) -> int | None:
    """How many validation images the last validation saw (its batches x batch size x processes),
    None when the trainer does not say (then: all)."""
    batches = sum(int(n) for n in (getattr(trainer, "num_val_batches", None) or []) if math.isfinite(n))
    if not batches or getattr(datamodule, "batch_size", None) is None:
        return None
    return batches * int(datamodule.batch_size) * int(getattr(trainer, "world_size", 1) or 1)


def finish_run_figures(out: str | Path, *, trainer: Any, datamodule: Any) -> None:
    """At the end of a finished run (global rank 0): ``<out>/results.png`` and the error analysis of
    the last validation's ``<out>/detections_val.json`` in ``<out>/analysis/``, both logged to the W&B
    logger among ``trainer.loggers``. A failure is logged, never raised (the run's own records come first)."""
    out = Path(out)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("%s/%s not written: it needs matplotlib (pip install -e .[viz])", out, RESULTS_PNG)
    else:
        try:
            png = write_results_figure(out)
            print(f"results plot: {png}")
            _log_png(trainer, "analysis/results", png)
        except Exception as exc:  # a plot must not fail a finished run
            log.warning("could not write %s/%s: %s", out, RESULTS_PNG, exc)
    dets = out / "detections_val.json"
    if not dets.is_file():
        log.info("no %s: no error analysis", dets)
        return
    try:
        write_error_analysis(
            dets,
            datamodule,
            out / ANALYSIS_DIR,
            num_images=_val_images(trainer, datamodule),
            loggers=list(getattr(trainer, "loggers", []) or []),
            step=int(trainer.global_step),
        )
    except Exception as exc:  # the same for the analysis
        log.warning("could not write the error analysis of %s: %s", dets, exc)


def _log_png(trainer: Any, key: str, png: Path) -> None:
    from pytorch_lightning.loggers import WandbLogger

    for lg in getattr(trainer, "loggers", []) or []:
        if isinstance(lg, WandbLogger):
            import wandb

            lg.experiment.log({key: wandb.Image(str(png)), "trainer/global_step": int(trainer.global_step)})
