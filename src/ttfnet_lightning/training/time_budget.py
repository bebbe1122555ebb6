"""A budget of training time (``budget.train_minutes``), the LR schedule that fits it and time-based validation.

The race of detectors (``experiment=race``, docs/race.md) gives every detector the same training time, not the
same number of steps. Three pieces make a run time-bounded:

* :class:`TrainingTimeBudget` stops training at the end of the first optimiser step after which
  :class:`~ttfnet_lightning.training.callbacks.TimeToAccuracy`'s training seconds (validation excluded) reach the
  budget (so a run overshoots it by less than one step). Those seconds are restored from the checkpoint a run
  resumes, so the budget holds over interruptions; a run resumed with its budget already spent trains no further
  step. Lightning validates at once when training is stopped this way (``trainer.should_stop``) in an epoch that
  validates; otherwise ``train`` validates the final model itself (``training/run.py``).
* :class:`BudgetLR` sets each parameter group's LR before every training step from the fraction of the budget
  used, :func:`budget_lr_factor`: a linear warm-up from ``schedule.warmup_ratio`` over the first
  ``budget.warmup_fraction``, then the schedule's policy over the fraction instead of epochs or steps
  (``schedule.lr_policy``: ``step``: x ``schedule.gamma`` at each of ``budget.milestones``, fractions of the
  budget, by default the fast schedule's 9/12 and 11/12; ``cosine`` / ``flat_cosine``:
  :func:`~ttfnet_lightning.training.optim.policy_factor` of the fraction). A fast and a slow detector thus both
  warm up, train at the full LR and anneal within the same minutes. It overrides the module's step-based
  scheduler (whose ``initial_lr`` of each group is the base LR), so it must come before Lightning's
  ``LearningRateMonitor`` in the callbacks (it does in ``build_callbacks``: the logged ``train/lr/*`` are its).
* :func:`budget_trainer_kwargs`: ``budget.val_every_minutes`` becomes Lightning's time-based
  ``Trainer(val_check_interval=timedelta)`` (a validation once that much wall time has passed since the last
  one, which between validations is training time) with ``check_val_every_n_epoch=1`` (a time-based check runs
  only in epochs that validate).

Settings: :class:`ttfnet_lightning.training.config.BudgetConfig`. Without a budget (the default) nothing changes:
the schedule's step-based LR and the trainer's validation interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback

from ttfnet_lightning.training.callbacks import TimeToAccuracy
from ttfnet_lightning.training.config import BudgetConfig, checked
from ttfnet_lightning.training.optim import LR_POLICIES, policy_factor

log = logging.getLogger(__name__)

__all__ = [
    "FAST_MILESTONES",
    "budget_lr_factor",
    "TrainingTimeBudget",
    "BudgetLR",
    "budget_callbacks",
    "budget_trainer_kwargs",
]

FAST_MILESTONES = (9 / 12, 11 / 12)  # the fast schedule's LR steps (epochs 9 and 11 of 12) as fractions


def budget_lr_factor(
    fraction: float,
    *,
    milestones: Sequence[float] = FAST_MILESTONES,
    gamma: float = 0.1,
    warmup_fraction: float = 0.0,
    warmup_ratio: float = 0.2,
    lr_policy: str = "step",
    min_lr_ratio: float = 0.01,
    flat_fraction: float = 0.5,
) -> float:
    """LR multiplier once ``fraction`` of the training-time budget is used (clipped to [0, 1]): the policy's
    factor (``step``: ``gamma`` per milestone fraction reached; ``cosine`` / ``flat_cosine``:
    :func:`~ttfnet_lightning.training.optim.policy_factor` of the fraction), times a linear warm-up from
    ``warmup_ratio`` to 1 over the first ``warmup_fraction`` of the budget."""
    if lr_policy not in LR_POLICIES:
        raise ValueError(f"schedule.lr_policy must be one of {LR_POLICIES}, got {lr_policy!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"budget.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if any(not 0.0 < m <= 1.0 for m in milestones):
        raise ValueError(f"budget.milestones are fractions of the budget in (0, 1], got {list(milestones)}")
    t = min(max(float(fraction), 0.0), 1.0)
    if lr_policy == "step":
        factor = gamma ** sum(t >= m for m in milestones)
    else:
        factor = policy_factor(t, lr_policy=lr_policy, min_lr_ratio=min_lr_ratio, flat_fraction=flat_fraction)
    if t < warmup_fraction:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * t / warmup_fraction
    return factor


def _timer(trainer: pl.Trainer, own: TimeToAccuracy | None, who: str) -> TimeToAccuracy:
    """The run's training clock: ``own`` when given, else the trainer's :class:`TimeToAccuracy`."""
    timer = own or next((c for c in trainer.callbacks if isinstance(c, TimeToAccuracy)), None)
    if timer is None:
        raise RuntimeError(f"{who} needs the TimeToAccuracy callback (the training clock) in the trainer's callbacks")
    return timer


class TrainingTimeBudget(Callback):
    """Stop training once the training seconds (validation excluded, :class:`TimeToAccuracy`) reach ``seconds``
    (see the module docstring). ``timer``: the clock to read (default: the trainer's ``TimeToAccuracy``)."""

    def __init__(self, *, seconds: float, timer: TimeToAccuracy | None = None) -> None:
        if not seconds > 0:
            raise ValueError(f"budget.train_minutes must be positive, got {seconds / 60:g} minutes")
        self.seconds = float(seconds)
        self._own_timer = timer
        self.timer: TimeToAccuracy | None = timer

    def used(self) -> float:
        """Training seconds so far (0 before training starts)."""
        return 0.0 if self.timer is None else self.timer.seconds()

    def remaining_seconds(self) -> float:
        """Training seconds left of the budget (0 once spent)."""
        return max(self.seconds - self.used(), 0.0)

    def _stop_if_spent(self, trainer: pl.Trainer) -> None:
        spent = self.used() >= self.seconds
        # under DDP the ranks' clocks differ by milliseconds: every rank stops after the same step
        spent = bool(trainer.strategy.reduce_boolean_decision(spent, all=False))
        if spent and not trainer.should_stop:
            log.info("training-time budget of %.3g min spent at step %d", self.seconds / 60, trainer.global_step)
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.timer = _timer(trainer, self._own_timer, "budget.train_minutes")
        self._stop_if_spent(trainer)  # a resumed run whose budget was spent trains no further step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stop_if_spent(trainer)


class BudgetLR(Callback):
    """Each parameter group's LR = its base LR (the scheduler's ``initial_lr``) x :func:`budget_lr_factor` of the
    fraction of ``seconds`` used, set before every training step (see the module docstring). ``policy``: the
    keyword arguments of :func:`budget_lr_factor` besides the fraction."""

    def __init__(self, *, seconds: float, timer: TimeToAccuracy | None = None, **policy: Any) -> None:
        if not seconds > 0:
            raise ValueError(f"budget.train_minutes must be positive, got {seconds / 60:g} minutes")
        budget_lr_factor(0.0, **policy)  # a bad setting fails here, not at the first step
        self.seconds = float(seconds)
        self.policy = policy
        self._own_timer = timer
        self.timer: TimeToAccuracy | None = timer
        self._base: list[list[float]] = []

    def factor(self) -> float:
        """The LR multiplier now."""
        used = 0.0 if self.timer is None else self.timer.seconds()
        return budget_lr_factor(used / self.seconds, **self.policy)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.timer = _timer(trainer, self._own_timer, "budget.lr_by_time")
        # each group's base LR: the initial_lr its step-based scheduler keeps (restored with the optimiser's state
        # on resume); without a scheduler the LR the group starts with
        self._base = [[float(g.get("initial_lr", g["lr"])) for g in opt.param_groups] for opt in trainer.optimizers]

    def _apply(self, trainer: pl.Trainer) -> None:
        factor = self.factor()
        for opt, base in zip(trainer.optimizers, self._base):
            for group, lr in zip(opt.param_groups, base):
                group["lr"] = lr * factor

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._apply(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the step-based scheduler has just stepped and written its own LR into the groups: put the budget's back,
        # so that what reads the groups before the next step (the progress lines, a checkpoint) sees the LR in use
        self._apply(trainer)


def _node(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    node = cfg.get(key) or {}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _budget(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``budget`` node, checked (:class:`~ttfnet_lightning.training.config.BudgetConfig`: a bad value raises,
    naming its key) and with its defaults."""
    return checked(BudgetConfig, _node(cfg, "budget"), where="budget")


def budget_callbacks(cfg: Mapping[str, Any]) -> list[Callback]:
    """The budget's callbacks for the training config ``cfg`` (``budget`` and ``schedule`` nodes):
    none without ``budget.train_minutes``; else :class:`TrainingTimeBudget` and, with ``budget.lr_by_time``
    (the default), :class:`BudgetLR` with the schedule's policy, gamma and warm-up ratio."""
    budget, schedule = _budget(cfg), _node(cfg, "schedule")
    minutes = budget.get("train_minutes")
    if minutes is None:
        return []
    seconds = float(minutes) * 60
    callbacks: list[Callback] = [TrainingTimeBudget(seconds=seconds)]
    if budget["lr_by_time"]:
        policy = {
            "milestones": [float(m) for m in budget["milestones"]],
            "gamma": float(schedule.get("gamma", 0.1)),
            "warmup_fraction": float(budget["warmup_fraction"]),
            "warmup_ratio": float(schedule.get("warmup_ratio", 0.2)),
            "lr_policy": str(schedule.get("lr_policy", "step")),
            "min_lr_ratio": float(schedule.get("min_lr_ratio", 0.01)),
            "flat_fraction": float(schedule.get("flat_fraction", 0.5)),
        }
        callbacks.append(BudgetLR(seconds=seconds, **policy))
    return callbacks


def budget_trainer_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer arguments that ``budget.val_every_minutes`` sets: ``val_check_interval`` (a ``timedelta``: Lightning
    validates by wall time since the last validation) and ``check_val_every_n_epoch=1``; ``{}`` when unset.

    Raises:
        ValueError: ``trainer.val_check_interval`` is set too (two validation intervals)."""
    minutes = _budget(cfg)["val_every_minutes"]
    if minutes is None:
        return {}
    trainer = _node(cfg, "trainer")
    if trainer.get("val_check_interval") not in (None, 1.0):
        raise ValueError(
            f"budget.val_every_minutes={minutes} and trainer.val_check_interval={trainer['val_check_interval']} "
            "both set when to validate: set one of them"
        )
    every_n = trainer.get("check_val_every_n_epoch", 1)
    if every_n not in (None, 1):
        log.info("budget.val_every_minutes: check_val_every_n_epoch %s -> 1 (time-based validation)", every_n)
    return {"val_check_interval": timedelta(minutes=float(minutes)), "check_val_every_n_epoch": 1}
