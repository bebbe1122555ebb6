"""The W&B logger of ``logger=wandb``: every config key once, the best validation AP in the summary,
the best checkpoint as a model artifact.

* Config (:func:`wandb_config`): the run config as flat keys (``kernel.beta``, ``schedule.lr``, ...),
  without Hydra's ``_target_``-style keys and without the copies ``conf/train.yaml`` wires into
  instantiated objects (``trainer.max_epochs: ${schedule.max_epochs}``); Lightning's own call with
  the LightningModule's hyper-parameters (``net.*``, ``optim.*``, ..., all derived from the same
  config by ``training.config_groups.module_groups``) is not sent once the run config is.
* Summary: ``val/AP*`` keep their maximum (``define_metric(summary="max")``, W&B shows
  ``val/AP.max``), ``val/loss`` its minimum, and ``best/val/AP``, ``best/step``,
  ``best/train_hours``, ``best/epoch`` say where the best ``val/AP`` was reached.
* Model artifact (``log_model``): the monitored (best ``val/AP``) checkpoint, logged by Lightning's
  own ``WandbLogger`` code when training ends (type ``model``, aliases ``best``/``latest``); on by
  default online, off offline unless asked.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ttfnet_lightning.core.metrics import AP_NAMES, is_na

log = logging.getLogger(__name__)

__all__ = [
    "FlatWandbLogger",
    "wandb_config",
    "flatten_config",
    "flatten_dict",
    "define_wandb_metrics",
    "VAL_METRICS",
    "BEST_METRIC",
    "TRAIN_CLOCK",
]

Scalar = str | int | float | bool | None

# the validation metrics logged by TTFNetModule and LogValPredictions (named explicitly: see
# define_wandb_metrics)
VAL_METRICS = (
    *(f"val/{n}" for n in AP_NAMES),
    "val/loss",
    "val/predictions",
    "val/heatmaps",
)
TRAIN_CLOCK = "time/train_hours"
GLOBAL_STEP = "trainer/global_step"  # WandbLogger's step metric
BEST_METRIC = "val/AP"  # what the best checkpoint and the best/* summary follow
# Hydra's instantiation keys: they name classes, not settings
_HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}
_REFERENCE = re.compile(r"^\$\{[\w.]+\}$")  # ${schedule.max_epochs}: a plain copy of another key


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


def _wiring_copies(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Flat keys of the values that an instantiated object's node (one with ``_target_``) takes as
    a plain reference to another key (``trainer.max_epochs: ${schedule.max_epochs}``); ``raw``: the
    config with its interpolations unresolved."""
    copies: list[str] = []
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            copies += _wiring_copies(value, name)
        elif "_target_" in raw and isinstance(value, str) and _REFERENCE.match(value):
            copies.append(name)
    return copies


def wandb_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Scalar]:
    """The run config as W&B gets it: :func:`flatten_config` without Hydra's instantiation keys
    (``_target_``, ...) and without the wiring copies of :func:`_wiring_copies`, so that every
    setting appears once, under its user-facing key."""
    drop = set(_wiring_copies(OmegaConf.to_container(cfg, resolve=False))) if isinstance(cfg, DictConfig) else set()
    return {k: v for k, v in flatten_config(cfg).items() if k.rsplit(".", 1)[-1] not in _HYDRA_KEYS and k not in drop}


def define_wandb_metrics(logger: WandbLogger) -> None:
    """Plot ``val/*`` against the training clock ``time/train_hours`` (hours of training,
    validation excluded) and the clock itself against the global step; summaries: the maximum of
    each ``val/AP*``, the minimum of ``val/loss``.

    WandbLogger already maps every metric (``*``) to ``trainer/global_step``. wandb-core picks
    among matching globs in no fixed order, so the known validation metrics are defined by name
    (a named definition beats any glob); ``val/*`` catches the others.
    """
    run = logger.experiment
    if not callable(getattr(run, "define_metric", None)):  # disabled W&B
        return
    run.define_metric(TRAIN_CLOCK, step_metric=GLOBAL_STEP)
    for name in VAL_METRICS:
        summary = "max" if name.startswith("val/AP") else "min" if name == "val/loss" else None
        run.define_metric(name, step_metric=TRAIN_CLOCK, step_sync=True, summary=summary)
    run.define_metric("val/*", step_metric=TRAIN_CLOCK, step_sync=True)


class FlatWandbLogger(WandbLogger):
    """:class:`~pytorch_lightning.loggers.WandbLogger` whose config keys are flat and appear once,
    whose summary holds the best ``val/AP`` and where it was reached, and which logs the best
    checkpoint as a model artifact (see the module docstring).

    Args (keyword-only; the others are ``WandbLogger``'s and ``wandb.init``'s):
        log_model: log the best checkpoint when training ends; None: when online.
        offline: write the run to ``save_dir/wandb`` only (``wandb sync`` uploads it).
    """

    def __init__(self, *, log_model: bool | None = None, offline: bool = False, **kwargs: Any) -> None:
        if log_model is None:
            log_model = not offline
        if not isinstance(log_model, bool):
            raise ValueError(
                f"logger.wandb.log_model={log_model!r}: give true, false or null (null: log the best "
                "checkpoint when online)"
            )
        if offline and log_model:
            # Lightning refuses log_model with offline=True, but wandb itself records artifacts in
            # offline runs (wandb 0.31: the artifact record and its manifest go to run-*.wandb, the
            # file is staged under WANDB_DATA_DIR; `wandb sync` uploads both): offline through
            # wandb.init(mode="offline") instead of Lightning's flag
            kwargs["mode"] = "offline"
            offline = False
        super().__init__(offline=offline, log_model=log_model, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning always passes anonymous=None, which wandb >= 0.19 reports as a deprecated setting
            self._wandb_init.pop("anonymous", None)
        self._run_config_logged = False
        self._best: float | None = None

    @rank_zero_only
    def log_config(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        """Send the run config (:func:`wandb_config`); Lightning's later call with the module's
        hyper-parameters is then left out."""
        super().log_hyperparams(wandb_config(cfg))
        self._run_config_logged = True

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if self._run_config_logged:  # the module's hparams: derived from the config already sent
            log.debug("W&B: module hyper-parameters not sent (the run config holds them)")
            return
        from lightning_fabric.utilities.logger import _convert_params

        params = _convert_params(params)
        if isinstance(params, (DictConfig, ListConfig)):
            params = OmegaConf.to_container(params, resolve=True)
        super().log_hyperparams(flatten_dict(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        value = metrics.get(BEST_METRIC)
        if value is None or not math.isfinite(float(value)) or is_na(float(value)):
            return
        if self._best is not None and float(value) <= self._best:
            return
        self._best = float(value)
        # the optimiser step of TimeToAccuracy (the checkpoints' step{N}), else Lightning's logging step
        best: dict[str, Any] = {f"best/{BEST_METRIC}": self._best, "best/step": step}
        for key, name in (("time/step", "best/step"), (TRAIN_CLOCK, "best/train_hours"), ("epoch", "best/epoch")):
            if key in metrics:
                best[name] = int(metrics[key]) if name in ("best/step", "best/epoch") else float(metrics[key])
        self.experiment.summary.update(best)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        # only the monitored (best val/AP) checkpoint: Lightning would also log last.ckpt and the
        # periodic latest-step*.ckpt of run.py's other ModelCheckpoint callbacks
        if getattr(checkpoint_callback, "monitor", None):
            super().after_save_checkpoint(checkpoint_callback)
