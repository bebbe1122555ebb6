"""Lightning callbacks: time-to-accuracy tracking, and the pieces that make runs trustworthy: a
NaN/inf guard and the interruption checkpoint (the reproducible data order:
:mod:`ttfnet_lightning.training.data_order`; validation images with boxes, ``LogValPredictions``:
:mod:`ttfnet_lightning.training.wandb_media`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, Checkpoint

from ttfnet_lightning.core.atomic import atomic_write
from ttfnet_lightning.core.decode import coco_results
from ttfnet_lightning.training.distributed import dedupe_by_image, gather_to_rank_zero
from ttfnet_lightning.training.lit_module import NonFiniteError, image_ids
from ttfnet_lightning.training.wandb_media import LogValPredictions  # moved there; imported from here by run.py

log = logging.getLogger(__name__)

__all__ = [
    "TimeToAccuracy",
    "CocoResultsWriter",
    "LogValPredictions",
    "FiniteGuard",
    "InterruptCheckpoint",
    "RerunInterruptedValidation",
]


# the clock of TimeToAccuracy (a module attribute so that tests can replace it)
_clock = time.perf_counter
_wall_clock = time.monotonic  # the run's wall clock over its sessions (not replaced by the tests of _clock)


class TimeToAccuracy(Callback):
    """Cumulative training wall-clock time, validation excluded, logged with every validation.

    The paper's point is accuracy per training hour; this logs ``time/train_seconds``,
    ``time/train_hours`` and ``time/step`` beside ``val/AP`` so AP can be plotted against training
    time. The clock runs from each training batch's start (data loading included) until a
    validation starts or training stops, also after a mid-epoch validation
    (``val_check_interval < 1``). It survives checkpoint/resume: the saved state includes the
    segment running at save time, so a checkpoint written on an exception or SIGTERM (or mid-epoch)
    counts every second up to it. Seconds after the last checkpoint of a hard-killed run are lost
    (they are spent again after the resume and counted then).

    It also keeps the run's wall clock over all its sessions (:meth:`wall_seconds`: validation,
    setup and waiting included, each earlier session up to its last checkpoint), which the tables
    aggregator sums; a checkpoint written before this was kept gives ``wall_complete = False``.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self._since: float | None = None
        self.wall_before = 0.0  # earlier sessions' wall clock, from the checkpoint resumed
        self.sessions_before = 0
        self.wall_complete = True
        self._session_start = _wall_clock()

    def wall_seconds(self) -> float:
        """Wall-clock seconds of the run: earlier sessions (up to their last checkpoint) and this one."""
        return self.wall_before + (_wall_clock() - self._session_start)

    def seconds(self) -> float:
        """Training seconds so far, the running segment included."""
        return self.train_seconds + (_clock() - self._since if self._since is not None else 0.0)

    def _pause(self) -> None:
        if self._since is not None:
            self.train_seconds += _clock() - self._since
            self._since = None

    def _resume(self) -> None:
        if self._since is None:
            self._since = _clock()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._resume()  # after a mid-epoch validation the clock runs again from here

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._pause()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # sync_dist: under DDP the mean over the processes (their clocks differ by milliseconds)
        pl_module.log("time/train_seconds", self.train_seconds, sync_dist=True)
        pl_module.log("time/train_hours", self.train_seconds / 3600, sync_dist=True)
        pl_module.log("time/step", float(trainer.global_step), sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        state = {"train_seconds": self.seconds(), "sessions": self.sessions_before + 1}
        if self.wall_complete:
            state["wall_seconds"] = self.wall_seconds()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self._since = None
        self.wall_complete = "wall_seconds" in state_dict
        self.wall_before = float(state_dict.get("wall_seconds", 0.0))
        self.sessions_before = int(state_dict.get("sessions", 1))


class CocoResultsWriter(Callback):
    """COCO-format detections of each validation (``detections_val.json`` in the log dir), with
    the data set's original category ids when the module knows them (``data_info.label_to_cat_id``);
    the official COCO evaluator reads it (``evaluate``). Skipped in the sanity check. Under DDP the
    detections of every rank are gathered to rank 0, which writes them, each image's detections once
    (the distributed sampler's padding repeats images:
    :func:`~ttfnet_lightning.training.distributed.dedupe_by_image`)."""

    def __init__(self, filename: str = "detections_val.json") -> None:
        self.filename = filename
        self.results: list[dict[str, Any]] = []

    def add(
        self,
        detections: Sequence[dict[str, Any]],
        meta: Sequence[dict[str, Any]],
        label_to_cat_id: Sequence[int] | None,
    ) -> None:
        """Collect one batch: per-image ``{boxes, scores, labels}`` and the batch's ``meta``."""
        self.results += coco_results(list(detections), [m["image_id"] for m in meta], label_to_cat_id)

    def write(self, path: str | Path) -> Path:
        """The collected detections as a COCO results JSON at ``path``, written atomically and durably."""
        path = atomic_write(Path(path), json.dumps(self.results))
        log.info("wrote %d detections to %s", len(self.results), path)
        return path

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if outputs is not None and not trainer.sanity_checking:
            self.add(outputs, batch["meta"], getattr(pl_module, "label_to_cat_id", None))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return

        per_rank = gather_to_rank_zero(trainer, self.results)  # collectives under DDP: every rank calls
        log_dir = trainer.log_dir  # both (Lightning broadcasts log_dir from rank 0)
        if per_rank is None or not trainer.is_global_zero or log_dir is None:
            return
        if len(per_rank) > 1:
            self.results = dedupe_by_image(per_rank)
        self.write(Path(log_dir) / self.filename)


class FiniteGuard(Callback):
    """Stop training when an optimiser step left NaN/inf weights (the loss itself is checked in
    ``TTFNetModule.training_step``). Runs at every training batch end, before Lightning's
    checkpoint callbacks, so that such weights are never validated or saved (as "best" or else)."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            return
        norms = torch._foreach_norm([p.detach() for p in params])
        if bool(torch.isfinite(torch.stack(norms)).all()):
            return
        names = [n for n, p in pl_module.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        raise NonFiniteError(
            f"non-finite weights after the optimiser step of global step {trainer.global_step - 1} "
            f"(epoch {trainer.current_epoch}, batch {batch_idx}; images {image_ids(batch)}): {len(names)} tensors, "
            f"e.g. {names[:5]}. Training stopped, no checkpoint of this model is saved; lower schedule.lr and rerun."
        )


class InterruptCheckpoint(Checkpoint):
    """``checkpoints/interrupted.ckpt`` when training stops on an exception, Ctrl-C or SIGTERM, so
    that rerunning the command resumes it. Not written when nothing was trained in this session
    (a bad config value or unreadable data: a corrected rerun must start afresh, or resume from
    the checkpoint it was started from), nor for NaN/inf (such a model must not be resumed). A
    failing write is logged and does not hide the original error; the file is removed when a run
    ends normally.

    Lightning's ``OnExceptionCheckpoint`` does the same, but its presence makes ``fit(ckpt_path=None)``
    mean "the newest checkpoint of the folder": ``train()`` chooses the checkpoint itself (passing over
    unreadable ones), so None must mean a fresh start. Hence a plain ``Checkpoint`` with the same two
    hooks (pytorch_lightning 2.6's ``on_exception`` and ``teardown``)."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        super().__init__()
        self.dirpath, self.filename = dirpath, filename
        self.trained_batches = 0

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        trainer.strategy.remove_checkpoint(self.ckpt_path)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.trained_batches += 1

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteError):
            log.error("not writing %s: training diverged (%s)", self.ckpt_path, exception)
            return
        if self.trained_batches == 0:
            log.info("not writing %s: no training step ran in this session", self.ckpt_path)
            return
        try:
            with _worker_deaths_ignored():
                trainer.save_checkpoint(self.ckpt_path)
        except Exception as exc:  # the original exception is the one to report
            log.error("could not write the interruption checkpoint %s: %s", self.ckpt_path, exc)
        else:
            log.warning(
                "wrote %s at global step %d (%s)", self.ckpt_path, trainer.global_step, type(exception).__name__
            )


@contextmanager
def _worker_deaths_ignored() -> Iterator[None]:
    """Mute the data loader's SIGCHLD handler while the interruption checkpoint is written.

    When SIGTERM reaches the whole process group, every data-loader worker dies; PyTorch's SIGCHLD
    handler raises "DataLoader worker ... is killed by signal" for each dead worker, at whatever
    line the main thread is running. The first report stops training (an interruption, see
    ``train._terminated_workers``); the next one, arriving a few ms later, used to abort the
    checkpoint write. The workers are gone either way: the checkpoint needs none of them."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = None
    for _ in range(8):  # signal.signal runs pending Python handlers first: one may raise once per worker
        try:
            previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            break
        except RuntimeError as exc:
            log.info("data-loader worker ended while stopping: %s", exc)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGCHLD, previous)


class RerunInterruptedValidation(Callback):
    """A checkpoint written while a validation of ``fit`` is under way (SIGTERM, Ctrl-C, a crash,
    SLURM's SIGUSR1) is marked so that the resumed run runs that whole validation again before it
    trains on.

    Left alone, Lightning skips it (it resumes "after the last training batch", or, when stopped
    inside a batch, runs only the remaining validation batches, whose metric would then cover part
    of the data): the epoch would have no ``val/AP`` row, no ``last``/``best`` checkpoint. The
    validation progress stored in the checkpoint is set to "first batch started, none done",
    Lightning's own restart-mid-evaluation state, so it reruns from the first batch."""

    def __init__(self) -> None:
        self.validating = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validating = not trainer.sanity_checking and trainer.state.fn == "fit"

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validating = False  # the checkpoints of on_validation_end belong to a finished validation

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.validating:
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
        if progress is None:  # another Lightning layout: fail loudly rather than resume silently wrong
            raise RuntimeError(
                "cannot mark an interrupted validation in this Lightning version's checkpoint (no "
                "val_loop.batch_progress)"
            )
        started = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        progress["total"] = dict(progress["total"], **started)
        progress["current"] = dict(progress["current"], **started)
        progress["is_last_batch"] = False
        log.info("checkpoint written during validation: the resumed run validates again from its first batch")
