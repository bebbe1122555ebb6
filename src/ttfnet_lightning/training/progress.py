"""What a training run prints while it trains, in a terminal and in a batch job's log.

Lightning's progress bars redraw one line in place; with stdout not a terminal (SLURM, ``nohup ... >
log``) a log holds only their final frame, hours later. Their epoch counter is 0-based and counts to
``max_epochs - 1`` (``Epoch 4/11`` when ``max_steps`` ends the run in its fifth epoch), and their ETA is
the current epoch's. Here:

* :class:`ProgressLines` (stdout not a terminal): one plain line every ``every_seconds`` seconds, at the
  first step of the session and at the end of training: step / total steps, epoch / total epochs as the
  run will really end (``max_steps`` or ``max_epochs``, whichever comes first), the loss terms, the LR,
  images/s, elapsed time and the ETA of the whole run; during a validation a line every
  ``every_seconds``, after it one line with its AP and loss.
* :class:`RunProgressBar` (a terminal): Lightning's tqdm bar with the same epoch count (``Epoch 5/5``),
  the LR and the whole run's ETA.
* :class:`ParamSummary`: Lightning's model summary without its FLOPs column (always 0 here: Lightning
  counts FLOPs only with an ``example_input_array``, see docs/training.md).

:func:`progress_callbacks` picks them from ``callbacks.progress`` (``mode``: auto = bar when stdout is a
terminal, else lines; ``every_seconds``); ``trainer.enable_progress_bar=false`` turns both off.

The ETA and the totals: :mod:`ttfnet_lightning.training.run_clock`; under a training-time budget
(:class:`~ttfnet_lightning.training.time_budget.TrainingTimeBudget`) no totals, and the budget's training time left.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelSummary, ProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

from ttfnet_lightning.training.run_clock import RunClock, RunPlan, format_duration, trainer_plan
from ttfnet_lightning.training.time_budget import TrainingTimeBudget

__all__ = ["PROGRESS_MODES", "ProgressLines", "RunProgressBar", "ParamSummary", "progress_callbacks"]

PROGRESS_MODES = ("auto", "bar", "lines")
# the validation metrics a line shows after each validation, when logged, and their format
_VAL_KEYS = {"val/AP": ".3f", "val/AP50": ".3f", "val/AP75": ".3f", "val/loss": ".4g"}


def _images(batch: Any) -> int:
    """Images in a batch (a dict with ``images``, or a tensor): 0 when unknown."""
    images = batch.get("images") if isinstance(batch, Mapping) else batch
    shape = getattr(images, "shape", None)
    return int(shape[0]) if shape else 0


def _lr(trainer: pl.Trainer) -> float | None:
    """The first parameter group's LR (the weights'; biases may have a multiple)."""
    optimizers = getattr(trainer, "optimizers", None) or []
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else None


class _Tracker:
    """The plan and clock of one session, fed by a progress callback's hooks."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.clock = RunClock(now=now)
        self.plan = RunPlan(None, None, None)
        self.budget: TrainingTimeBudget | None = None

    def start(self, trainer: pl.Trainer) -> None:
        self.clock = RunClock(now=self.now)
        self.plan = trainer_plan(trainer)
        self.budget = next((c for c in trainer.callbacks if isinstance(c, TrainingTimeBudget)), None)
        if self.budget is not None:  # budget.train_minutes ends the run, not its steps or epochs (only a cap)
            self.plan = RunPlan(self.plan.steps_per_epoch, None, None)

    def epoch(self, trainer: pl.Trainer) -> str:
        shown = trainer.current_epoch + 1
        total = self.plan.total_epochs
        return f"{min(shown, total)}/{total}" if total else str(shown)

    def eta(self, trainer: pl.Trainer) -> str:
        if self.budget is not None:
            return f"{format_duration(self.budget.remaining_seconds())} of training budget + validations"
        seconds, unknown = self.clock.eta(trainer.global_step, self.plan)
        if seconds is None:
            return "?"
        return format_duration(seconds) + (f" + {unknown} validation{'s' if unknown > 1 else ''}" if unknown else "")

    def train_line(self, trainer: pl.Trainer) -> str:
        step, total = trainer.global_step, self.plan.total_steps
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        parts.append(f"epoch {self.epoch(trainer)}")
        losses = {k[6:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/loss")}
        if losses:
            parts.append(" ".join(f"{k} {v:.4g}" for k, v in losses.items()))
        lr, ips = _lr(trainer), self.clock.images_per_second
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        if ips is not None:
            parts.append(f"{ips * trainer.world_size:.1f} img/s")
        parts.append(f"elapsed {format_duration(self.now() - self.clock.started)}")
        parts.append(f"ETA {self.eta(trainer)}")
        return " | ".join(parts)


class ProgressLines(ProgressBar):
    """Plain progress lines for logs (see the module docstring); rank 0 only.

    Args:
        every_seconds: at most one training (or validation) line per this many seconds, besides the
            first step's and the end's (0: every step).
        now: the clock (tests pass a fake one).
        write: where a line goes (default: print to stdout, flushed).
    """

    def __init__(
        self,
        *,
        every_seconds: float = 30.0,
        now: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.every_seconds = float(every_seconds)
        self._enabled = True
        self._track = _Tracker(now)
        self._write = write or (lambda line: print(line, flush=True))
        self._last = -math.inf
        self._first = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _emit(self, what: str, line: str) -> None:
        self._last = self._track.now()
        self._write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {what}: {line}")

    def _due(self) -> bool:
        return self._enabled and self._track.now() - self._last >= self.every_seconds

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._track.start(trainer)
        self._first = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._track.clock.train_batch_end(trainer.global_step, _images(batch))
        if self._enabled and (self._first or self._due()):
            self._emit("train", self._track.train_line(trainer))
            self._first = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled:
            self._emit("train end", self._track.train_line(trainer))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._track.clock.validation_start(trainer.global_step)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking and self._due():
            totals = trainer.num_val_batches
            total = totals[dataloader_idx] if dataloader_idx < len(totals) else math.inf
            of = f"/{int(total)}" if math.isfinite(total) else ""
            self._emit("validation", f"batch {batch_idx + 1}{of} after step {trainer.global_step}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        took = self._track.clock.validation_end()
        if not self._enabled:
            return
        metrics = trainer.callback_metrics
        values = " ".join(f"{k} {float(metrics[k]):{_VAL_KEYS[k]}}" for k in _VAL_KEYS if k in metrics)
        line = f"after step {trainer.global_step}, epoch {self._track.epoch(trainer)}: {values or 'no metrics'}"
        self._emit("validation", f"{line} | took {format_duration(took)} | ETA {self._track.eta(trainer)}")


class RunProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with the epoch as the run will end (``Epoch 5/5``), the LR and the whole
    run's ETA in its postfix (tqdm's own remaining time is the epoch's)."""

    def __init__(self, *, refresh_rate: int = 1, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._track = _Tracker(now)

    def on_train_start(self, *args: Any) -> None:
        super().on_train_start(*args)
        self._track.start(args[0])

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {self._track.epoch(trainer)}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._track.clock.train_batch_end(trainer.global_step, _images(batch))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if not trainer.sanity_checking:
            self._track.clock.validation_start(trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._track.clock.validation_end()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version: not progress
        lr = _lr(trainer)
        extra = {"lr": f"{lr:.3g}"} if lr is not None else {}
        return {**extra, "ETA": self._track.eta(trainer), **items}


class ParamSummary(ModelSummary):
    """Lightning's model summary (printed to stdout at the start of fit, rank 0) without the FLOPs
    column and the ``Total Flops`` line: Lightning counts FLOPs only by running the module's
    ``example_input_array``, which ``TTFNetModule`` has not, so they would read 0."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [c for c in summary_data if c[0] != "FLOPs"]
        # Lightning's own table (pytorch-lightning 2.6), whose last line is "<n> Total Flops"
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        print("\n".join(line for line in table.splitlines() if not line.endswith("Total Flops")), flush=True)


def progress_callbacks(
    progress: Mapping[str, Any], trainer: Mapping[str, Any], *, isatty: bool | None = None
) -> list[Callback]:
    """The run's summary and progress callbacks from ``callbacks.progress`` and the trainer config:
    :class:`ParamSummary` (unless ``trainer.enable_model_summary=false``) and, unless
    ``trainer.enable_progress_bar=false``, :class:`RunProgressBar` or :class:`ProgressLines`
    (``mode=auto``: the bar when stdout is a terminal; ``isatty`` overrides the check).

    Raises:
        ValueError: an unknown ``mode`` or a negative ``every_seconds``, named."""
    mode = str(progress.get("mode", "auto"))
    if mode not in PROGRESS_MODES:
        raise ValueError(
            f"callbacks.progress.mode={mode!r}: give auto (a bar in a terminal, plain lines otherwise), bar or lines"
        )
    every = float(progress.get("every_seconds", 30.0))
    if not every >= 0:
        raise ValueError(f"callbacks.progress.every_seconds={every}: give a number of seconds >= 0")
    callbacks: list[Callback] = []
    if trainer.get("enable_model_summary", True) is not False:
        callbacks.append(ParamSummary())
    if trainer.get("enable_progress_bar", True) is False:
        return callbacks
    if mode == "auto":
        mode = "bar" if (sys.stdout.isatty() if isatty is None else isatty) else "lines"
    callbacks.append(RunProgressBar() if mode == "bar" else ProgressLines(every_seconds=every))
    return callbacks
