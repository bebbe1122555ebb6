"""A W&B report for a sweep on disk (any Hydra multirun, every paper table), built with
``wandb-workspaces`` (the ``report`` extra):

    python -m ttfnet_lightning.paper.wandb_report multirun/2026-12-05_10-00-00   # saves it (online)
    python -m ttfnet_lightning.paper.wandb_report results/table2-cpu --dry-run   # prints its panels

Its blocks, for the W&B runs of the sweep's group (``job_type`` other than ``summary``):

1. a paragraph: the sweep's command line, what it varies, how many jobs finished;
2. "AP against training hours": ``val/AP`` and ``val/AP50`` against ``time/train_hours``, the runs
   grouped by the varied config keys (seeds left out of the grouping: mean and standard deviation
   over them);
3. "Varied settings against AP": a parallel-coordinates panel, one axis per varied config key,
   then the best ``val/AP`` (summary ``val/AP.max``) and the training hours to reach it;
4. "Table": for a paper table the aggregator's ``table.md`` and, from the sweep's summary run
   (:func:`~ttfnet_lightning.training.tracking.log_sweep_summary`), the table's plot and cells; for
   other sweeps a table of the jobs (varied values, best and final AP, training minutes).

The varied config keys are those whose W&B config value (each job's ``.hydra/config.yaml`` as
:func:`~ttfnet_lightning.training.wandb_logger.wandb_config` sends it) differs between the jobs;
with fewer than two jobs, the keys the sweep's command line varies. Saving needs W&B online; the
report is saved at the end of a paper table's aggregation (``paper/tables.py``) when the jobs' W&B
logger is online, and at the end of any multirun by :class:`ReportOnMultirunEnd` where
``hydra.callbacks`` names it.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ttfnet_lightning.training.records import read_results
from ttfnet_lightning.training.tracking import run_identity, wandb_offline
from ttfnet_lightning.training.wandb_logger import wandb_config
from ttfnet_lightning.training.wandb_sweep import sweep_keys_from

log = logging.getLogger(__name__)

__all__ = ["SweepOnDisk", "read_sweep", "build_report", "save_report", "save_report_if_online", "ReportOnMultirunEnd"]

# W&B config keys that name the run or its files, not a setting (left out of the varied keys)
_IDENTITY_KEYS = ("name", "group", "tags", "project", "output_dir", "ckpt_path", "job_overrides", "logger.")
SEED_KEYS = ("seed",)  # replicates: not a grouping key of the AP curves


@dataclass
class SweepOnDisk:
    """A sweep folder read back: its command line, varied keys, jobs and one job's config."""

    dir: Path
    task: list[str]  # the sweep's command line (hydra.overrides.task of multirun.yaml)
    swept: list[str]  # the keys the sweep varies (sweeper params and sweep syntax)
    varied: list[str]  # the W&B config keys whose values differ between the jobs
    jobs: list[dict[str, Any]] = field(default_factory=list)  # dir, overrides, config (flat), results
    cfg: DictConfig | None = None  # the first job's config

    @property
    def table(self) -> str | None:
        table = None if self.cfg is None else self.cfg.get("table")
        return None if not table else str(table.get("name") or "table")


def _load(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable YAML file ({type(exc).__name__}: {exc})") from exc


def _varied_keys(flat_configs: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> list[str]:
    """The config keys whose values differ between the jobs, the swept ones first; with fewer than
    two jobs, the swept keys found in the config (a group choice ``backbone`` as ``backbone.name``)."""
    keys = [k for k in flat_configs[0] if not k.startswith(_IDENTITY_KEYS)] if flat_configs else []
    if len(flat_configs) >= 2:
        varied = [k for k in keys if len({repr(c.get(k)) for c in flat_configs}) > 1]
    else:
        varied = [k for k in keys if k in swept or (k.endswith(".name") and k[: -len(".name")] in swept)]
    order = {k: i for i, k in enumerate(swept)}  # the swept keys in the sweep's order, then the others
    return sorted(varied, key=lambda k: (order.get(k, len(order)), varied.index(k)))


def read_sweep(sweep_dir: str | Path) -> SweepOnDisk:
    """The sweep in ``sweep_dir``: Hydra's ``multirun.yaml`` and the job folders (those with a
    ``.hydra/config.yaml``).

    Raises:
        FileNotFoundError: no ``multirun.yaml``, or no job folder yet.
        ValueError: one of these files is not readable YAML."""
    sweep_dir = Path(sweep_dir)
    mr_file = sweep_dir / "multirun.yaml"
    if not mr_file.is_file():
        raise FileNotFoundError(f"{mr_file} not found: is {sweep_dir} the folder of a Hydra multirun?")
    mr = _load(mr_file)
    task = [str(t) for t in (OmegaConf.select(mr, "hydra.overrides.task", default=None) or [])]
    try:
        params = OmegaConf.to_container(mr.hydra.sweeper.params, resolve=True) or {}
    except Exception:  # no params, or params that need the jobs' context
        params = {}
    jobs = []
    for job_dir in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml")):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        cfg = _load(job_dir / ".hydra" / "config.yaml")
        try:
            flat = wandb_config(cfg)  # what the job sent to W&B
        except Exception as exc:  # an interpolation that needs the job's Hydra context
            raise ValueError(f"{job_dir / '.hydra' / 'config.yaml'}: does not resolve ({exc})") from exc
        jobs.append(
            {
                "dir": job_dir,
                "overrides": [str(o) for o in _load(overrides_file)] if overrides_file.is_file() else [],
                "config": flat,
                "results": read_results(job_dir) or {},
                "cfg": cfg,
            }
        )
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job folder (<job>/.hydra/config.yaml) yet")
    swept = sweep_keys_from(params, task)
    varied = _varied_keys([j["config"] for j in jobs], swept)
    return SweepOnDisk(dir=sweep_dir, task=task, swept=swept, varied=varied, jobs=jobs, cfg=jobs[0]["cfg"])


def _wandb_target(sweep: SweepOnDisk) -> tuple[str | None, str, str | None]:
    """``(entity, project, group)`` the sweep's jobs logged to (their W&B logger's settings, else
    the run identity of :func:`~ttfnet_lightning.training.tracking.run_identity`)."""
    cfg = sweep.cfg
    lg = next((v for v in (cfg.get("logger") or {}).values() if str(v.get("_target_", "")).endswith("WandbLogger")), {})
    project = str(lg.get("project") or cfg.get("project") or "ttfnet-lightning")
    ident = run_identity(cfg, overrides=[])
    group = lg.get("group") or ident["group"] or f"sweep-{sweep.dir.name}"
    return lg.get("entity"), project, str(group)


def _best_ap(job_dir: Path) -> float | None:
    """The largest ``val/AP`` of the job's ``metrics.csv`` (None without one)."""
    try:
        with open(job_dir / "metrics.csv", newline="") as f:
            values = [float(r["val/AP"]) for r in csv.DictReader(f) if r.get("val/AP")]
    except (OSError, KeyError, ValueError):
        return None
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else None


def jobs_markdown(sweep: SweepOnDisk) -> str:
    """One row per job: its varied values, status, best and final ``val/AP``, final ``val/AP50``,
    training minutes (``results.json``, ``metrics.csv``)."""
    fmt = lambda v, spec=".1f": "-" if v is None else format(float(v), spec)  # noqa: E731
    head = ["job", *sweep.varied, "status", "best val/AP", "val/AP", "val/AP50", "train min"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job in sweep.jobs:
        res = job["results"]
        m = res.get("metrics", {})
        seconds = m.get("time/train_seconds")
        cells = [job["dir"].name, *(str(job["config"].get(k)) for k in sweep.varied), res.get("status", "running")]
        cells += [fmt(_best_ap(job["dir"])), fmt(m.get("val/AP")), fmt(m.get("val/AP50"))]
        cells.append(fmt(None if seconds is None else seconds / 60))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _flat_config_column(key: str) -> Any:
    """A parallel-coordinates axis for the flat config key ``key`` (``kernel.beta``). wandb-workspaces
    0.4.13 writes ``Config("kernel.beta")`` as the nested accessor ``config:kernel.value.beta``;
    a flat dotted key is stored as ``{"kernel.beta": {"value": ...}}`` (its own note in
    ``expr.groupby_str_to_key``), i.e. ``config:kernel.beta.value``."""
    import wandb_workspaces.reports.v2 as wr

    class FlatConfigColumn(wr.ParallelCoordinatesPlotColumn):
        def _to_model(self) -> Any:
            model = super()._to_model()
            model.accessor = f"config:{self.metric.name}.value"
            return model

    return FlatConfigColumn(metric=wr.Config(key), display_name=key)


def _panels(sweep: SweepOnDisk, runset: Any, grouped: Any) -> list[Any]:
    """The report's panel grids: AP curves (grouped), parallel coordinates."""
    import wandb_workspaces.reports.v2 as wr

    curves = [
        wr.LinePlot(
            title=f"{y} against training hours",
            x="time/train_hours",
            y=[y],
            title_x="training hours (validation excluded)",
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
            layout=wr.Layout(w=12, h=8),
        )
        for y in ("val/AP", "val/AP50")
    ]
    columns = [_flat_config_column(k) for k in sweep.varied]
    columns += [
        wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("val/AP.max"), display_name="best val/AP"),
        wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("best/train_hours"), display_name="hours to best"),
    ]
    parallel = wr.ParallelCoordinatesPlot(
        title="varied settings against AP", columns=columns, layout=wr.Layout(w=24, h=9)
    )
    return [
        wr.H2("AP against training hours"),
        wr.PanelGrid(runsets=[grouped], panels=curves),
        wr.H2("Varied settings against AP"),
        wr.PanelGrid(runsets=[runset], panels=[parallel]),
    ]


def build_report(sweep: SweepOnDisk, *, entity: str | None = None, project: str | None = None) -> Any:
    """The ``wandb_workspaces.reports.v2.Report`` of ``sweep`` (see the module docstring); built
    without network access, saved by :func:`save_report`. ``entity``/``project``: default those of
    the jobs' W&B logger (entity: ``""`` = the W&B default, filled in when saving)."""
    import wandb_workspaces.reports.v2 as wr

    lg_entity, lg_project, group = _wandb_target(sweep)
    entity, project = str(entity or lg_entity or ""), str(project or lg_project)
    jobs_filter = f"Group == '{group}' and JobType != 'summary'"
    grouping = [f"config.{k}.value" for k in sweep.varied if k.rsplit(".", 1)[-1] not in SEED_KEYS]
    runset = wr.Runset(entity=entity, project=project, name="jobs", filters=jobs_filter)
    grouped = wr.Runset(entity=entity, project=project, name="jobs", filters=jobs_filter, groupby=grouping)
    finished = sum(j["results"].get("status") == "finished" for j in sweep.jobs)
    intro = (
        f"Sweep {sweep.dir} (W&B group {group}): command line {' '.join(sweep.task) or '(none)'}; "
        f"varied: {', '.join(sweep.varied) or '(nothing found)'}; "
        f"{finished} of {len(sweep.jobs)} started jobs finished."
    )
    blocks = [wr.P(intro), *_panels(sweep, runset, grouped), wr.H2("Table")]
    table_md = sweep.dir / "table.md"
    if sweep.table and table_md.is_file():
        blocks.append(wr.MarkdownBlock(text=table_md.read_text()))
        summary = wr.Runset(
            entity=entity, project=project, name="summary", filters=f"Group == '{group}' and JobType == 'summary'"
        )
        media = wr.MediaBrowser(title="table plot", media_keys=[f"{sweep.table}/plot"], layout=wr.Layout(w=12, h=10))
        cells = wr.WeavePanelSummaryTable(table_name=f"{sweep.table}/cells", layout=wr.Layout(w=12, h=10))
        blocks.append(wr.PanelGrid(runsets=[summary], panels=[media, cells]))
    else:
        blocks.append(wr.MarkdownBlock(text=jobs_markdown(sweep)))
    title = f"{sweep.table or 'sweep'}: {group}"[:128]
    return wr.Report(
        project=project, entity=entity, title=title, description=intro[:1000], blocks=blocks, width="fluid"
    )


def save_report(report: Any) -> str:
    """Save ``report`` to W&B (online; an empty entity becomes the account's default) and return its URL."""
    if not report.entity:
        import wandb

        entity = wandb.Api().default_entity
        report.entity = entity
        for block in report.blocks:
            for runset in getattr(block, "runsets", None) or []:
                runset.entity = runset.entity or entity
    report.save()
    return str(report.url)


def save_report_if_online(sweep_dir: str | Path, cfg: DictConfig | Mapping[str, Any]) -> str | None:
    """Build and save the report of ``sweep_dir`` when ``cfg`` (one of its jobs' configs) has a W&B
    logger that is online (:func:`~ttfnet_lightning.training.tracking.wandb_offline`); returns its
    URL, or None (offline, no W&B logger, or a failure, which is logged: the sweep's files are
    on disk either way)."""
    lg = next(
        (v for v in (cfg.get("logger") or {}).values() if str(v.get("_target_", "")).endswith("WandbLogger")), None
    )
    try:
        if lg is None or wandb_offline(lg.get("offline")):
            return None
        url = save_report(build_report(read_sweep(sweep_dir)))
    except Exception as exc:
        log.warning("W&B report of %s not saved: %s: %s", sweep_dir, type(exc).__name__, exc)
        return None
    log.info("W&B report of %s: %s", sweep_dir, url)
    return url


class ReportOnMultirunEnd(Callback):
    """Hydra callback (``hydra.callbacks: {wandb_report: {_target_: <this class>}}``): saves the W&B
    report of a multirun when it ends and its W&B logger is online (nothing otherwise). Paper tables
    are left to the tables aggregator, which saves theirs after the table is written."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("table"):
            return
        lg = next((v for v in (config.get("logger") or {}).values() if "WandbLogger" in str(v.get("_target_"))), None)
        if lg is None or wandb_offline(lg.get("offline")):
            log.info("W&B offline: no report; once synced: python -m ttfnet_lightning.paper.wandb_report <sweep dir>")
            return
        # in a process of its own, as the tables aggregator: this one's Hydra is still initialised
        sweep_dir = str(config.hydra.sweep.dir)
        rc = subprocess.call([sys.executable, "-m", "ttfnet_lightning.paper.wandb_report", sweep_dir])
        if rc:
            log.error("W&B report of %s not saved (exit %d)", sweep_dir, rc)


def describe(report: Any) -> str:
    """The report's blocks and panels as text (what ``--dry-run`` prints)."""
    lines = [f"report: {report.title} (project {report.project}, entity {report.entity or '(default)'})"]
    for block in report.blocks:
        kind = type(block).__name__
        if kind == "PanelGrid":
            rs = "; ".join(f"{r.name}: {r.filters} grouped by {r.groupby or '-'}" for r in block.runsets)
            lines.append(f"  panel grid [{rs}]")
            lines += [f"    {type(p).__name__}: {getattr(p, 'title', None) or ''}" for p in block.panels]
        else:
            text = getattr(block, "text", "")
            lines.append(f"  {kind}: {str(text).splitlines()[0][:100] if text else ''}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ttfnet_lightning.paper.wandb_report", description=__doc__.split("\n")[0]
    )
    ap.add_argument("sweep_dir", help="a multirun's folder (with multirun.yaml), e.g. results/table2-cpu")
    ap.add_argument("--entity", help="W&B entity (default: the jobs' logger.wandb.entity, else your default)")
    ap.add_argument("--project", help="W&B project (default: the jobs' logger.wandb.project)")
    ap.add_argument("--dry-run", action="store_true", help="print the report's panels, save nothing (works offline)")
    args = ap.parse_args(argv)
    try:
        report = build_report(read_sweep(args.sweep_dir), entity=args.entity, project=args.project)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc}; W&B reports need the report extra: pip install -e '.[report]'", file=sys.stderr)
        return 2
    print(describe(report))
    if args.dry_run:
        return 0
    if wandb_offline(None):
        print("W&B is offline (no API key found, or WANDB_MODE=offline): nothing saved; --dry-run shows the report")
        return 1
    print(f"saved: {save_report(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
