"""Training entry point.

    python -m ttfnet_lightning.train backbone=r18 schedule=fast            # built-in data
    python -m ttfnet_lightning.train data=coco data.datamodule.root=/data/coco
    python -m ttfnet_lightning.train -m kernel.beta=0.1,0.54 schedule.lr=0.008,0.016

``train(cfg)`` is a plain function (tests and notebooks call it with a composed config); the
``@hydra.main`` wrapper only adds the command line. It returns ``cfg.optimized_metric`` of the last
validation, for sweepers.
"""

from __future__ import annotations

import logging
import netrc
import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .callbacks import LogValPredictions, TimeToAccuracy
from .lit_module import TTFNetModule

log = logging.getLogger(__name__)

# `hydra.run.dir: ${ttf_or:${output_dir},outputs/...}`: an explicit output_dir is also Hydra's run dir
if not OmegaConf.has_resolver("ttf_or"):
    OmegaConf.register_new_resolver("ttf_or", lambda value, default: default if value in (None, "") else value)

__all__ = ["train", "build_datamodule", "build_module", "build_loggers", "build_callbacks", "output_dir"]


def output_dir(cfg: DictConfig, fallback_parent: str | Path | None = None) -> Path:
    """``cfg.output_dir``, else the Hydra run dir, else ``<fallback_parent>/<time>``
    (``outputs/<name>`` by default)."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    parent = Path(fallback_parent) if fallback_parent is not None else Path("outputs") / str(cfg.name)
    return parent / time.strftime("%Y-%m-%d_%H-%M-%S")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data.datamodule, _convert_="all")


def build_module(cfg: DictConfig, dm: pl.LightningDataModule) -> TTFNetModule:
    """The LightningModule from the config's plain values and the data's class list."""
    b, s = cfg.backbone, cfg.schedule
    model_kw = OmegaConf.to_container(cfg.model, resolve=True)
    return TTFNetModule(
        num_classes=dm.num_classes,
        class_names=list(dm.class_names),
        input_size=list(dm.input_size),
        label_to_cat_id=None if dm.label_to_cat_id is None else list(dm.label_to_cat_id),
        backbone=b.name,
        pretrained=b.pretrained,
        weights=b.weights,
        frozen_stages=b.frozen_stages,
        box_convs=b.box_convs,
        kernel=OmegaConf.to_container(cfg.kernel, resolve=True),
        lr=s.lr,
        reference_batch=s.reference_batch,
        scale_lr=s.scale_lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
        bias_lr_mult=s.bias_lr_mult,
        bias_decay=s.bias_decay,
        warmup_steps=s.warmup_steps,
        warmup_ratio=s.warmup_ratio,
        milestones=list(s.milestones),
        gamma=s.gamma,
        **model_kw,
    )


def wandb_offline(setting: bool | None) -> bool:
    """Offline unless told otherwise: an explicit setting wins, then WANDB_MODE, then a configured
    API key (WANDB_API_KEY or ~/.netrc entry for api.wandb.ai); no key -> offline."""
    if setting is not None:
        return bool(setting)
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


def _group(cfg: DictConfig) -> str | None:
    if cfg.get("group"):
        return str(cfg.group)
    if HydraConfig.initialized() and HydraConfig.get().mode == hydra.types.RunMode.MULTIRUN:
        return "sweep-" + Path(HydraConfig.get().sweep.dir).name  # all jobs of one sweep together
    return None


def build_loggers(cfg: DictConfig, out: Path) -> list[Any]:
    """CSV always (``out/metrics.csv``), plus the tracker(s) of the ``logger`` group."""
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(out), name="", version="")]
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        target = str(lg_cfg.get("_target_", ""))
        if target.endswith("WandbLogger"):
            kw = {"offline": wandb_offline(lg_cfg.get("offline")), "save_dir": str(out), "group": _group(cfg)}
            lg = instantiate(lg_cfg, **kw, _convert_="all")
        elif target.endswith("TensorBoardLogger"):
            lg = instantiate(lg_cfg, save_dir=str(out), _convert_="all")
        else:
            lg = instantiate(lg_cfg, _convert_="all")
        log.info("logger %s: %s", key, type(lg).__name__)
        loggers.append(lg)
    return loggers


def build_callbacks(cfg: DictConfig, out: Path) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint

    ckpt_dir = out / "checkpoints"
    callbacks: list[pl.Callback] = [
        # best val/AP (this Lightning refreshes its save_last copy only when the best improves,
        # so last.ckpt has its own callback below)
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-epoch{epoch:02d}-step{step}",
            monitor="val/AP",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
        # last.ckpt after every validation, overwritten in place
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False),
        # interruption (Ctrl-C, SIGTERM, crash) -> interrupted.ckpt, resumable with ckpt_path=
        OnExceptionCheckpoint(dirpath=ckpt_dir, filename="interrupted"),
        TimeToAccuracy(),
    ]
    every = cfg.callbacks.get("checkpoint_every_n_steps")
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename="latest-step{step}", every_n_train_steps=int(every), save_top_k=1, auto_insert_metric_name=False)
        )
    if cfg.callbacks.get("log_val_images"):
        callbacks.append(LogValPredictions(num_images=int(cfg.callbacks.log_val_images)))
    return callbacks


def _finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run so the next job of a multirun starts its own run."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    keys = [k for k in ("val/AP", "val/AP50", "val/AP75", "val/APs", "val/APm", "val/APl", "val/loss", "time/train_seconds", "time/step") if k in metrics]
    width = max((len(k) for k in keys), default=0)
    print(f"\n{title}")
    for k in keys:
        na = k.startswith("val/AP") and metrics[k] < 0  # torchmetrics: -1 = no ground truth of that size
        print(f"  {k:<{width}}  " + ("n/a (no ground truth of this size)" if na else f"{metrics[k]:.3f}"))


def train(cfg: DictConfig) -> float | None:
    """Train and validate; returns the last value of ``cfg.optimized_metric`` (None if never validated)."""
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    model = build_module(cfg, dm)
    loggers = build_loggers(cfg, out)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams({"config": resolved})
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(out), logger=loggers, callbacks=build_callbacks(cfg, out), _convert_="all"
    )
    log.info("output dir: %s", out)
    with warnings.catch_warnings():
        # with OnExceptionCheckpoint, Lightning resumes from checkpoints/last.ckpt when ckpt_path is
        # None and one exists: rerunning into the same output_dir continues that run (intended)
        warnings.filterwarnings("ignore", message=r".*ckpt_path.*")
        warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # all logged values are scalars
    _print_metrics(metrics, f"final metrics ({out})")
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.best_model_path:
        print(f"  best checkpoint: {ckpt.best_model_path} (val/AP {float(ckpt.best_model_score):.3f})")
        print(f"  last checkpoint: {out / 'checkpoints' / 'last.ckpt'}")
    value = metrics.get(str(cfg.optimized_metric))
    _finish_wandb(loggers)
    return value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
