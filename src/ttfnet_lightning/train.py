"""Training entry point.

    python -m ttfnet_lightning.train backbone=r18 schedule=fast            # built-in data
    python -m ttfnet_lightning.train data=coco data.datamodule.root=/data/coco
    python -m ttfnet_lightning.train -m kernel.beta=0.1,0.54 schedule.lr=0.008,0.016

``train(cfg)`` is a plain function (tests and notebooks call it with a composed config); the
``@hydra.main`` wrapper only adds the command line. It returns ``cfg.optimized_metric`` of the last
validation, for sweepers.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .callbacks import CocoResultsWriter, DataOrder, FiniteGuard, InterruptCheckpoint, LogValPredictions, RerunInterruptedValidation, TimeToAccuracy
from .checkpoints import StrictCheckpointIO, export_backbone_weights
from .config import DecodeConfig, LossConfig, NetConfig, OptimConfig
from .distributed import StopOnSignal, ddp_run_scope, is_launch_rank_zero, patch_lightning_hydra_command
from .lit_module import TTFNetModule
from .metrics import AP_NAMES, NA_NOTE, is_na
from .run_lock import RunLockedError, lock_output_dir
from .runs import (
    ResumeMetrics,
    RunMismatchError,
    RunRecord,
    check_checkpoint_module,
    check_checkpoint_run,
    check_same_config,
    check_same_data,
    checkpoint_candidates,
    checkpoint_run,
    data_record,
    read_data_record,
    resume_checkpoint,
    truncate_metrics,
    write_results,
    write_run_record,
)
from .tables import job_dirname, read_results
from .tracking import build_loggers, finish_wandb, job_overrides, log_hyperparams

log = logging.getLogger(__name__)

# `hydra.sweep.subdir: ${ttf_jobdir:${hydra.overrides.task},${table.grid...}}` in the paper-table sweeps
if not OmegaConf.has_resolver("ttf_jobdir"):
    OmegaConf.register_new_resolver("ttf_jobdir", job_dirname)


def sqlite_url(path: str) -> str:
    """``sqlite:///<path>``, its folder created (sqlite does not create it, and Optuna opens the
    storage before Hydra creates the sweep dir): ``${ttf_sqlite:${hydra.sweep.dir}/optuna.db}``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).absolute()}"


if not OmegaConf.has_resolver("ttf_sqlite"):
    OmegaConf.register_new_resolver("ttf_sqlite", sqlite_url)

__all__ = ["train", "build_datamodule", "build_module", "build_callbacks", "output_dir"]


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
            ModelCheckpoint(dirpath=ckpt_dir, filename="latest-step{step}", every_n_train_steps=int(every), save_top_k=1, auto_insert_metric_name=False)
        )
    if cfg.callbacks.get("step_timer"):
        from .profiling import StepTimer

        callbacks.append(StepTimer())
    if cfg.callbacks.get("log_val_images"):
        callbacks.append(LogValPredictions(num_images=int(cfg.callbacks.log_val_images)))
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
        print(f"\ntraining stopped by {what}: {out} is not finished; {saved}run the same command again to resume it", file=sys.stderr, flush=True)
    return SystemExit(SIGTERM_EXIT_CODE)


def _terminated_workers(exc: BaseException, trainer: pl.Trainer) -> bool:
    """Whether ``exc`` is the data loader's report of workers ended by SIGTERM, or any error after
    this process itself received SIGTERM (Lightning's signal connector noted it)."""
    if re.search(r"DataLoader worker \(pids? [^)]*\) is killed by signal: Terminated", str(exc)):
        return True
    return bool(getattr(getattr(trainer, "_signal_connector", None), "received_sigterm", False))


def _check_folder(out: Path, resolved: dict[str, Any], data: dict[str, Any] | None, done: dict[str, Any] | None) -> None:
    """Refuse to resume or skip the run stored in ``out`` (its results or checkpoints) when it has
    another config or other data (:class:`~ttfnet_lightning.runs.RunMismatchError`)."""
    if done is not None or checkpoint_candidates(out):
        check_same_config(out, resolved)
        check_same_data(str(out), read_data_record(out, done), data)


def _resume_point(cfg: DictConfig, out: Path, resolved: dict[str, Any], data: dict[str, Any] | None,
                  rank_zero: bool) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from (``ckpt_path``, else the newest readable one of the folder,
    else None) and what it says about its run, after checking that run's config and data.

    Raises:
        RunMismatchError: the checkpoint's run has another config or other data.
        FileNotFoundError, CheckpointError: ``ckpt_path`` is missing or not a usable checkpoint."""
    explicit = cfg.get("ckpt_path")
    skipped: list[tuple[Path, str]] = []
    ckpt = explicit if explicit else resume_checkpoint(out, skipped)
    if rank_zero:
        for path, why in skipped:
            print(f"not resuming from {path}: {why}", file=sys.stderr, flush=True)
        if skipped and ckpt is None:
            print(f"no readable checkpoint in {out}: training from the start", file=sys.stderr, flush=True)
    if ckpt is None:
        return None, None
    run = checkpoint_run(ckpt, verify=bool(explicit))  # a found one was checked whole already
    check_checkpoint_run(run, resolved, data)
    return Path(ckpt), run


def _skip_finished(cfg: DictConfig, out: Path, done: dict[str, Any] | None, rank_zero: bool) -> bool:
    """Whether this run finished earlier and is skipped (``skip_finished``); exports its backbone
    again when that file is missing."""
    if not (cfg.get("skip_finished", True) and done and done.get("status") == "finished"):
        return False
    export_missing = bool(cfg.get("export_backbone")) and not Path(cfg.export_backbone).is_file()
    last_ckpt = out / "checkpoints" / "last.ckpt"
    if export_missing and not last_ckpt.is_file():
        # The run finished, but both its exported backbone and its checkpoint are gone (e.g. a
        # fresh clone: results.json is tracked, weights are not). The export is the point of
        # such a run, so train it again rather than fail or skip.
        if rank_zero:
            print(f"\n{out} finished earlier, but {cfg.export_backbone} and {last_ckpt} are both "
                  "missing: training it again to re-create the backbone weights")
        return False
    if rank_zero:
        print(f"\nskipping {out}: finished earlier (results.json; skip_finished=false trains again)")
    if export_missing and rank_zero:
        from .checkpoints import load_model

        export_backbone_weights(load_model(last_ckpt), cfg.export_backbone)
    return True


def train(cfg: DictConfig) -> float | None:
    """Train and validate; returns the last value of ``cfg.optimized_metric`` (None if never validated).

    Writes ``results.json`` (final metrics, timing, the job's overrides) into the output dir when
    training ends. A run whose output dir already holds a finished ``results.json`` is not trained
    again (``skip_finished``, default true): re-running a sweep skips its finished jobs. An
    unfinished run resumes from its newest readable checkpoint (see :func:`resume_checkpoint`).
    A stored run (the folder, or the checkpoint given as ``ckpt_path``) is resumed or skipped only
    with the same config and the same data (:mod:`ttfnet_lightning.runs`).

    One run per output dir at a time: a run started into a folder another run is training into
    is refused before it changes anything there (:class:`~ttfnet_lightning.run_lock.RunLockedError`).

    Under DDP every process runs this function; the run's files are written by global rank 0 only
    (see :mod:`ttfnet_lightning.distributed`), which also holds the folder's lock."""
    out = output_dir(cfg)
    with lock_output_dir(out):
        return _train(cfg, out)


def _train(cfg: DictConfig, out: Path) -> float | None:
    rank_zero = is_launch_rank_zero()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data = data_record(resolved["data"]["datamodule"])
    done = read_results(out)
    _check_folder(out, resolved, data, done)
    if _skip_finished(cfg, out, done, rank_zero):
        return done.get("metrics", {}).get(str(cfg.optimized_metric))
    ckpt_path, ckpt_run = _resume_point(cfg, out, resolved, data, rank_zero)
    if cfg.get("export_backbone") and Path(cfg.export_backbone).is_dir():  # found now, not after training
        raise IsADirectoryError(f"export_backbone={cfg.export_backbone} is a directory: give the file to write (e.g. .../r18.pth)")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not ckpt_path and rank_zero:
        truncate_metrics(out, None)  # a fresh run: no rows of an earlier attempt in this dir
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    model = build_module(cfg, dm)
    if ckpt_run is not None:
        check_checkpoint_module(ckpt_run, dict(model.hparams))
    if cfg.speed.channels_last:
        model.use_channels_last()
    if cfg.speed.compile:
        model.net.compile()  # in place: checkpoints keep the plain network's keys
    loggers = build_loggers(cfg, out)
    for lg in loggers:  # W&B: flat config keys, val/* against training hours
        log_hyperparams(lg, cfg, resolved)
    if rank_zero:
        write_run_record(out, resolved, data)
    callbacks = [*build_callbacks(cfg, out), RunRecord(resolved, data)]  # every checkpoint carries the run's config and data
    if cfg.get("exact_resume", False):
        order = DataOrder(int(cfg.seed))
        order.wrap(dm)
        callbacks.append(order)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(out), logger=loggers, callbacks=callbacks, plugins=[StrictCheckpointIO()], _convert_="all"
    )
    log.info("output dir: %s", out)
    rank_zero = trainer.is_global_zero  # the Trainer knows the real rank
    if ckpt_path and not cfg.get("ckpt_path") and rank_zero:
        print(f"resuming {out} from {ckpt_path}")
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        # DDP inside a Hydra sweep: the other ranks run this job, not the sweep's command line, and
        # the job's process group ends with it
        with warnings.catch_warnings(), patch_lightning_hydra_command(), ddp_run_scope():
            warnings.filterwarnings("ignore", message=r".*ckpt_path=\"last\".*")  # we pass the checkpoint explicitly
            warnings.filterwarnings("ignore", message=r".*overridden `(on_after_batch_transfer|transfer_batch_to_device)`.*")
            if cfg.get("exact_resume", False):
                warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")  # DataOrder positions it
            trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt_path is None else str(ckpt_path), weights_only=True)
            if not trainer.interrupted and trainer.callback_metrics.get("time/step") != trainer.global_step:
                # the schedule ended between validations (check_val_every_n_epoch > 1): the reported
                # metrics must be those of the final model
                trainer.validate(model, datamodule=dm, verbose=False)
                trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")  # last.ckpt = the final model
    except SIGTERMException:
        # Lightning raises SystemExit() (exit status 0) on SIGTERM: schedulers must see a failure,
        # and a sweep must stop here rather than start its next job
        finish_wandb(loggers)
        for cb in trainer.callbacks:
            if isinstance(cb, StopOnSignal):
                cb.requeue()  # stopped by submitit's preemption signal: submitit requeues the job and exits
        raise _interrupted(out, "SIGTERM", rank_zero) from None
    except RuntimeError as exc:
        # SIGTERM to the whole process group (SLURM's scancel, `kill -- -PGID`, a container stop)
        # also reaches the data-loader workers, whose death the loader may report before Lightning
        # stops at the step's end: an interruption like SIGTERM, not a failed run (which a sweep
        # would mark failed and pass over)
        if not _terminated_workers(exc, trainer):
            raise
        finish_wandb(loggers)
        raise _interrupted(out, "SIGTERM (with its data-loader workers)", rank_zero) from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # all logged values are scalars
    value = metrics.get(str(cfg.optimized_metric))
    finish_wandb(loggers)
    if not rank_zero:  # under DDP: the metrics are synced, rank 0 reports and writes them
        if trainer.interrupted:
            raise KeyboardInterrupt(f"training interrupted: {out} is not finished")
        return value
    _finish(cfg, out, trainer, model, metrics, {"wall_seconds_last_session": time.time() - started, "data_fingerprint": data})
    return value


def _finish(cfg: DictConfig, out: Path, trainer: pl.Trainer, model: TTFNetModule, metrics: dict[str, float],
            extra: dict[str, Any]) -> None:
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
        from .evaluate import model_speed

        model.eval()
        results["fps"] = model_speed(model, batch_size=1, input_size=model.input_size, iters=30, warmup=5)
        results["fps_device"] = str(model.device)
        print(f"  model-only speed: {results['fps']:.1f} images/s (batch 1, {model.device})")
    if cfg.get("export_backbone"):
        print(f"  backbone weights: {export_backbone_weights(model, cfg.export_backbone)}")
    write_results(out, results)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except Exception as exc:
        # a failed job of a paper-table sweep is marked in its results.json (the table shows
        # "failed"; a rerun tries it again); Hydra goes on with the other jobs and reports it
        # (not when the folder holds another run, or another process is training into it)
        if cfg.get("table") is not None and not isinstance(exc, (RunLockedError, RunMismatchError)):
            out = output_dir(cfg)
            if out.is_dir():
                write_results(out, {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "overrides": job_overrides(cfg)})
                # said now: Hydra reports a sweep's failed jobs only once the whole sweep is over
                log.error(f"job failed, marked in {out / 'results.json'}: {type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()
