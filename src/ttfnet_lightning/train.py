"""Training entry point.

    python -m ttfnet_lightning.train backbone=r18 schedule=fast            # built-in data
    python -m ttfnet_lightning.train data=coco data.datamodule.root=/data/coco
    python -m ttfnet_lightning.train -m kernel.beta=0.1,0.54 schedule.lr=0.008,0.016

``train(cfg)`` is a plain function (tests and notebooks call it with a composed config); the
``@hydra.main`` wrapper only adds the command line. It returns ``cfg.optimized_metric`` of the last
validation, for sweepers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import netrc
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .callbacks import CocoResultsWriter, DataOrder, FiniteGuard, InterruptCheckpoint, LogValPredictions, RerunInterruptedValidation, TimeToAccuracy
from .checkpoints import StrictCheckpointIO
from .config import DecodeConfig, LossConfig, NetConfig, OptimConfig
from .lit_module import TTFNetModule
from .metrics import AP_NAMES, NA_NOTE, is_na
from .tables import RESULTS_FILE, job_dirname, read_results
from .tracking import flatten_dict, job_overrides, log_hyperparams

log = logging.getLogger(__name__)

# `hydra.sweep.subdir: ${ttf_jobdir:${hydra.overrides.task},${table.grid...}}` in the paper-table sweeps
if not OmegaConf.has_resolver("ttf_jobdir"):
    OmegaConf.register_new_resolver("ttf_jobdir", job_dirname)

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
    """The LightningModule from the config's groups (see :mod:`ttfnet_lightning.config`) and the
    data's class list, input size and batch size."""
    c = OmegaConf.to_container(cfg, resolve=True)
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    return TTFNetModule(
        net=NetConfig.from_config(c["backbone"], c["model"]),
        kernel=c["kernel"],
        loss={k: v for k, v in c["model"].items() if k in fields(LossConfig)},
        optim={k: v for k, v in c["schedule"].items() if k in fields(OptimConfig)},
        decode={k: v for k, v in c["model"].items() if k in fields(DecodeConfig)},
        data_info={
            "num_classes": dm.num_classes,
            "class_names": list(dm.class_names),
            "input_size": list(dm.input_size),
            "label_to_cat_id": None if dm.label_to_cat_id is None else list(dm.label_to_cat_id),
            "batch_size": int(dm.batch_size),
        },
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


def truncate_metrics(out: Path, resume_step: int | None) -> None:
    """Before training: ``out/metrics.csv`` keeps the rows of logger steps < ``resume_step`` (the
    resumed run logs the later ones again); no resume (None) -> the file is removed."""
    path = out / "metrics.csv"
    if not path.is_file():
        return
    if resume_step is None:
        path.unlink()
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    kept = [r for r in rows if r.get("step") in (None, "") or int(float(r["step"])) < resume_step]
    if len(kept) != len(rows):
        log.info("metrics.csv: dropped %d rows logged after the checkpoint's step %d", len(rows) - len(kept), resume_step)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)


def build_loggers(cfg: DictConfig, out: Path) -> list[Any]:
    """CSV always (``out/metrics.csv``), plus the tracker(s) of the ``logger`` group.

    W&B gets the run identity of :func:`tracking.run_identity` (group, job_type, tags); values
    set on the logger itself (``logger.wandb.group=...``) win, its tags are kept."""
    from .tracking import run_identity

    loggers: list[Any] = [_resumable_csv_logger(out)]
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        target = str(lg_cfg.get("_target_", ""))
        if target.endswith("WandbLogger"):
            ident = run_identity(cfg)
            tags = [str(t) for t in (lg_cfg.get("tags") or [])]
            kw = {
                "offline": wandb_offline(lg_cfg.get("offline")),
                "save_dir": str(out),
                "group": lg_cfg.get("group") or ident["group"],
                "job_type": lg_cfg.get("job_type") or ident["job_type"],
                "tags": list(dict.fromkeys(tags + ident["tags"])),
            }
            lg = instantiate(lg_cfg, **kw, _convert_="all")
        elif target.endswith("TensorBoardLogger"):
            lg = instantiate(lg_cfg, save_dir=str(out), _convert_="all")
        else:
            lg = instantiate(lg_cfg, _convert_="all")
        log.info("logger %s: %s", key, type(lg).__name__)
        loggers.append(lg)
    return loggers


class _ResumeMetrics(pl.Callback):
    """On resume, ``metrics.csv`` keeps the rows logged before the checkpoint's step (see
    :func:`truncate_metrics`); the CSV is flushed with every checkpoint."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        truncate_metrics(self.out, int(checkpoint.get("global_step", 0)))


def build_callbacks(cfg: DictConfig, out: Path) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    ckpt_dir = out / "checkpoints"
    callbacks: list[pl.Callback] = [
        # NaN/inf weights stop the run before any checkpoint callback sees them
        FiniteGuard(),
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
        # interruption (Ctrl-C, SIGTERM, crash) -> interrupted.ckpt; a rerun resumes from it
        InterruptCheckpoint(dirpath=str(ckpt_dir), filename="interrupted"),
        # ... and when it stopped during a validation, the resumed run runs that validation again
        RerunInterruptedValidation(),
        TimeToAccuracy(),
        _ResumeMetrics(out),
        LearningRateMonitor(logging_interval="step"),  # train/lr/weights, train/lr/biases
        CocoResultsWriter(),  # detections_val.json of each validation
    ]
    every = cfg.callbacks.get("checkpoint_every_n_steps")
    if every:
        # latest-step<N>.ckpt every N training steps (only the newest kept): what a rerun resumes
        # from after a hard kill (SIGKILL, power loss), when it is newer than last.ckpt
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
    keys = [k for k in (*(f"val/{n}" for n in AP_NAMES), "val/loss", "time/train_seconds", "time/step") if k in metrics]
    width = max((len(k) for k in keys), default=0)
    print(f"\n{title}")
    for k in keys:
        na = k.startswith("val/AP") and is_na(metrics[k])
        print(f"  {k:<{width}}  " + (NA_NOTE if na else f"{metrics[k]:.3f}"))


def _write_results(out: Path, results: dict[str, Any]) -> None:
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(out / RESULTS_FILE)  # atomic: a reader never sees half a file


def resume_checkpoint(out: str | Path) -> Path | None:
    """The newest of ``checkpoints/{last,interrupted,latest-step*}.ckpt`` and Lightning's SLURM
    requeue checkpoints ``hpc_ckpt_*.ckpt`` in a run's output dir.

    After a hard kill the periodic ``latest-step*`` may be newer than the last validation's
    ``last.ckpt``; after Ctrl-C/SIGTERM/a crash ``interrupted.ckpt`` is the newest; after a SLURM
    requeue (SIGUSR1) ``hpc_ckpt_*``. Ties (same mtime) go to the later training step."""
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    cands = [ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt", *ckpt_dir.glob("latest-step*.ckpt"), *out.glob("hpc_ckpt_*.ckpt")]
    cands = [p for p in cands if p.is_file() and p.stat().st_size > 0]
    return max(cands, key=lambda p: p.stat().st_mtime_ns) if cands else None


# keys that may change between a run and its resumption without changing its result
_RESUME_FREE_KEYS = ("logger", "callbacks", "trainer.enable_progress_bar", "data.datamodule.num_workers", "data.datamodule.root",
                     "backbone.weights", "pretrained_weights", "name", "group", "tags", "project", "ckpt_path", "skip_finished",
                     "output_dir", "job_overrides", "table.grid", "export_backbone",
                     # new key (data order): runs stored before it existed stay resumable/skippable
                     "exact_resume",
                     # the data preset's LR reference batch: its effect is schedule.reference_batch, compared
                     "data.reference_batch")


def _schema_defaults() -> dict[str, Any]:
    """Flat ``key: default`` of the typed schema (:class:`ttfnet_lightning.config.TrainConfig`)."""
    from .config import TrainConfig

    return flatten_dict(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False))


def check_same_config(out: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume or skip a run whose stored ``config_resolved.yaml`` differs from ``resolved``
    (a changed setting must not silently reuse another configuration's checkpoints or results)."""
    stored_file = out / "config_resolved.yaml"
    if not stored_file.is_file():
        return
    stored = flatten_dict(OmegaConf.to_container(OmegaConf.load(stored_file), resolve=True))
    now = flatten_dict(resolved)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in _RESUME_FREE_KEYS)  # noqa: E731
    # a setting added to the schema after the run was stored, at its default, changes nothing
    defaults = _schema_defaults()
    new_at_default = lambda k: k not in stored and k in defaults and now.get(k) == defaults[k]  # noqa: E731
    diff = sorted(k for k in set(stored) | set(now)
                  if not free(k) and not new_at_default(k) and stored.get(k, "<absent>") != now.get(k, "<absent>"))
    if diff:
        lines = [f"  {k}: stored {stored.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}" for k in diff[:15]]
        raise ValueError(
            f"{out} holds a run with a different configuration, which this run would resume or skip:\n"
            + "\n".join(lines)
            + "\nUse another output_dir (or hydra.sweep.dir=... for a sweep), or delete the old run."
        )


# exit status of a run stopped by SIGTERM (128 + 15, what a shell reports for a SIGTERM-killed process)
SIGTERM_EXIT_CODE = 143


def _interrupted(out: Path, what: str) -> SystemExit:
    """The ``SystemExit`` (non-zero) of a run stopped by a signal, after saying how to resume it."""
    ckpt = out / "checkpoints" / "interrupted.ckpt"
    saved = f"{ckpt} written; " if ckpt.is_file() else ""
    print(f"\ntraining stopped by {what}: {out} is not finished; {saved}run the same command again to resume it", file=sys.stderr, flush=True)
    return SystemExit(SIGTERM_EXIT_CODE)


def export_backbone_weights(model: TTFNetModule, path: str | Path) -> Path:
    """Write the network's backbone as a state dict loadable with ``backbone.weights=PATH``
    (torchvision key names for ResNets, the module's own names for DarkNet-53)."""
    backbone = model.net.backbone
    module = getattr(backbone, "net", backbone)  # ResNetBackbone wraps a torchvision ResNet
    state = {k: v.detach().cpu() for k, v in module.state_dict().items() if not k.startswith("fc.")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def train(cfg: DictConfig) -> float | None:
    """Train and validate; returns the last value of ``cfg.optimized_metric`` (None if never validated).

    Writes ``results.json`` (final metrics, timing, the job's overrides) into the output dir when
    training ends. A run whose output dir already holds a finished ``results.json`` is not trained
    again (``skip_finished``, default true): re-running a sweep skips its finished jobs. An
    unfinished run resumes from its newest checkpoint (see :func:`resume_checkpoint`)."""
    out = output_dir(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    done = read_results(out)
    if done is not None or resume_checkpoint(out) is not None:
        check_same_config(out, resolved)
    if cfg.get("skip_finished", True) and done and done.get("status") == "finished":
        print(f"\nskipping {out}: finished earlier (results.json; skip_finished=false trains again)")
        if cfg.get("export_backbone") and not Path(cfg.export_backbone).is_file():
            from .checkpoints import load_model

            export_backbone_weights(load_model(out / "checkpoints" / "last.ckpt"), cfg.export_backbone)
        return done.get("metrics", {}).get(str(cfg.optimized_metric))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ckpt_path = cfg.get("ckpt_path") or resume_checkpoint(out)
    if not ckpt_path:
        truncate_metrics(out, None)  # a fresh run: no rows of an earlier attempt in this dir
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    model = build_module(cfg, dm)
    loggers = build_loggers(cfg, out)
    for lg in loggers:  # W&B: flat config keys, val/* against training hours
        log_hyperparams(lg, cfg, resolved)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    callbacks = build_callbacks(cfg, out)
    if cfg.get("exact_resume", False):
        order = DataOrder(int(cfg.seed))
        order.wrap(dm)
        callbacks.append(order)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(out), logger=loggers, callbacks=callbacks, plugins=[StrictCheckpointIO()], _convert_="all"
    )
    log.info("output dir: %s", out)
    if ckpt_path and not cfg.get("ckpt_path"):
        print(f"resuming {out} from {ckpt_path}")
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*ckpt_path=\"last\".*")  # we pass the checkpoint explicitly
            warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
            if cfg.get("exact_resume", False):
                warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")  # DataOrder positions it
            trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt_path is None else str(ckpt_path))
            if not trainer.interrupted and trainer.callback_metrics.get("time/step") != trainer.global_step:
                # the schedule ended between validations (check_val_every_n_epoch > 1): the reported
                # metrics must be those of the final model
                trainer.validate(model, datamodule=dm, verbose=False)
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")  # last.ckpt = the final model
    except SIGTERMException:
        # Lightning raises SystemExit() (exit status 0) on SIGTERM: schedulers must see a failure,
        # and a sweep must stop here rather than start its next job
        _finish_wandb(loggers)
        raise _interrupted(out, "SIGTERM") from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # all logged values are scalars
    _print_metrics(metrics, f"final metrics ({out})")
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.best_model_path and Path(ckpt.best_model_path).is_file():
        print(f"  best checkpoint: {ckpt.best_model_path} (val/AP {float(ckpt.best_model_score):.3f})")
    if (out / "checkpoints" / "last.ckpt").is_file():
        print(f"  last checkpoint: {out / 'checkpoints' / 'last.ckpt'}")
    value = metrics.get(str(cfg.optimized_metric))
    _finish_wandb(loggers)
    if trainer.interrupted:  # Ctrl-C: Lightning returned normally, but the run is not finished
        # (and a sweep must stop here rather than start its next job)
        raise KeyboardInterrupt(f"training interrupted: {out} is not finished; run the same command again to resume it")
    results: dict[str, Any] = {
        "status": "finished",
        "metrics": metrics,
        "global_step": int(trainer.global_step),
        "wall_seconds_last_session": time.time() - started,
        "overrides": job_overrides(cfg),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if cfg.get("measure_fps"):
        from .evaluate import model_speed

        model.eval()
        results["fps"] = model_speed(model, batch_size=1, input_size=model.input_size, iters=30, warmup=5)
        results["fps_device"] = str(model.device)
        print(f"  model-only speed: {results['fps']:.1f} images/s (batch 1, {model.device})")
    if cfg.get("export_backbone"):
        print(f"  backbone weights: {export_backbone_weights(model, cfg.export_backbone)}")
    _write_results(out, results)
    return value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except Exception as exc:
        # a failed job of a paper-table sweep is marked in its results.json (the table shows
        # "failed"; a rerun tries it again); Hydra goes on with the other jobs and reports it
        if cfg.get("table") is not None:
            out = output_dir(cfg)
            if out.is_dir():
                _write_results(out, {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "overrides": job_overrides(cfg)})
        raise


if __name__ == "__main__":
    main()
