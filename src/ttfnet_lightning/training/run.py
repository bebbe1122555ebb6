"""Training entry point.

``train(cfg)`` is a plain function (tests and notebooks call it with a composed config); the
``@hydra.main`` wrapper only adds the command line. It returns ``cfg.optimized_metric`` of the last
validation, for sweepers.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ttfnet_lightning.core.metrics import AP_NAMES, NA_NOTE, is_na
from ttfnet_lightning.training.callbacks import (
    CocoResultsWriter,
    FiniteGuard,
    InterruptCheckpoint,
    LogValPredictions,
    RerunInterruptedValidation,
    TimeToAccuracy,
)
from ttfnet_lightning.training.checkpoints import StrictCheckpointIO, export_backbone_weights
from ttfnet_lightning.training.config import PEERS
from ttfnet_lightning.training.data_order import DataOrder
from ttfnet_lightning.training.detector_module import DetectorModule
from ttfnet_lightning.training.distributed import (
    StopOnSignal,
    ddp_run_scope,
    is_launch_rank_zero,
    patch_lightning_hydra_command,
)
from ttfnet_lightning.training.ema import EMA
from ttfnet_lightning.training.evaluate import model_speed
from ttfnet_lightning.training.lit_module import TTFNetModule, data_info
from ttfnet_lightning.training.peer_module import PeerDetectorModule
from ttfnet_lightning.training.profiling import StepTimer
from ttfnet_lightning.training.progress import progress_callbacks
from ttfnet_lightning.training.records import output_dir, read_results
from ttfnet_lightning.training.run_figures import finish_run_figures
from ttfnet_lightning.training.run_lock import lock_output_dir
from ttfnet_lightning.training.run_start import check_checkpoint_module, check_folder, resume_point, skip_finished
from ttfnet_lightning.training.runs import (
    ResumeMetrics,
    RunRecord,
    data_record,
    truncate_metrics,
    write_results,
    write_run_record,
)
from ttfnet_lightning.training.time_budget import budget_callbacks, budget_trainer_kwargs
from ttfnet_lightning.training.tracking import build_loggers, finish_wandb, job_overrides, log_hyperparams
from ttfnet_lightning.training.warnings_policy import library_messages_filtered

log = logging.getLogger(__name__)

__all__ = ["train", "build_datamodule", "build_module", "build_callbacks", "output_dir"]


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data.datamodule, _convert_="all")


def build_module(cfg: DictConfig, dm: pl.LightningDataModule) -> DetectorModule:
    """The LightningModule from the config and the data module: :meth:`TTFNetModule.from_config`, or for
    torchvision's detectors (``model.method`` in :data:`~ttfnet_lightning.training.config.PEERS`)
    :meth:`PeerDetectorModule.from_config`."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    module = PeerDetectorModule if resolved["model"]["method"] in PEERS else TTFNetModule
    return module.from_config(resolved, data_info=data_info(dm))


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
        # budget.train_minutes: stop at the training-time budget, the LR from the fraction of it used (before
        # LearningRateMonitor, which then logs that LR); none without a budget (training/time_budget.py)
        *budget_callbacks(cfg),
        ResumeMetrics(out),
        LearningRateMonitor(logging_interval="step"),  # train/lr/weights, train/lr/biases
        CocoResultsWriter(),  # detections_val.json of each validation
        # under DDP, SIGTERM stops every process after the same step; under submitit, a preemption
        # stops training at a step's end before the job is requeued (else: Lightning's handling)
        StopOnSignal(),
    ]
    every = cfg.callbacks.get("checkpoint_every_n_steps")
    if every:
        # latest-step<N>.ckpt every N training steps (only the newest kept): what a rerun resumes
        # from after a hard kill (SIGKILL, power loss), when it is newer than last.ckpt
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="latest-step{step}",
                every_n_train_steps=int(every),
                save_top_k=1,
                auto_insert_metric_name=False,
            )
        )
    if cfg.callbacks.get("step_timer"):
        callbacks.append(StepTimer())
    if cfg.callbacks.get("log_val_images"):
        callbacks.append(LogValPredictions(num_images=int(cfg.callbacks.log_val_images)))
    # the model summary and progress: a bar in a terminal, plain lines in a batch job's log
    callbacks.extend(progress_callbacks(cfg.callbacks.get("progress") or {}, cfg.trainer))
    # ema=ema|short: validation and checkpoints on an average of the weights (training/ema.py); last, so that the
    # other callbacks' validation-end hooks still see the average
    ema = EMA.from_config(cfg.get("ema"))
    if ema is not None:
        callbacks.append(ema)
    return callbacks


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    keys = [k for k in (*(f"val/{n}" for n in AP_NAMES), "val/loss", "time/train_seconds", "time/step") if k in metrics]
    width = max((len(k) for k in keys), default=0)
    print(f"\n{title}")
    for k in keys:
        na = k.startswith("val/AP") and is_na(metrics[k])
        print(f"  {k:<{width}}  " + (NA_NOTE if na else f"{metrics[k]:.3f}"))


# exit status of a run stopped by SIGTERM (128 + 15, what a shell reports for a SIGTERM-killed process)
SIGTERM_EXIT_CODE = 143


def _interrupted(out: Path, what: str, report: bool = True) -> SystemExit:
    """The ``SystemExit`` (non-zero) of a run stopped by a signal, after saying how to resume it
    (``report``: on rank 0 only under DDP)."""
    ckpt = out / "checkpoints" / "interrupted.ckpt"
    saved = f"{ckpt} written; " if ckpt.is_file() else ""
    if report:
        print(
            f"\ntraining stopped by {what}: {out} is not finished; {saved}run the same command again to resume it",
            file=sys.stderr,
            flush=True,
        )
    return SystemExit(SIGTERM_EXIT_CODE)


def _terminated_workers(exc: BaseException, trainer: pl.Trainer) -> bool:
    """Whether ``exc`` is the data loader's report of workers ended by SIGTERM, or any error after
    this process itself received SIGTERM (Lightning's signal connector noted it)."""
    if re.search(r"DataLoader worker \(pids? [^)]*\) is killed by signal: Terminated", str(exc)):
        return True
    return bool(getattr(getattr(trainer, "_signal_connector", None), "received_sigterm", False))


def train(cfg: DictConfig) -> float | None:
    """Train and validate; returns the last value of ``cfg.optimized_metric`` (None if never validated).

    Writes ``results.json`` (final metrics, timing, the job's overrides) into the output dir when
    training ends. A run whose output dir already holds a finished ``results.json`` is not trained
    again (``skip_finished``, default true): re-running a sweep skips its finished jobs. An
    unfinished run resumes from its newest readable checkpoint (see :func:`resume_checkpoint`).
    A stored run (the folder, or the checkpoint given as ``ckpt_path``) is resumed or skipped only
    with the same config and the same data (:mod:`ttfnet_lightning.training.runs`).

    One run per output dir at a time: a run started into a folder another run is training into
    is refused before it changes anything there (:class:`~ttfnet_lightning.training.run_lock.RunLockedError`).

    Under DDP every process runs this function; the run's files are written by global rank 0 only
    (see :mod:`ttfnet_lightning.training.distributed`), which also holds the folder's lock."""
    out = output_dir(cfg)
    with lock_output_dir(out), library_messages_filtered():  # harmless library messages left out
        return _train(cfg, out)


def _train(cfg: DictConfig, out: Path) -> float | None:
    """The run's steps, in order (the folder is locked by :func:`train`)."""
    rank_zero = is_launch_rank_zero()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data = data_record(resolved["data"]["datamodule"])
    done = read_results(out)
    check_folder(out, resolved, data, done)
    if skip_finished(cfg, out, done, rank_zero):
        return done.get("metrics", {}).get(str(cfg.optimized_metric))
    ckpt_path, ckpt_run = resume_point(cfg, out, resolved, data, rank_zero)
    if cfg.get("export_backbone") and Path(cfg.export_backbone).is_dir():  # found now, not after training
        raise IsADirectoryError(
            f"export_backbone={cfg.export_backbone} is a directory: give the file to write (e.g. .../r18.pth)"
        )
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not ckpt_path and rank_zero:
        truncate_metrics(out, None)  # a fresh run: no rows of an earlier attempt in this dir
    dm, model = _build_data_and_model(cfg, ckpt_run)
    loggers = build_loggers(cfg, out)
    for lg in loggers:  # W&B: flat config keys, val/* against training hours
        log_hyperparams(lg, cfg, resolved)
    if rank_zero:
        write_run_record(out, resolved, data)
    trainer = _build_trainer(cfg, out, dm, loggers, RunRecord(resolved, data))
    rank_zero = trainer.is_global_zero  # the Trainer knows the real rank
    if ckpt_path and not cfg.get("ckpt_path") and rank_zero:
        print(f"resuming {out} from {ckpt_path}")
    _fit(cfg, out, trainer, model, dm, ckpt_path, loggers)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # all logged values are scalars
    value = metrics.get(str(cfg.optimized_metric))
    if rank_zero and not trainer.interrupted and cfg.get("analysis", True):
        finish_run_figures(out, trainer=trainer, datamodule=dm)  # before W&B closes: it logs the PNGs there too
    finish_wandb(loggers)
    if not rank_zero:  # under DDP: the metrics are synced, rank 0 reports and writes them
        if trainer.interrupted:
            raise KeyboardInterrupt(f"training interrupted: {out} is not finished")
        return value
    _finish(cfg, out, trainer, model, metrics, {**_wall_record(trainer, started), "data_fingerprint": data})
    return value


def _wall_record(trainer: pl.Trainer, started: float) -> dict[str, Any]:
    """results.json's wall clock: this session's, and with the sessions' count the whole run's over all
    its sessions (:class:`TimeToAccuracy`; absent when it resumed a checkpoint that did not keep it)."""
    record: dict[str, Any] = {"wall_seconds_last_session": time.time() - started}
    timer = next((c for c in trainer.callbacks if isinstance(c, TimeToAccuracy)), None)
    if timer is not None:
        record["sessions"] = timer.sessions_before + 1
        if timer.wall_complete:
            record["wall_seconds_total"] = timer.wall_before + record["wall_seconds_last_session"]
    return record


def _build_data_and_model(cfg: DictConfig, ckpt_run: Any) -> tuple[pl.LightningDataModule, DetectorModule]:
    """Seeded data module and LightningModule (checked against the checkpoint it resumes, with the speed options)."""
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    model = build_module(cfg, dm)
    if ckpt_run is not None:
        check_checkpoint_module(ckpt_run, dict(model.hparams))
    if cfg.speed.channels_last:
        model.use_channels_last()
    if cfg.speed.compile:
        model.net.compile()  # in place: checkpoints keep the plain network's keys (a peer: its backbone and FPN)
    return dm, model


def _build_trainer(
    cfg: DictConfig, out: Path, dm: pl.LightningDataModule, loggers: list[Any], record: pl.Callback
) -> pl.Trainer:
    """The Trainer with the run's callbacks (``record``: every checkpoint carries the run's config and data)."""
    callbacks = [*build_callbacks(cfg, out), record]
    if cfg.get("exact_resume", False):
        order = DataOrder(int(cfg.seed))
        order.wrap(dm)
        callbacks.append(order)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(out),
        **budget_trainer_kwargs(cfg),  # budget.val_every_minutes: time-based validation
        logger=loggers,
        callbacks=callbacks,
        plugins=[StrictCheckpointIO()],
        _convert_="all",
    )
    log.info("output dir: %s", out)
    return trainer


def _fit(
    cfg: DictConfig,
    out: Path,
    trainer: pl.Trainer,
    model: DetectorModule,
    dm: pl.LightningDataModule,
    ckpt_path: Path | str | None,
    loggers: list[Any],
) -> None:
    """``trainer.fit`` (and a final validation when the schedule ended between validations); a stop by
    SIGTERM becomes a non-zero exit that says how to resume."""
    try:
        # DDP inside a Hydra sweep: the other ranks run this job, not the sweep's command line, and
        # the job's process group ends with it
        with warnings.catch_warnings(), patch_lightning_hydra_command(), ddp_run_scope():
            warnings.filterwarnings(
                "ignore", message=r".*overridden `(on_after_batch_transfer|transfer_batch_to_device)`.*"
            )
            if cfg.get("exact_resume", False):
                warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")  # DataOrder positions it
            trainer.fit(
                model, datamodule=dm, ckpt_path=None if ckpt_path is None else str(ckpt_path), weights_only=True
            )
            if not trainer.interrupted and trainer.callback_metrics.get("time/step") != trainer.global_step:
                # the schedule ended between validations (check_val_every_n_epoch > 1): the reported
                # metrics must be those of the final model
                trainer.validate(model, datamodule=dm, verbose=False)
                # last.ckpt = the final model (weights_only given: Lightning logs its default otherwise)
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)
    except SIGTERMException:
        # Lightning raises SystemExit() (exit status 0) on SIGTERM: schedulers must see a failure,
        # and a sweep must stop here rather than start its next job
        finish_wandb(loggers)
        for cb in trainer.callbacks:
            if isinstance(cb, StopOnSignal):
                cb.requeue()  # stopped by submitit's preemption signal: submitit requeues the job and exits
        raise _interrupted(out, "SIGTERM", trainer.is_global_zero) from None
    except RuntimeError as exc:
        # SIGTERM to the whole process group (SLURM's scancel, `kill -- -PGID`, a container stop)
        # also reaches the data-loader workers, whose death the loader may report before Lightning
        # stops at the step's end: an interruption like SIGTERM, not a failed run (which a sweep
        # would mark failed and pass over)
        if not _terminated_workers(exc, trainer):
            raise
        finish_wandb(loggers)
        raise _interrupted(out, "SIGTERM (with its data-loader workers)", trainer.is_global_zero) from None


def _finish(
    cfg: DictConfig,
    out: Path,
    trainer: pl.Trainer,
    model: DetectorModule,
    metrics: dict[str, float],
    extra: dict[str, Any],
) -> None:
    """Rank 0 after training: print the final metrics and checkpoints; an interrupted run raises
    KeyboardInterrupt, a finished one gets its ``results.json`` (with ``extra``), its speed
    (``measure_fps``) and its exported backbone (``export_backbone``)."""
    _print_metrics(metrics, f"final metrics ({out})")
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and ckpt.best_model_path and Path(ckpt.best_model_path).is_file():
        # (no score: a run resumed after its folder was moved; Lightning resets the score, not the path)
        score = "" if ckpt.best_model_score is None else f" (val/AP {float(ckpt.best_model_score):.3f})"
        print(f"  best checkpoint: {ckpt.best_model_path}{score}")
    if (out / "checkpoints" / "last.ckpt").is_file():
        print(f"  last checkpoint: {out / 'checkpoints' / 'last.ckpt'}")
    if trainer.interrupted:  # Ctrl-C: Lightning returned normally, but the run is not finished
        # (and a sweep must stop here rather than start its next job)
        raise KeyboardInterrupt(f"training interrupted: {out} is not finished; run the same command again to resume it")
    results: dict[str, Any] = {
        "status": "finished",
        "metrics": metrics,
        "global_step": int(trainer.global_step),
        "overrides": job_overrides(cfg),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    if cfg.get("measure_fps"):
        model.eval()
        results["fps"] = model_speed(model, batch_size=1, input_size=model.input_size, iters=30, warmup=5)
        results["fps_device"] = str(model.device)
        print(f"  model-only speed: {results['fps']:.1f} images/s (batch 1, {model.device})")
    if cfg.get("export_backbone"):
        print(f"  backbone weights: {export_backbone_weights(model, cfg.export_backbone)}")
    write_results(out, results)
