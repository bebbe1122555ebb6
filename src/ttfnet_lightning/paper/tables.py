"""A finished (or half-finished) paper-table sweep -> the paper's table, ours beside the paper's.

A table sweep (``experiment=tableN``, see ``conf/experiment/paper_table.yaml``) leaves in its sweep
dir Hydra's ``multirun.yaml`` (the grid and the command line) and one dir per job, named after the
job's varied settings, holding ``config_resolved.yaml`` and, once finished, ``results.json``.

How a table is built: the grid of ``multirun.yaml`` is expanded exactly as Hydra's basic sweeper
does, every job's config is composed again from the package's ``conf/`` (so a job that never ran
still has a cell), its directory is found by Hydra's own ``override_dirname``, and its cell in the
paper's layout comes from its config values (not from directory names). Each cell shows the mean
+- standard deviation over the finished seeds (``n/N`` when some are missing), the paper's value in
brackets, and ``missing``/``failed``/``running`` where no value exists. The Ratio columns of
Tables 2 and 3 are computed from the training boxes (:func:`ttfnet_lightning.paper.analyze.ambiguity_ratio`),
Table 4's FPS row comes from the jobs' ``results.json`` (``measure_fps``).

The same code runs as a Hydra callback (:class:`AggregateOnMultirunEnd`) at the end of every table
sweep. Published values: ``paper/results.yaml`` in this package.
"""

from __future__ import annotations

import csv
import logging
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ttfnet_lightning.paper.analyze import ambiguity_ratio
from ttfnet_lightning.paper.figures import save_figure
from ttfnet_lightning.paper.layouts import BUILDERS, Table
from ttfnet_lightning.paper.modern import modern_table
from ttfnet_lightning.paper.plots import table_figure
from ttfnet_lightning.paper.sweeps import COLLAPSE_RATIO, Job, expand_sweep
from ttfnet_lightning.paper.values import paper_values
from ttfnet_lightning.paper.verdicts import CPU_SEED_SPREAD, verdicts
from ttfnet_lightning.paper.wandb_report import save_report_if_online
from ttfnet_lightning.training.tracking import log_sweep_summary

log = logging.getLogger(__name__)

__all__ = ["build_table", "write_table", "write_plot", "uses_wandb", "aggregate", "AggregateOnMultirunEnd"]


def build_table(sweep_dir: str | Path, *, ratio: bool = True) -> tuple[Table, list[Job]]:
    """The paper-layout table of the sweep in ``sweep_dir`` and its jobs."""
    sweep_dir = Path(sweep_dir)
    jobs = expand_sweep(sweep_dir)
    if not jobs:
        raise ValueError(f"{sweep_dir}: the sweep has no jobs")
    table_cfg = jobs[0].cfg.get("table")
    name = None if table_cfg is None else table_cfg.get("name")
    builders = {**BUILDERS, "modern": modern_table}  # and the modern training options' sweep (paper/modern.py)
    if name not in builders:
        raise ValueError(
            f"{sweep_dir} is not a paper-table sweep (table.name = {name!r}; expected one of {sorted(builders)})"
        )
    ratio_fn = None
    if ratio:
        cache = sweep_dir / ".ratio_cache"

        def ratio_fn(cfg: DictConfig) -> float:
            return ambiguity_ratio(cfg, cache_dir=cache)

    table = builders[name](jobs, paper_values(), ratio_fn=ratio_fn)
    protocol = jobs[0].cfg.table.get("protocol")
    if protocol == "cpu":
        table.seed_spread = CPU_SEED_SPREAD
    table.verdicts = verdicts(table)
    counts = {s: sum(j.status == s for j in jobs) for s in ("finished", "running", "failed", "missing")}
    table.notes.append(
        f"Sweep {sweep_dir} (protocol {protocol}): {len(jobs)} jobs, "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        + "."
    )
    collapsed = [(j, j.box_collapse) for j in jobs]
    collapsed = [(j, c) for j, c in collapsed if c is not None]
    if collapsed:
        table.notes.append(
            f"† {len(collapsed)} finished job(s) whose box regression never learned (train/loss_box of the last steps "
            "above "
            f"{COLLAPSE_RATIO:g} x the first: a collapsed wh branch, every predicted distance 0): "
            + ", ".join(f"{j.dir.name} ({c[0]:.2f} -> {c[1]:.2f})" for j, c in collapsed)
            + ". Their AP measures the collapse (a training failure), not the setting's effect."
        )
    train_s = [j.results.get("metrics", {}).get("time/train_seconds") for j in jobs if j.status == "finished"]
    finished = [j.results for j in jobs if j.status == "finished"]
    wall = [r.get("wall_seconds_total", r.get("wall_seconds_last_session")) or 0.0 for r in finished]
    partial = sum(1 for r in finished if "wall_seconds_total" not in r and r.get("sessions", 1) != 1)
    if any(train_s):
        table.notes.append(
            "Training time (validation excluded) per finished job: "
            f"{statistics.fmean([t for t in train_s if t]) / 60:.1f} min on average; "
            f"wall clock of all finished jobs: {sum(wall) / 60:.0f} min (all sessions of each job"
            + (f"; {partial} resumed job(s) from an older checkpoint: last session only" if partial else "")
            + ")."
        )
    return table, jobs


def write_plot(table: Table, sweep_dir: str | Path) -> Path | None:
    """``table.png`` beside ``table.md``: the table as a plot (:func:`ttfnet_lightning.paper.plots.table_figure`),
    ours beside the paper's values. Needs matplotlib (the ``viz`` extra); without it nothing is
    written and a note is logged. Returns the path, or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.info("table.png not written: matplotlib is not installed (pip install -e '.[viz]')")
        return None

    return save_figure(table_figure(table.csv_rows(), name=table.name), Path(sweep_dir) / "table.png", dpi=80)


def write_table(table: Table, jobs: Sequence[Job], sweep_dir: str | Path, *, plot: bool = True) -> tuple[Path, Path]:
    """``table.md`` and ``table.csv`` (one row per cell, plus one per job) into ``sweep_dir``, and
    with ``plot`` its plot ``table.png`` (when matplotlib is installed, see :func:`write_plot`)."""
    sweep_dir = Path(sweep_dir)
    md = sweep_dir / "table.md"
    md.write_text(table.markdown())
    path = sweep_dir / "table.csv"
    rows = table.csv_rows()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["table"])
        writer.writeheader()
        writer.writerows(rows)
    with open(sweep_dir / "jobs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dir", "status", "val/AP", "val/AP50", "fps", "train_seconds", "overrides"])
        for j in jobs:
            m = j.results.get("metrics", {})
            writer.writerow(
                [
                    j.dir.name,
                    j.status,
                    m.get("val/AP"),
                    m.get("val/AP50"),
                    j.results.get("fps"),
                    m.get("time/train_seconds"),
                    " ".join(j.overrides),
                ]
            )
    if plot:
        try:
            write_plot(table, sweep_dir)
        except Exception as exc:  # a plotting failure must not cost the table
            log.warning("table.png not written: %s: %s", type(exc).__name__, exc)
    return md, path


def uses_wandb(jobs: Sequence[Job]) -> bool:
    """Whether the sweep's jobs log to W&B (their ``logger`` group has a W&B logger)."""
    return any(
        str(lg.get("_target_", "")).endswith("WandbLogger")
        for j in jobs[:1]
        for lg in (j.cfg.get("logger") or {}).values()
    )


def aggregate(sweep_dir: str | Path, *, ratio: bool = True, quiet: bool = False, wandb: bool = False) -> Table:
    """Build the table of a sweep, write ``table.md``, ``table.csv``, ``jobs.csv`` and ``table.png``
    into it, and with ``wandb`` (and jobs that log to W&B) log the plot and the cells as one more
    run of the sweep's W&B group (:func:`ttfnet_lightning.training.tracking.log_sweep_summary`)."""
    table, jobs = build_table(sweep_dir, ratio=ratio)
    md, path = write_table(table, jobs, sweep_dir)
    png = Path(sweep_dir) / "table.png"
    if wandb and uses_wandb(jobs):
        try:
            log_sweep_summary(
                jobs[0].cfg,
                sweep_dir,
                name=table.name,
                rows=table.csv_rows(),
                images={"plot": png} if png.is_file() else {},
            )
        except Exception as exc:  # the table is on disk either way
            log.warning("could not log the %s summary to W&B: %s", table.name, exc)
        save_report_if_online(sweep_dir, jobs[0].cfg)  # the sweep's W&B report (online only; never raises)
    if not quiet:
        print(table.markdown())
        print(f"written: {md}, {path}, {Path(sweep_dir) / 'jobs.csv'}" + (f", {png}" if png.is_file() else ""))
    return table


class AggregateOnMultirunEnd(Callback):
    """Hydra callback (``hydra.callbacks``): builds the table when a table sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # in a process of its own: this one's Hydra is still initialised, and a failure here must
        # not turn a finished sweep into an error (its results are on disk either way)
        sweep_dir = str(config.hydra.sweep.dir)
        wandb = any(str(lg.get("_target_", "")).endswith("WandbLogger") for lg in (config.get("logger") or {}).values())
        rc = subprocess.call(
            [sys.executable, "-m", "ttfnet_lightning.tables", sweep_dir, *(["--wandb"] if wandb else [])]
        )
        if rc:
            log.error(
                "could not build the table of %s (exit %d); run python -m ttfnet_lightning.tables %s",
                sweep_dir,
                rc,
                sweep_dir,
            )
