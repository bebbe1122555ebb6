"""How far a training run has come and how long it has left: the run's plan as it will really end
(:func:`plan_run`: total steps and epochs under ``max_steps`` or ``max_epochs``, whichever comes first,
and the steps after which it validates) and the session's clock (:class:`RunClock`: seconds per
training step, images/s, validation durations, the ETA of the whole run). Used by the progress
callbacks of :mod:`ttfnet_lightning.training.progress`.

The ETA is (remaining steps) x (seconds per training step of this session, validations left out,
the first step left out as warm-up) + (remaining validations) x (mean duration of this session's
validations); until a validation has been timed, :meth:`RunClock.eta` says how many it leaves out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl

__all__ = ["RunPlan", "plan_run", "trainer_plan", "RunClock", "format_duration"]


@dataclass(frozen=True)
class RunPlan:
    """How a run will end: steps per epoch, total steps and epochs (None: unknown, e.g. an endless
    stream), and the global steps after which it validates."""

    steps_per_epoch: int | None
    total_steps: int | None
    total_epochs: int | None
    validation_steps: tuple[int, ...] = ()


def plan_run(
    *,
    batches_per_epoch: float,
    max_epochs: int | None,
    max_steps: int | None = -1,
    accumulate: int = 1,
    val_every_batches: float | None = None,
    val_every_epochs: int | None = 1,
) -> RunPlan:
    """The run's plan from the Trainer's settings (``val_every_batches``: Lightning's
    ``trainer.val_check_batch``; None or 0: no validation).

    Total steps follow Lightning's ``Trainer.estimated_stepping_batches`` (pytorch-lightning 2.6:
    ``ceil(batches / accumulate) * max_epochs``, capped by ``max_steps``; checked equal in
    tests/training/test_progress.py); the epochs are those that run holds."""
    finite = math.isfinite(batches_per_epoch) and batches_per_epoch > 0
    spe = math.ceil(batches_per_epoch / max(accumulate, 1)) if finite else None
    steps_cap = max_steps if max_steps is not None and max_steps >= 0 else None
    epochs_cap = max_epochs if max_epochs is not None and max_epochs >= 0 else None
    by_epochs = spe * epochs_cap if spe is not None and epochs_cap is not None else None
    caps = [c for c in (steps_cap, by_epochs) if c is not None]
    total = min(caps) if caps else None
    epochs = epochs_cap
    if spe is not None and total is not None:
        epochs = max(1, math.ceil(total / spe)) if total > 0 else 0
    vals: tuple[int, ...] = ()
    if spe is not None and total and epochs and val_every_batches:
        vals = _validation_steps(spe, total, epochs, batches_per_epoch, accumulate, val_every_batches, val_every_epochs)
    return RunPlan(steps_per_epoch=spe, total_steps=total, total_epochs=epochs, validation_steps=vals)


def _validation_steps(
    spe: int, total: int, epochs: int, batches: float, accumulate: int, every_batches: float, every_epochs: int | None
) -> tuple[int, ...]:
    """The global steps after which the run validates: Lightning's checks (every ``every_batches``
    batches of every ``every_epochs``-th epoch; with ``every_epochs`` None, every ``every_batches``
    batches counted over the whole run) and the final model's validation, which ``train`` runs when
    the schedule ends between validations."""
    acc, every = max(accumulate, 1), int(every_batches)
    steps = {total}
    if every_epochs is None:
        steps.update(s for s in (math.ceil(n * every / acc) for n in range(1, total * acc // every + 1)) if s <= total)
        return tuple(sorted(steps))
    per_epoch = max(1, int(batches // every))
    for e in range(epochs):
        if (e + 1) % max(every_epochs, 1):
            continue
        for k in range(1, per_epoch + 1):
            step = e * spe + math.ceil(min(k * every, batches) / acc)
            if step <= total:
                steps.add(step)
    return tuple(sorted(steps))


def trainer_plan(trainer: pl.Trainer) -> RunPlan:
    """:func:`plan_run` from a Trainer whose training data is set up (``on_train_start`` and later)."""
    validates = trainer.limit_val_batches != 0 and trainer.val_check_batch is not None
    return plan_run(
        batches_per_epoch=float(trainer.num_training_batches),
        max_epochs=trainer.max_epochs,
        max_steps=trainer.max_steps,
        accumulate=int(trainer.accumulate_grad_batches),
        val_every_batches=float(trainer.val_check_batch) if validates else None,
        val_every_epochs=trainer.check_val_every_n_epoch,
    )


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (hours not wrapped at 24)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunClock:
    """Training seconds per step and images/s (validations and the session's first step left out),
    validation durations and the run's ETA. ``now``: the clock (tests pass a fake one)."""

    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.started = now()
        self.train_seconds = 0.0
        self.train_steps = 0
        self.images = 0
        self.val_seconds: list[float] = []
        self._prev: tuple[float, int] | None = None  # (time, step) of the previous training batch's end
        self._paused = 0.0  # validation time since that batch
        self._val_started: float | None = None
        self.validated_at: int | None = None  # the global step of the last validation

    def train_batch_end(self, step: int, images: int) -> None:
        t = self.now()
        if self._prev is not None:
            self.train_seconds += t - self._prev[0] - self._paused
            self.train_steps += step - self._prev[1]
            self.images += images
        self._prev, self._paused = (t, step), 0.0

    def validation_start(self, step: int) -> None:
        self._val_started = self.now()
        self.validated_at = step

    def validation_end(self) -> float:
        """The validation's duration (0 when no start was seen)."""
        if self._val_started is None:
            return 0.0
        took = self.now() - self._val_started
        self._val_started = None
        self.val_seconds.append(took)
        self._paused += took
        return took

    @property
    def seconds_per_step(self) -> float | None:
        return self.train_seconds / self.train_steps if self.train_steps > 0 else None

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.train_seconds if self.train_seconds > 0 else None

    def eta(self, step: int, plan: RunPlan) -> tuple[float | None, int]:
        """Seconds left at global step ``step`` (None: not measured yet) and how many remaining
        validations it leaves out (none timed yet)."""
        if plan.total_steps is None or self.seconds_per_step is None:
            return None, 0
        seconds = max(plan.total_steps - step, 0) * self.seconds_per_step
        left = sum(1 for s in plan.validation_steps if s > step or (s == step and self.validated_at != step))
        if self.val_seconds and left:
            seconds += left * sum(self.val_seconds) / len(self.val_seconds)
            left = 0
        return seconds, left
