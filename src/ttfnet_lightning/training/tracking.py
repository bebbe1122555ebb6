"""Weights & Biases run identity, flat config and metric axes (used by ``train.py``).

A run's identity comes from its config and, in a Hydra multirun, its job's task overrides:

* paper-table sweeps (``experiment=table1..table6``; the composed config has
  ``table: {name: table2, protocol: cpu}``): every job lands in group ``table2-cpu`` with
  ``job_type="ablation"`` and tags ``table2``, ``protocol=cpu`` and one per varied setting
  (``kernel.beta=0.3``, ...);
* other multiruns: group ``sweep-<sweep dir name>``, ``job_type="sweep"``, tags per varied setting;
* single runs: group ``cfg.group`` (or none), ``job_type="train"``, tags ``cfg.tags``.

When a paper-table sweep ends, its table plot and cells go to the same group as one more run,
``job_type="summary"`` (:func:`log_sweep_summary`, called by the tables aggregator).

An explicit ``cfg.group`` always wins and ``cfg.tags`` are always kept. The config goes to W&B as
flat top-level keys (``kernel.beta``, ``schedule.lr``, ``backbone.name``, ...), so W&B's group-by
and parallel-coordinates panels can use them directly, and the ``val/*`` metrics are plotted
against the training clock ``time/train_hours`` (logged by ``callbacks.TimeToAccuracy``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

__all__ = [
    "FlatWandbLogger",
    "build_loggers",
    "finish_wandb",
    "wandb_offline",
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

Scalar = str | int | float | bool | None

# the validation metrics logged by TTFNetModule and LogValPredictions (named explicitly: see
# define_wandb_metrics)
VAL_METRICS = (
    "val/AP",
    "val/AP50",
    "val/AP75",
    "val/APs",
    "val/APm",
    "val/APl",
    "val/loss",
    "val/predictions",
    "val/heatmaps",
)
TRAIN_CLOCK = "time/train_hours"
GLOBAL_STEP = "trainer/global_step"  # WandbLogger's step metric
MAX_TAG_LEN = 64  # W&B refuses longer tags
# overrides that name files or the run itself, not a varied setting
_NOT_SETTINGS = {"output_dir", "ckpt_path", "name", "group", "tags", "project", "job_overrides", "table"}


def flatten_dict(params: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Scalar]:
    """Nested mappings -> one level with ``sep``-joined keys; lists -> their JSON text (``"[64, 64]"``).

    Empty mappings disappear; other values (str, int, float, bool, None) are kept as they are,
    anything else becomes its ``str``.
    """
    flat: dict[str, Scalar] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, name, sep))
        elif isinstance(value, (list, tuple)):
            try:
                flat[name] = json.dumps(list(value))
            except TypeError:
                flat[name] = str(list(value))
        elif value is None or isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def flatten_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Scalar]:
    """The resolved config as flat ``{"kernel.beta": 0.54, "schedule.lr": 0.016, ...}`` (no ``hydra`` key)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    return flatten_dict(container)


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


def run_identity(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """``dict(group=..., job_type=..., tags=[...])`` for ``wandb.init`` (see the module docstring).

    Args:
        cfg: the composed config; reads ``group``, ``tags``, ``table`` and ``job_overrides`` (all optional).
        overrides: the job's varied settings; default :func:`job_overrides`. Tagged in table runs,
            multiruns, and whenever given explicitly (this argument or ``cfg.job_overrides``).
    """
    explicit = overrides is not None or cfg.get("job_overrides") is not None
    overrides = job_overrides(cfg) if overrides is None else list(overrides)
    table = cfg.get("table")
    tags = [str(t) for t in (cfg.get("tags") or [])]
    hc = _hydra()
    group: str | None = None
    if table:
        name = str(table.get("name") or "table")
        protocol = table.get("protocol")
        group = table.get("group") or (f"{name}-{protocol}" if protocol else name)
        job_type = table.get("job_type") or "ablation"
        tags += [name] + ([f"protocol={protocol}"] if protocol else [])
    elif _is_multirun():
        group = "sweep-" + Path(hc.sweep.dir).name  # all jobs of one sweep together
        job_type = "sweep"
    else:
        job_type = "train"
    if table or _is_multirun() or explicit:
        tags += override_tags(overrides)
    if cfg.get("group"):  # an explicit group wins
        group = cfg.get("group")
    return {
        "group": None if group is None else str(group),
        "job_type": str(job_type),
        "tags": list(dict.fromkeys(t for t in tags if t)),
    }


def define_wandb_metrics(logger: WandbLogger) -> None:
    """Plot ``val/*`` against the training clock ``time/train_hours`` (hours of training,
    validation excluded) and the clock itself against the global step.

    WandbLogger already maps every metric (``*``) to ``trainer/global_step``. wandb-core picks
    among matching globs in no fixed order, so the known validation metrics are defined by name
    (a named definition beats any glob); ``val/*`` catches the others.
    """
    run = logger.experiment
    if not callable(getattr(run, "define_metric", None)):  # disabled W&B
        return
    run.define_metric(TRAIN_CLOCK, step_metric=GLOBAL_STEP)
    for name in VAL_METRICS:
        run.define_metric(name, step_metric=TRAIN_CLOCK, step_sync=True)
    run.define_metric("val/*", step_metric=TRAIN_CLOCK, step_sync=True)


class FlatWandbLogger(WandbLogger):
    """:class:`~pytorch_lightning.loggers.WandbLogger` whose config keys are flat
    (``kernel.alpha``, not ``kernel: {alpha: ...}``).

    Lightning also logs the LightningModule's hyperparameters (``kernel`` is a dict there); flat,
    they land on the same ``kernel.*`` keys as the run config instead of a nested ``kernel`` that
    W&B would show under the same dotted names.
    """

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        from lightning_fabric.utilities.logger import _convert_params

        params = _convert_params(params)
        if isinstance(params, (DictConfig, ListConfig)):
            params = OmegaConf.to_container(params, resolve=True)
        super().log_hyperparams(flatten_dict(params))


def log_hyperparams(logger: Any, cfg: DictConfig, resolved: Mapping[str, Any] | None = None) -> None:
    """Log the run config to one logger: W&B gets the flat keys of :func:`flatten_config` and its
    metric axes (:func:`define_wandb_metrics`); other loggers the resolved config under ``config``."""
    if isinstance(logger, WandbLogger):
        logger.log_hyperparams(flatten_config(cfg))
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

    W&B gets the run identity of :func:`tracking.run_identity` (group, job_type, tags); values
    set on the logger itself (``logger.wandb.group=...``) win, its tags are kept."""
    from ttfnet_lightning.training.tracking import run_identity

    loggers: list[Any] = [_resumable_csv_logger(out)]
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        target = str(lg_cfg.get("_target_", ""))
        if target.endswith("WandbLogger"):
            ident = run_identity(cfg)
            tags = [str(t) for t in (lg_cfg.get("tags") or [])]
            offline = wandb_offline(lg_cfg.get("offline"))
            kw = {
                "offline": offline,
                "save_dir": str(out),
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
