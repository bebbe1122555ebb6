"""Weights & Biases run identity and loggers (used by ``train.py``).

A run's identity comes from its config and, in a Hydra multirun, from the settings its sweep varies
(:func:`~ttfnet_lightning.training.wandb_sweep.sweep_keys`: the sweeper's params and the command
line's sweep syntax; constants given on the command line are not among them):

* paper-table sweeps (``experiment=table1..table6``; the composed config has
  ``table: {name: table2, protocol: cpu}``): every job lands in group ``table2-cpu`` with
  ``job_type="ablation"``, tags ``table2``, ``protocol=cpu`` and one per varied setting
  (``kernel.beta=0.3``, ...), and is named after its varied values (``beta=0.3,class_aware=True,seed=0``);
* other multiruns: group ``sweep-<sweep dir name>``, ``job_type="sweep"``, tags and name from the
  varied settings as above (``name=...`` on the command line prefixes the name: ``mine:beta=0.3``);
* single runs: name ``cfg.name``, group ``cfg.group`` (or none), ``job_type="train"``, tags ``cfg.tags``.

When a paper-table sweep ends, its table plot and cells go to the same group as one more run,
``job_type="summary"`` (:func:`log_sweep_summary`, called by the tables aggregator).

An explicit ``cfg.group`` always wins and ``cfg.tags`` are always kept. The config goes to W&B as
flat top-level keys, each once (``kernel.beta``, ``schedule.lr``, ``backbone.name``, ...), so W&B's
group-by and parallel-coordinates panels can use them directly; the ``val/*`` metrics are plotted
against the training clock ``time/train_hours`` (logged by ``callbacks.TimeToAccuracy``) and the
summary keeps the best ``val/AP`` (:mod:`ttfnet_lightning.training.wandb_logger`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from ttfnet_lightning.training.wandb_logger import (
    VAL_METRICS,
    FlatWandbLogger,
    define_wandb_metrics,
    flatten_config,
    flatten_dict,
    wandb_config,
)
from ttfnet_lightning.training.wandb_sweep import sweep_keys, sweep_run_name, varied_overrides

log = logging.getLogger(__name__)

__all__ = [
    "FlatWandbLogger",
    "build_loggers",
    "finish_wandb",
    "wandb_offline",
    "wandb_config",
    "VAL_METRICS",
    "define_wandb_metrics",
    "flatten_config",
    "flatten_dict",
    "job_overrides",
    "log_hyperparams",
    "log_sweep_summary",
    "override_tags",
    "run_identity",
]

MAX_TAG_LEN = 64  # W&B refuses longer tags
# overrides that name files or the run itself, not a varied setting
_NOT_SETTINGS = {"output_dir", "ckpt_path", "name", "group", "tags", "project", "job_overrides", "table"}


def _hydra() -> Any | None:
    """The Hydra config of the running job, or None outside ``@hydra.main`` (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def job_overrides(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """The job's varied settings: Hydra's task overrides (``["kernel.beta=0.3", "seed=1"]``), or
    without Hydra the optional config key ``job_overrides``; ``[]`` if neither."""
    hc = _hydra()
    if hc is not None:
        return [str(o) for o in hc.overrides.task]
    given = cfg.get("job_overrides")
    if given is None:
        return []
    if isinstance(given, str):
        return given.split()
    return [str(o) for o in given]


def override_tags(overrides: Sequence[str]) -> list[str]:
    """One tag per setting (``kernel.beta=0.3``): ``+``/``++`` prefixes dropped, deletions (``~key``)
    and the run's own files/names (``output_dir``, ``ckpt_path``, ``name``, ...) left out, as are
    tags longer than W&B's 64 characters (the value is in the config anyway)."""
    tags: list[str] = []
    for override in overrides:
        text = str(override).strip().lstrip("+")
        if not text or text.startswith("~") or "=" not in text:
            continue
        key = text.split("=", 1)[0]
        if key in _NOT_SETTINGS or key.startswith("hydra."):
            continue
        if len(text) > MAX_TAG_LEN:
            log.info("W&B tag left out (over %d characters): %s", MAX_TAG_LEN, text)
            continue
        tags.append(text)
    return tags


def _varied(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] | None, hc: Any | None) -> list[str]:
    """The job's varied settings (see :func:`run_identity`); ``hc``: the Hydra config of a multirun job."""
    if overrides is not None:
        return list(overrides)
    if cfg.get("job_overrides") is not None:
        return job_overrides(cfg)
    if hc is not None:
        return varied_overrides([str(o) for o in hc.overrides.task], sweep_keys(hc))
    return job_overrides(cfg) if cfg.get("table") else []


def _job_name(base: str, varied: Sequence[str], hc: Any) -> str:
    """A multirun job's name (:func:`~ttfnet_lightning.training.wandb_sweep.sweep_run_name`):
    prefixed with ``base`` when the command line names the sweep (``name=...``)."""
    named = any(str(o).lstrip("+").startswith("name=") for o in hc.overrides.task)
    try:
        job_num = int(hc.job.num)
    except Exception:  # no job number (a config composed outside a launcher)
        job_num = None
    return sweep_run_name(base, varied, job_num=job_num, prefix=named)


def run_identity(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """``dict(name=..., group=..., job_type=..., tags=[...])`` for ``wandb.init`` (see the module docstring).

    Args:
        cfg: the composed config; reads ``name``, ``group``, ``tags``, ``table`` and ``job_overrides``
            (all optional).
        overrides: the job's varied settings, each tagged; default: in a multirun the job's task
            overrides of the keys its sweep varies (:func:`~ttfnet_lightning.training.wandb_sweep.sweep_keys`),
            else ``cfg.job_overrides`` (when given), else in a table run all task overrides, else none.
            A multirun job given none of its own is named after them.
    """
    table = cfg.get("table")
    tags = [str(t) for t in (cfg.get("tags") or [])]
    name = None if cfg.get("name") is None else str(cfg.get("name"))
    hc = _hydra() if _is_multirun() else None
    group: str | None = None
    if table:
        table_name = str(table.get("name") or "table")
        protocol = table.get("protocol")
        group = table.get("group") or (f"{table_name}-{protocol}" if protocol else table_name)
        job_type = table.get("job_type") or "ablation"
        tags += [table_name] + ([f"protocol={protocol}"] if protocol else [])
    elif hc is not None:
        group = "sweep-" + Path(hc.sweep.dir).name  # all jobs of one sweep together
        job_type = "sweep"
    else:
        job_type = "train"
    varied = _varied(cfg, overrides, hc)
    tags += override_tags(varied)
    if hc is not None and overrides is None and cfg.get("job_overrides") is None:
        name = _job_name(name or "run", varied, hc)
    if cfg.get("group"):  # an explicit group wins
        group = cfg.get("group")
    return {
        "name": name,
        "group": None if group is None else str(group),
        "job_type": str(job_type),
        "tags": list(dict.fromkeys(t for t in tags if t)),
    }


def log_hyperparams(logger: Any, cfg: DictConfig, resolved: Mapping[str, Any] | None = None) -> None:
    """Log the run config to one logger: W&B gets the flat keys of
    :func:`~ttfnet_lightning.training.wandb_logger.wandb_config` (each setting once) and its metric
    axes and summaries (:func:`define_wandb_metrics`); other loggers the resolved config under ``config``."""
    if isinstance(logger, FlatWandbLogger):
        logger.log_config(cfg)
        define_wandb_metrics(logger)
    elif isinstance(logger, WandbLogger):
        logger.log_hyperparams(wandb_config(cfg))
        define_wandb_metrics(logger)
    else:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True) if resolved is None else resolved})


# ------------------------------------------------------------------------------- loggers
def wandb_offline(setting: bool | None) -> bool:
    """Offline unless told otherwise: an explicit setting wins, then WANDB_MODE, then whether W&B
    itself finds credentials (``wandb.login(prompt=False)``: the session, WANDB_API_KEY, its
    settings file, the netrc file or an identity token), never prompting; none -> offline."""
    if setting is not None:
        return bool(setting)
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    import wandb

    return not wandb.login(prompt=False, verify=False)


def _resumable_csv_logger(out: Path) -> Any:
    """``out/metrics.csv`` that survives resumes (Lightning's CSVLogger deletes it when a run is
    restarted): rows go to disk as they are logged (nothing lost to a hard kill), a resumed run
    appends after the rows logged up to its checkpoint's step, and a fresh run starts a new file.
    The kept rows are chosen by :func:`truncate_metrics` (called from ``train``)."""
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class KeepingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:  # keep metrics.csv; its header gives the known keys
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    class ResumableCSVLogger(CSVLogger):
        @property
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = KeepingWriter(log_dir=self.log_dir)
            return self._experiment

    return ResumableCSVLogger(save_dir=str(out), name="", version="", flush_logs_every_n_steps=1)


def build_loggers(cfg: DictConfig, out: Path) -> list[Any]:
    """CSV always (``out/metrics.csv``), plus the tracker(s) of the ``logger`` group.

    W&B gets the run identity of :func:`run_identity` (name, group, job_type, tags); values set
    on the logger itself (``logger.wandb.group=...``, a ``logger.wandb.name`` other than ``name``)
    win, its tags are kept."""
    loggers: list[Any] = [_resumable_csv_logger(out)]
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        target = str(lg_cfg.get("_target_", ""))
        if target.endswith("WandbLogger"):
            ident = run_identity(cfg)
            tags = [str(t) for t in (lg_cfg.get("tags") or [])]
            offline = wandb_offline(lg_cfg.get("offline"))
            own_name = lg_cfg.get("name")
            kw = {
                "offline": offline,
                "save_dir": str(out),
                "name": own_name if own_name is not None and own_name != cfg.get("name") else ident["name"],
                "group": lg_cfg.get("group") or ident["group"],
                "job_type": lg_cfg.get("job_type") or ident["job_type"],
                "tags": list(dict.fromkeys(tags + ident["tags"])),
            }
            if offline:
                # wandb.init(mode="offline") as well: Lightning's offline flag only sets WANDB_MODE,
                # which wandb no longer reads once its settings exist (the credentials probe of
                # wandb_offline creates them), and the run would then ask for an API key
                kw["mode"] = "offline"
            lg = instantiate(lg_cfg, **kw, _convert_="all")
        elif target.endswith("TensorBoardLogger"):
            lg = instantiate(lg_cfg, save_dir=str(out), _convert_="all")
        else:
            lg = instantiate(lg_cfg, _convert_="all")
        log.info("logger %s: %s", key, type(lg).__name__)
        loggers.append(lg)
    return loggers


def finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run so the next job of a multirun starts its own run."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


def log_sweep_summary(
    cfg: DictConfig,
    out_dir: str | Path,
    *,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, str | Path],
) -> str | None:
    """Log a sweep's summary to W&B as one more run of the sweep's group (``cfg`` is one of its
    jobs' configs: same project, group and offline rule as the jobs): ``<name>/<key>`` images
    (e.g. the table plot) and ``<name>/cells`` (a table, one row per cell), ``job_type="summary"``,
    run files under ``out_dir/wandb``. Returns the run's directory, or None when the jobs did not
    log to W&B."""
    lg_cfg = next(
        (lg for lg in (cfg.get("logger") or {}).values() if str(lg.get("_target_", "")).endswith("WandbLogger")), None
    )
    if lg_cfg is None:
        return None
    import wandb

    ident = run_identity(cfg, overrides=[])
    offline = wandb_offline(lg_cfg.get("offline"))
    run = wandb.init(
        project=lg_cfg.get("project") or cfg.get("project"),
        group=lg_cfg.get("group") or ident["group"],
        job_type="summary",
        name=f"{name}-summary",
        tags=ident["tags"],
        dir=str(out_dir),
        mode="offline" if offline else "online",
        reinit="create_new",
    )
    try:
        payload: dict[str, Any] = {f"{name}/{key}": wandb.Image(str(path)) for key, path in images.items()}
        if rows:
            columns = list(rows[0])
            payload[f"{name}/cells"] = wandb.Table(
                columns=columns, data=[[None if r.get(c) is None else r.get(c) for c in columns] for r in rows]
            )
        run.log(payload)
        return str(run.dir)
    finally:
        run.finish()
