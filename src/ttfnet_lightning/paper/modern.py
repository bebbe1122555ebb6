"""The modern training options measured against the paper's recipe (``experiment=modern``, ``make modern``) as a
table: one row per option (the paper's recipe first), the final ``val/AP50`` and ``val/AP`` as mean ± std over
the seeds, their difference to the paper's recipe paired by seed, and each seed's values.

The paper-table aggregator builds it (``python -m ttfnet_lightning.tables results/modern-cpu``; by itself when
the sweep ends): :func:`modern_table` is its layout for ``table.name: modern``. A job's option is read from its
composed config (:func:`option_of`), not from its directory name.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from ttfnet_lightning.data.datamodules import train_batches_per_epoch
from ttfnet_lightning.paper.layouts import Cell, Table
from ttfnet_lightning.paper.sweeps import Job

__all__ = ["modern_table", "option_of", "BASELINE", "OPTIONS"]

BASELINE = "step (paper)"  # the paper's recipe: step LR policy, no EMA, one input size
OPTIONS = (BASELINE, "ema", "cosine", "flat_cosine", "multiscale")  # the rows' order (others after them)
METRICS = {"AP50": "val/AP50", "AP": "val/AP"}


def option_of(cfg: DictConfig) -> str:
    """The modern options a job's config switches on (``cosine``, ``flat_cosine``, ``ema``, ``multiscale``,
    joined by `` + ``), or :data:`BASELINE` for none."""
    parts = []
    policy = str(cfg.schedule.get("lr_policy", "step"))
    if policy != "step":
        parts.append(policy)
    if (cfg.get("ema") or {}).get("enabled", False):
        parts.append("ema")
    if (cfg.get("multiscale") or {}).get("scales"):
        parts.append("multiscale")
    return " + ".join(parts) or BASELINE


def _optimizer_steps(job: Job) -> int | None:
    """Optimiser steps of a job: a finished job's own count (``global_step`` of its results), else the planned count
    on a sized data set (epochs x the training loader's batches per epoch)."""
    if job.status == "finished" and isinstance(job.results.get("global_step"), int):
        return int(job.results["global_step"])
    dm = job.cfg.get("data", {}).get("datamodule", {})
    try:
        num, batch = int(dm["num_train"]), int(dm["batch_size"])
        return train_batches_per_epoch(num, batch) * int(job.cfg.schedule.max_epochs)
    except (KeyError, TypeError, ValueError):
        return None


def _cells(jobs: Sequence[Job], metric: str) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for job in jobs:
        cell = cells.setdefault(option_of(job.cfg), Cell())
        cell.statuses.append(job.status)
        value = job.metric(metric)
        if value is not None:
            cell.values.append(value)
            cell.seeds.append(job.cfg.get("seed"))
    return cells


def _paired(option: Cell, base: Cell) -> Cell:
    """The per-seed differences option - baseline over the seeds both have (their mean ± std)."""
    b = dict(zip(base.seeds, base.values))
    diffs = [v - b[s] for s, v in zip(option.seeds, option.values) if s in b]
    return Cell(values=diffs, statuses=list(option.statuses))  # (n/N) when some seeds are missing


def _seed_cells(jobs: Sequence[Job]) -> dict[tuple[str, str], Cell]:
    """Each (option, ``<metric> seed <s>``): that job's value, or its status."""
    cells: dict[tuple[str, str], Cell] = {}
    for job in jobs:
        seed = job.cfg.get("seed")
        for name, key in METRICS.items():
            cell = cells.setdefault((option_of(job.cfg), f"{name} seed {seed}"), Cell())
            cell.statuses.append(job.status)
            value = job.metric(key)
            if value is not None:
                cell.values.append(value)
                cell.seeds.append(seed)
    return cells


def modern_table(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn: Callable[..., Any] | None = None) -> Table:
    """The table of an ``experiment=modern`` sweep's jobs (``paper`` and ``ratio_fn``: unused; the paper has no
    such table)."""
    per_metric = {name: _cells(jobs, key) for name, key in METRICS.items()}
    found = {option_of(j.cfg) for j in jobs}
    rows = [o for o in OPTIONS if o in found] + sorted(found - set(OPTIONS))
    seeds = sorted({j.cfg.get("seed") for j in jobs}, key=str)
    cells: dict[tuple[str, str], Cell] = {}
    for name, by_option in per_metric.items():
        for option, cell in by_option.items():
            cells[(option, name)] = cell
            if option != BASELINE and BASELINE in by_option:
                cells[(option, f"Δ{name}")] = _paired(cell, by_option[BASELINE])
    cells.update(_seed_cells(jobs))
    columns = ["AP50", "AP", "ΔAP50", "ΔAP", *(f"{m} seed {s}" for m in METRICS for s in seeds)]
    steps = sorted({s for s in (_optimizer_steps(j) for j in jobs) if s is not None})
    notes = [
        f"Final validation of each job (val/AP50, val/AP); ΔAP50, ΔAP: the option minus the paper's recipe "
        f"({BASELINE}: step LR policy, no EMA, one input size), mean ± std of the per-seed differences; "
        "then each seed's values.",
        f"Budget: {', '.join(map(str, steps)) or 'unknown'} optimiser steps per job"
        + (" (the jobs differ in steps: not the same budget!)" if len(steps) > 1 else " (every job the same)")
        + ".",
    ]
    spread = [c.std for (r, col), c in cells.items() if col == "AP50" and c.std is not None]
    if spread:
        notes.append(f"Seed-to-seed std of AP50 within an option: {statistics.fmean(spread):.2f} on average.")
    return Table(
        "modern",
        "Modern training options vs the paper's recipe (final val AP50 and AP, mean ± std over seeds)",
        rows,
        columns,
        cells,
        corner="option",
        notes=notes,
    )
