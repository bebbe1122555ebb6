"""A paper-table sweep on disk: its grid expanded as Hydra's basic sweeper does (:func:`expand_grid`),
its jobs with their composed configs and outcomes (:class:`Job`, :func:`expand_sweep`), and whether a
finished job's box branch collapsed (:func:`box_collapse`)."""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.training.records import job_dirname, read_results

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One job of a sweep: its grid overrides, composed config, directory and outcome."""

    overrides: list[str]
    cfg: DictConfig
    dir: Path
    status: str  # finished | failed | running | missing
    results: dict[str, Any] = field(default_factory=dict)

    def metric(self, key: str) -> float | None:
        value = self.results.get("metrics", {}).get(key) if self.status == "finished" else None
        return None if value is None or not math.isfinite(float(value)) else float(value)

    @property
    def box_collapse(self) -> tuple[float, float] | None:
        """``(first, last)`` box loss when this finished job's box regression never learned (see
        :func:`box_collapse`), else None."""
        return box_collapse(self.dir / "metrics.csv") if self.status == "finished" else None


# the box loss of a run whose box branch learned falls far below its start within the first epochs
# (CPU tables: 4.9 -> 1.3); a collapsed one (wh head's ReLU dead: every predicted distance 0, GIoU
# loss 1) stays flat at reg_weight x 1
COLLAPSE_RATIO = 0.9


def box_collapse(metrics_csv: str | Path, *, ratio: float = COLLAPSE_RATIO) -> tuple[float, float] | None:
    """``(first, last)``: the mean ``train/loss_box`` of the first 3 and the last 5 logged steps of
    ``metrics.csv``, when the last is still above ``ratio`` x the first (the box branch never
    learned); None when it fell, or with fewer than 8 logged values (nothing to judge)."""
    try:
        with open(metrics_csv, newline="") as f:
            values = [float(r["train/loss_box"]) for r in csv.DictReader(f) if r.get("train/loss_box")]
    except (OSError, KeyError, ValueError):
        return None
    values = [v for v in values if math.isfinite(v)]
    if len(values) < 8:
        return None
    first, last = statistics.fmean(values[:3]), statistics.fmean(values[-5:])
    return (first, last) if last > ratio * first else None


def _job_status(job_dir: Path) -> tuple[str, dict[str, Any]]:
    results = read_results(job_dir) or {}
    if results.get("status") in ("finished", "failed"):
        return str(results["status"]), results
    if (job_dir / "config_resolved.yaml").is_file() or (job_dir / ".hydra").is_dir():
        return "running", results  # started, no result: running now or interrupted
    return "missing", results


def expand_grid(params: dict[str, Any], task: Sequence[str]) -> list[tuple[list[str], DictConfig]]:
    """Every job of a sweep over ``params`` (``hydra.sweeper.params``) with the command line
    ``task``, expanded as Hydra's basic sweeper does (grid first, then the command line), each
    with its composed config (Hydra node included)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    grid = [f"{k}={v}" for k, v in params.items()]
    batches = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(grid + list(task)), max_batch_size=None
    )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return [(list(o), compose("train", overrides=list(o), return_hydra_config=True)) for o in batches[0]]
    finally:
        GlobalHydra.instance().clear()


def expand_sweep(sweep_dir: str | Path) -> list[Job]:
    """Every job of the sweep in ``sweep_dir`` (from its ``multirun.yaml``), found or not."""
    sweep_dir = Path(sweep_dir)
    mr_file = sweep_dir / "multirun.yaml"
    if not mr_file.is_file():
        raise FileNotFoundError(f"{mr_file} not found: is {sweep_dir} a sweep dir (multirun/<table>-<protocol>)?")
    mr = OmegaConf.load(mr_file)
    task = [str(o) for o in mr.hydra.overrides.task]
    params = OmegaConf.to_container(mr.hydra.sweeper.params, resolve=True) or {}
    jobs = []
    for overrides, cfg in expand_grid(params, task):
        job_dir = sweep_dir / job_dirname(list(cfg.hydra.overrides.task), params)
        status, results = _job_status(job_dir)
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        jobs.append(Job(overrides=overrides, cfg=job_cfg, dir=job_dir, status=status, results=results))
    return jobs
