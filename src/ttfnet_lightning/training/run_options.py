"""The schema of how a run trains beside what it trains (user keys ``callbacks.*``, ``speed.*``, ``ema.*``,
``multiscale.*``, ``budget.*``): part of :class:`~ttfnet_lightning.training.config.TrainConfig`, which re-exports
these dataclasses; see :mod:`ttfnet_lightning.training.config` for how the schema is used."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional  # OmegaConf reads typing's generics at runtime

__all__ = ["ProgressConfig", "CallbacksConfig", "EmaConfig", "MultiScaleConfig", "BudgetConfig", "SpeedConfig"]


@dataclass
class ProgressConfig:
    """What a run prints while it trains (user keys ``callbacks.progress.*``; under ``callbacks``, so a
    run resumes with other values; :mod:`ttfnet_lightning.training.progress`)."""

    mode: str = "auto"  # auto (a bar when stdout is a terminal, else plain lines) | bar | lines
    every_seconds: float = 30.0  # lines: one per this many seconds, besides the first step's and the end's


@dataclass
class CallbacksConfig:
    log_val_images: int = 4  # validation images with boxes sent to W&B/TensorBoard (0 = off)
    # checkpoints/latest-step<N>.ckpt every N training steps (only the newest kept); a rerun resumes
    # from the newest of last/interrupted/latest-step/hpc_ckpt, so a hard kill loses < N steps
    checkpoint_every_n_steps: Optional[int] = 200
    # per-step time of data wait, host-to-device, target encoding, forward, backward, optimizer
    # (ttfnet_lightning.training.profiling.StepTimer): time/step_<phase>_ms in the metrics, a summary at the end
    step_timer: bool = False
    progress: ProgressConfig = field(default_factory=ProgressConfig)


@dataclass
class EmaConfig:
    """Hydra group ``ema`` (``conf/ema/*.yaml``): an exponential moving average of the weights, validated and
    saved instead of the training weights (:class:`~ttfnet_lightning.training.ema.EMA`); off by default (the paper)."""

    enabled: bool = False
    decay: float = 0.9998  # average <- decay_t x average + (1 - decay_t) x weights after each update
    # decay_t = decay x (1 - exp(-t / ramp_steps)), t the optimiser steps since start_step (YOLOX's EMA): a young
    # average follows the weights; 0: the fixed decay from the first update on
    ramp_steps: int = 2000
    start_step: int = 0  # before this optimiser step the average is a copy of the weights
    every_n_steps: int = 1  # update after every N-th optimiser step


@dataclass
class MultiScaleConfig:
    """Hydra group ``multiscale`` (``conf/multiscale/*.yaml``; module group ``multiscale``): each training batch
    resized on the device to the input size x one of ``scales`` (rounded to multiples of 32), boxes with it, before
    its targets are encoded (:mod:`ttfnet_lightning.training.multiscale`); validation at the input size."""

    scales: List[float] = field(default_factory=list)  # e.g. [0.75, 1.0, 1.25]; [] = off (the paper)
    every_n_steps: int = 1  # a new size every N optimiser steps
    seed: Optional[int] = None  # of the size sequence; null: the run's seed


@dataclass
class BudgetConfig:
    """A budget of training time instead of a number of epochs (user keys ``budget.*``; the race of detectors,
    ``experiment=race``): :mod:`ttfnet_lightning.training.time_budget`. Off by default (null)."""

    # training stops after the first step at which the training time (validation excluded, the time/train_seconds
    # of TimeToAccuracy, kept over resumes) reaches this; the final model is validated. trainer.max_epochs
    # (schedule.max_epochs) still caps the run: set it high enough that the budget ends it
    train_minutes: Optional[float] = None
    # a validation every this many minutes of wall time since the last one (Lightning's time-based
    # trainer.val_check_interval, with check_val_every_n_epoch=1); null: the trainer's own interval
    val_every_minutes: Optional[float] = None
    # with train_minutes: the LR from the fraction of the budget used, whatever the detector's speed (warm-up over
    # warmup_fraction from schedule.warmup_ratio, then schedule.lr_policy: step = x schedule.gamma at each of
    # milestones, or cosine / flat_cosine over the budget); false: the schedule's step-based LR (epochs, steps)
    lr_by_time: bool = True
    warmup_fraction: float = 0.05  # the budget's first fraction spent warming up (replaces schedule.warmup_steps)
    milestones: List[float] = field(default_factory=lambda: [9 / 12, 11 / 12])  # fractions (fast: epochs 9, 11 of 12)

    def __post_init__(self) -> None:
        for key in ("train_minutes", "val_every_minutes"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"budget.{key} must be positive (or null), got {value}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"budget.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if any(not 0.0 < m <= 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"budget.milestones must be increasing fractions in (0, 1], got {list(self.milestones)}")


@dataclass
class SpeedConfig:
    """Training speed switches that do not change the model (user keys ``speed.*``); with
    ``trainer.precision=bf16-mixed`` (or ``16-mixed``; ``trainer=gpu`` keeps the released fp32) and
    ``trainer.benchmark`` (cuDNN autotuning, on in ``trainer=gpu``) these are the GPU path."""

    channels_last: bool = False  # weights and input batches in channels_last memory format
    compile: bool = False  # torch.compile the network in place (state-dict keys unchanged)
