"""The race of detectors (``experiment=race``, ``make race``; docs/race.md): each detector's accuracy against its
training time, from a race sweep's jobs.

A race sweep trains every detector of its grid (``method`` x ``seed``) for the same training-time budget
(:mod:`ttfnet_lightning.training.time_budget`), validating at fixed intervals of training time; each job's
``metrics.csv`` holds its validations with ``time/train_hours`` (validation excluded), its ``results.json`` the
final model's. :func:`read_race` gathers them per detector (the jobs found by the paper-table machinery,
:func:`~ttfnet_lightning.paper.sweeps.expand_sweep`, so missing, running and failed jobs are listed too),
:func:`race_summary` computes per detector and seed:

* the final ``val/AP`` and ``val/AP50`` (mean ± std over the finished seeds, and each seed's) and the training
  time used;
* the training time to reach each AP50 level (default 30, 50, 70): the first validation at or above the level,
  interpolated linearly from the validation before it (the time where the straight line between the two
  crosses the level); when the first validation already reaches it, that validation's time (an upper bound,
  marked ``≤``); "not reached" when no validation does.

:func:`write_race` writes ``race.md``, ``race.json`` and ``race.png`` (:mod:`ttfnet_lightning.paper.race_plot`)
into the sweep folder, and logs the table and the plot to the sweep's W&B group when its jobs log to W&B online
(offline: nothing). :class:`RaceOnMultirunEnd` runs it when the sweep ends; ``python -m ttfnet_lightning.race``
runs it by hand.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ttfnet_lightning.paper.race_plot import write_race_plot
from ttfnet_lightning.paper.run_plots import read_validations
from ttfnet_lightning.paper.sweeps import Job, expand_sweep
from ttfnet_lightning.paper.values import paper_values
from ttfnet_lightning.paper.wandb_report import save_report_if_online
from ttfnet_lightning.training.tracking import log_sweep_summary, wandb_offline

log = logging.getLogger(__name__)

__all__ = [
    "LEVELS",
    "SeedRun",
    "Detector",
    "detector_label",
    "time_to_level",
    "read_race",
    "race_summary",
    "race_markdown",
    "write_race",
    "RaceOnMultirunEnd",
]

LEVELS = (30.0, 50.0, 70.0)  # AP50 levels whose training time the race reports
METRICS = ("val/AP50", "val/AP")
# the detectors' names (model.method -> name; TTFNet's and CenterNet's backbone is added) and their rows in the
# paper's Table 7 (COCO, training hours on 8 GTX 1080Ti; paper/results.yaml)
NAMES = {
    "ttfnet": "TTFNet",
    "centernet": "CenterNet",
    "fcos": "FCOS-R18-FPN",
    "retinanet": "RetinaNet-R18-FPN",
    "faster_rcnn": "Faster R-CNN-R18-FPN",
    "ssdlite": "SSDlite-MobileNetV3",
}
PAPER_ROWS = {
    "ttfnet": (("TTFNet fast", "R18"), ("TTFNet", "R18")),
    "centernet": (("CenterNet", "R18"),),
    "fcos": (("FCOS", "R18-FPN"),),
    "retinanet": (("RetinaNet", "R18-FPN"),),
    "ssdlite": (("SSD300", "VGG16"),),  # the paper's SSD (VGG16, 300 px), not SSDlite
}


@dataclass
class SeedRun:
    """One job of the race: its seed, status, validations (``{"hours", "step", "val/AP", ...}`` in time order)
    and final metrics (``val/AP``, ``val/AP50``, ``hours``: results.json's, else the last validation's)."""

    seed: Any
    status: str
    dir: Path
    curve: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


@dataclass
class Detector:
    """One detector of the race (one ``method``) and its seeds' runs."""

    method: str
    label: str
    runs: list[SeedRun] = field(default_factory=list)


def detector_label(cfg: DictConfig) -> str:
    """A job's detector name: ``TTFNet-R18``, ``CenterNet-R18``, ``FCOS-R18-FPN``, ..."""
    method = str(cfg.model.method)
    name = NAMES.get(method, method)
    return f"{name}-{str(cfg.backbone.name).upper()}" if method in ("ttfnet", "centernet") else name


def time_to_level(
    curve: Sequence[dict[str, float]], level: float, metric: str = "val/AP50"
) -> tuple[float, bool] | None:
    """``(hours, bound)``: when ``curve`` (validations in time order) first reaches ``level`` of ``metric``,
    interpolated linearly between the validation before and the first at or above it (``bound`` False), or the
    first validation's time when it already reaches the level (``bound`` True: an upper bound); None when no
    validation reaches it."""
    points = [(float(r["hours"]), float(r[metric])) for r in curve if metric in r and math.isfinite(float(r[metric]))]
    for i, (hours, value) in enumerate(points):
        if value < level:
            continue
        if i == 0:
            return hours, True
        h0, v0 = points[i - 1]
        return h0 + (level - v0) / (value - v0) * (hours - h0), False
    return None


def _final(job: Job, curve: list[dict[str, float]]) -> dict[str, float]:
    metrics = job.results.get("metrics", {}) if job.status == "finished" else {}
    if not metrics and curve:  # not finished: its last validation so far
        metrics = {**curve[-1], "time/train_hours": curve[-1]["hours"]}
    out = {k: float(metrics[k]) for k in METRICS if k in metrics}
    if "time/train_hours" in metrics:
        out["hours"] = float(metrics["time/train_hours"])
    return out


def read_race(sweep_dir: str | Path) -> tuple[list[Detector], list[Job]]:
    """The race's detectors (in the grid's order) with their seeds' curves and final metrics, and its jobs."""
    jobs = expand_sweep(sweep_dir)
    if not jobs:
        raise ValueError(f"{sweep_dir}: the sweep has no jobs")
    if jobs[0].cfg.get("budget", {}).get("train_minutes") is None:
        raise ValueError(f"{sweep_dir} is not a race: its jobs have no training-time budget (budget.train_minutes)")
    detectors: dict[str, Detector] = {}
    for job in jobs:
        method = str(job.cfg.model.method)
        det = detectors.setdefault(method, Detector(method=method, label=detector_label(job.cfg)))
        path = job.dir / "metrics.csv"
        curve = [r for r in read_validations(path) if all(m in r for m in METRICS)] if path.is_file() else []
        curve.sort(key=lambda r: r["hours"])
        det.runs.append(SeedRun(job.cfg.get("seed"), job.status, job.dir, curve, _final(job, curve)))
    for det in detectors.values():
        det.runs.sort(key=lambda r: (0, int(r.seed), "") if str(r.seed).isdigit() else (1, 0, str(r.seed)))
    return list(detectors.values()), jobs


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _paper(method: str) -> list[dict[str, Any]]:
    rows = paper_values().get("table7", {}).get("rows", [])
    wanted = PAPER_ROWS.get(method, ())
    return [{"method": m, "backbone": b, "fps": f, "hours": h, "AP": ap} for m, b, f, h, ap in rows if (m, b) in wanted]


def _detector_summary(det: Detector, levels: Sequence[float]) -> dict[str, Any]:
    finished = [r for r in det.runs if r.status == "finished"]
    out: dict[str, Any] = {
        "method": det.method,
        "label": det.label,
        "seeds": [r.seed for r in det.runs],
        "status": {str(r.seed): r.status for r in det.runs},
        "final": {},
        "to_AP50": {},
        "paper_table7": _paper(det.method),
        "curves": {str(r.seed): r.curve for r in det.runs},
    }
    for key in (*METRICS, "hours"):
        per_seed = {str(r.seed): r.final[key] for r in finished if key in r.final}
        out["final"][key] = {**_stats(list(per_seed.values())), "per_seed": per_seed}
    for level in levels:
        per_seed, bound = {}, {}
        for r in det.runs:
            hit = time_to_level(r.curve, level)
            per_seed[str(r.seed)] = None if hit is None else hit[0]
            bound[str(r.seed)] = bool(hit and hit[1])
        reached = [h for h in per_seed.values() if h is not None]
        out["to_AP50"][f"{level:g}"] = {
            **_stats(reached),
            "reached": len(reached),
            "of": len(per_seed),
            "per_seed": per_seed,
            "upper_bound": bound,
        }
    return out


def race_summary(detectors: Sequence[Detector], jobs: Sequence[Job], *, levels: Sequence[float] = LEVELS) -> dict:
    """What ``race.json`` holds: the race's setting (budget, data, seeds), its jobs' counts and wall clock, and per
    detector the final metrics, the training time to each AP50 level and the curves (hours: training hours,
    validation excluded)."""
    cfg = jobs[0].cfg
    dm = cfg.get("data", {}).get("datamodule", {})
    finished = [j.results for j in jobs if j.status == "finished"]
    wall = [r.get("wall_seconds_total", r.get("wall_seconds_last_session")) or 0.0 for r in finished]
    return {
        "sweep": jobs[0].dir.parent.name,
        "levels": [float(v) for v in levels],
        "budget": {
            "train_minutes": cfg.budget.get("train_minutes"),
            "val_every_minutes": cfg.budget.get("val_every_minutes"),
        },
        "data": {k: dm.get(k) for k in ("input_size", "num_train", "num_val", "batch_size") if k in dm},
        "jobs": {s: sum(j.status == s for j in jobs) for s in ("finished", "running", "failed", "missing")},
        "wall_hours_finished_jobs": sum(wall) / 3600,
        "detectors": [_detector_summary(d, levels) for d in detectors],
    }


def _minutes(hours: float | None) -> str:
    return "–" if hours is None else f"{60 * hours:.1f}"


def _mean_std(stat: dict[str, Any], scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "–"
    return f"{scale * stat['mean']:.1f}" + ("" if stat["std"] is None else f" ± {scale * stat['std']:.1f}")


def _level_cell(stat: dict[str, Any]) -> str:
    if not stat["reached"]:
        return "not reached"
    text = ("≤ " if any(stat["upper_bound"].values()) else "") + _mean_std(stat, 60.0)
    return text if stat["reached"] == stat["of"] else f"{text} ({stat['reached']}/{stat['of']})"


def _seeds_cell(final: dict[str, Any]) -> str:
    return ", ".join(f"{v:.1f}" for v in final["per_seed"].values()) or "–"


def race_markdown(summary: dict[str, Any]) -> str:
    """``race.md``: one row per detector, then how to read it."""
    levels = [f"{v:g}" for v in summary["levels"]]
    head = ["detector", "seeds", "AP50", "AP", "AP50 per seed", "AP per seed", "training min"]
    head += [f"min to AP50 {v}" for v in levels] + ["paper Table 7: AP, TT h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in summary["detectors"]:
        fin = d["final"]
        counts = {k: sum(s == k for s in d["status"].values()) for k in ("finished", "running", "failed", "missing")}
        seeds = f"{counts.pop('finished')}/{len(d['seeds'])} finished" + "".join(
            f", {v} {k}" for k, v in counts.items() if v
        )
        paper = "; ".join(f"{p['method']} {p['backbone']}: {p['AP']}, {p['hours']}" for p in d["paper_table7"])
        cells = [d["label"], seeds, _mean_std(fin["val/AP50"]), _mean_std(fin["val/AP"])]
        cells += [_seeds_cell(fin["val/AP50"]), _seeds_cell(fin["val/AP"]), _mean_std(fin["hours"], 60.0)]
        cells += [_level_cell(d["to_AP50"][v]) for v in levels] + [paper or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    b, data, jobs = summary["budget"], summary["data"], summary["jobs"]
    notes = [
        f"Budget: {b['train_minutes']:g} min of training per job (validation excluded), a validation about every "
        f"{b['val_every_minutes']:g} min and one of the final model; built-in data {data}.",
        "AP50, AP: the final model's val AP (COCO, %), mean ± std over the finished seeds, then each seed's; "
        "training min: the training time each job used (it stops at the first step past the budget).",
        "min to AP50 L: training minutes until the first validation at or above L, interpolated linearly from "
        "the validation before it; ≤: the first validation already reached it (an upper bound); (k/n): only k of "
        "n seeds reached it (mean over those); not reached: no validation of any seed did (a seed still running "
        "or failed: its validations so far).",
        "paper Table 7: COCO val2017 AP and training hours on 8 GTX 1080Ti (SSD300 is the paper's VGG16 SSD, "
        "not SSDlite); another data set, scale and machine: compare the order, not the numbers (docs/race.md).",
        f"Jobs: {', '.join(f'{v} {k}' for k, v in jobs.items() if v)}; wall clock of the finished jobs "
        f"{60 * summary['wall_hours_finished_jobs']:.0f} min (all their sessions).",
    ]
    title = f"# The race ({summary['sweep']}): AP against training time\n\n"
    return title + "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"


def race_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per detector and seed (the W&B table): final AP50, AP, training hours, hours to each level."""
    rows = []
    for d in summary["detectors"]:
        for seed in d["seeds"]:
            s = str(seed)
            row = {"detector": d["label"], "seed": s, "status": d["status"][s]}
            row |= {k: d["final"][k]["per_seed"].get(s) for k in (*METRICS, "hours")}
            row |= {f"hours_to_AP50_{v}": t["per_seed"].get(s) for v, t in d["to_AP50"].items()}
            rows.append(row)
    return rows


def _log_wandb(jobs: Sequence[Job], sweep_dir: Path, summary: dict[str, Any], png: Path) -> None:
    """The table and the plot as one more run of the sweep's W&B group, and the sweep's report: only when its jobs
    log to W&B online (offline or no W&B logger: nothing)."""
    cfg = jobs[0].cfg
    lg = next((v for v in (cfg.get("logger") or {}).values() if str(v.get("_target_", "")).endswith("WandbLogger")), 0)
    if not lg or wandb_offline(lg.get("offline")):
        log.info("the race is not logged to W&B: its jobs log offline or not to W&B")
        return
    try:
        images = {"plot": png} if png.is_file() else {}
        log_sweep_summary(cfg, sweep_dir, name="race", rows=race_rows(summary), images=images)
    except Exception as exc:  # the files are on disk either way
        log.warning("could not log the race to W&B: %s: %s", type(exc).__name__, exc)
    save_report_if_online(sweep_dir, cfg)  # AP against training hours of every job (never raises)


def write_race(
    sweep_dir: str | Path, *, levels: Sequence[float] = LEVELS, wandb: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Write ``race.md``, ``race.json`` and ``race.png`` (with matplotlib, the ``viz`` extra) into the race's sweep
    folder, with ``wandb`` also to W&B (online only); returns the summary."""
    sweep_dir = Path(sweep_dir)
    detectors, jobs = read_race(sweep_dir)
    summary = race_summary(detectors, jobs, levels=levels)
    md = sweep_dir / "race.md"
    md.write_text(race_markdown(summary))
    (sweep_dir / "race.json").write_text(json.dumps(summary, indent=1, default=str))
    png = write_race_plot(detectors, sweep_dir / "race.png", levels=levels)
    if wandb:
        _log_wandb(jobs, sweep_dir, summary, sweep_dir / "race.png")
    if not quiet:
        print(md.read_text())
        print(f"written: {md}, {sweep_dir / 'race.json'}" + (f", {png}" if png else ""))
    return summary


class RaceOnMultirunEnd(Callback):
    """Hydra callback (``hydra.callbacks`` of ``experiment=race``): writes the race's files when its sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # in a process of its own, as the tables aggregator: this one's Hydra is still initialised, and a failure
        # here must not turn a finished sweep into an error (its jobs are on disk either way)
        sweep_dir = str(config.hydra.sweep.dir)
        wandb = any(str(lg.get("_target_", "")).endswith("WandbLogger") for lg in (config.get("logger") or {}).values())
        rc = subprocess.call(
            [sys.executable, "-m", "ttfnet_lightning.race", sweep_dir, *(["--wandb"] if wandb else [])]
        )
        if rc:
            log.error(
                "could not write the race of %s (exit %d); run python -m ttfnet_lightning.race %s",
                sweep_dir,
                rc,
                sweep_dir,
            )
