"""An exponential moving average (EMA) of the weights (``ema=ema|short``; settings
:class:`~ttfnet_lightning.training.config.EmaConfig`; off by default, the paper's recipe).

:class:`EMA` is Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` (the base of its
``EMAWeightAveraging``), which keeps the average in a ``torch.optim.swa_utils.AveragedModel``, a copy of the
module updated after every optimiser step. What Lightning does with it, and so what a run with ``ema`` gives:

* **Validation** runs on the average: it is swapped into the module when a validation starts and out when it
  ends, so ``val/*``, the ``best`` checkpoint's choice, ``detections_val.json`` and the validation images are
  the average's.
* **Checkpoints**: every checkpoint's ``state_dict`` is the average; the training weights are stored under
  ``current_model_state`` and the average's update count under ``averaging_state``. A resumed run restores both
  (the module from ``current_model_state``, the average from ``state_dict``). So ``load_model(path)``,
  ``evaluate``, ``predict``, ``export`` and ``convert`` read the average; the training weights are only for
  resuming.
* **When training ends** the average is copied into the module: ``export_backbone`` and ``measure_fps`` (and
  a validation ``train()`` runs after the schedule) use it. (A ``last.ckpt`` written after that holds the
  average in both places, so a continuation from it goes on from the average.)
* **BatchNorm**: the running statistics are buffers, averaged with the same decay as the weights
  (``use_buffers=True``; timm's and YOLOX's EMA do the same); integer buffers (``num_batches_tracked``) follow
  the module.

What this class adds to Lightning's ``EMAWeightAveraging``:

* the decay of YOLOX (mmdetection's ``ExpMomentumEMA``): ``decay x (1 - exp(-t / ramp_steps))`` at the t-th
  optimiser step from ``start_step`` (``ramp_steps=0``: ``decay`` from the first update), so that a young
  average follows the weights instead of keeping the random initial ones; before ``start_step`` the average is a
  copy of the weights (Lightning's does not update before its start step, so validations and checkpoints before
  it would be those of the untrained initial weights);
* a checkpoint written *during* a validation (SIGTERM, Ctrl-C or a crash there: ``interrupted.ckpt``; SLURM's
  requeue signal), when the module holds the average and the ``AveragedModel`` the training weights, is stored
  as any other (Lightning's callback would store the two the wrong way round);
* the average lives on the module's device (Lightning creates it in ``setup``, before the module is moved);
* a warning when the average cannot depart from the weights within the run (``ramp_steps`` or the decay's
  horizon ``1 / (1 - decay)`` longer than half the run's optimiser steps): use ``ema=short`` or a lower decay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["EMA", "ema_decay"]


def ema_decay(step: int, *, decay: float, ramp_steps: int, start_step: int) -> float:
    """The decay of the update after optimiser step ``step`` (0-based): 0 (a copy) before ``start_step``, then
    ``decay x (1 - exp(-t / ramp_steps))`` with t = step - start_step + 1 (``ramp_steps`` 0: ``decay``)."""
    if step < start_step:
        return 0.0
    if ramp_steps <= 0:
        return float(decay)
    return float(decay) * (1.0 - math.exp(-(step - start_step + 1) / ramp_steps))


class EMA(WeightAveraging):
    """EMA of the module's weights and buffers (see the module's documentation).

    Args (keyword-only; :class:`~ttfnet_lightning.training.config.EmaConfig`):
        decay: the decay the average tends to, in [0, 1).
        ramp_steps: optimiser steps over which the decay ramps up (:func:`ema_decay`); 0: none.
        start_step: before this optimiser step the average copies the weights.
        every_n_steps: update after every N-th optimiser step.
    """

    def __init__(self, *, decay: float = 0.9998, ramp_steps: int = 2000, start_step: int = 0, every_n_steps: int = 1):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        counts = {"ramp_steps": (ramp_steps, 0), "start_step": (start_step, 0), "every_n_steps": (every_n_steps, 1)}
        for key, (value, low) in counts.items():
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"ema.{key} must be an integer >= {low}, got {value}")
        super().__init__(use_buffers=True, multi_avg_fn=self._average)
        self.decay, self.ramp_steps = float(decay), int(ramp_steps)
        self.start_step, self.every_n_steps = int(start_step), int(every_n_steps)
        self._decay_now = 0.0
        self._swapped = False  # during a validation: the module holds the average

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> EMA | None:
        """The callback of the ``ema`` node, or None when it is off (``enabled: false``, the default)."""
        if not node or not node.get("enabled", False):
            return None
        keys = ("decay", "ramp_steps", "start_step", "every_n_steps")
        return cls(**{k: node[k] for k in keys if k in node})

    # ------------------------------------------------------------------------------ updates
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.every_n_steps == 0

    def _average(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        """``AveragedModel``'s ``multi_avg_fn``: one dtype and device per call."""
        if not averaged:
            return
        if self._decay_now == 0.0 or not (torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0])):
            for a, c in zip(averaged, current):
                a.copy_(c)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - self._decay_now)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._decay_now = ema_decay(
            trainer.global_step - 1, decay=self.decay, ramp_steps=self.ramp_steps, start_step=self.start_step
        )
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # ------------------------------------------------------------------------------ placement, checks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)  # the module is on its device now, not yet in setup()
        total = trainer.estimated_stepping_batches
        horizon = max(self.ramp_steps, 1.0 / (1.0 - self.decay))
        if math.isfinite(total) and horizon > total / 2:
            log.warning(
                "ema: decay %g (an average over ~%d optimiser steps) with ramp_steps %d is long for this run of %d "
                "steps: the average stays close to early weights; lower ema.decay / ema.ramp_steps "
                "(ema=short: 0.99, 100)",
                self.decay,
                round(1.0 / (1.0 - self.decay)),
                self.ramp_steps,
                total,
            )

    # ------------------------------------------------------------------------------ validation swap
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None or not self._swapped:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        # during a validation: the module (the checkpoint's state_dict) holds the average, the AveragedModel the
        # training weights
        held = self._average_model.state_dict()
        checkpoint["current_model_state"] = {k[len("module.") :]: v for k, v in held.items() if k.startswith("module.")}
        checkpoint["averaging_state"] = {k: v for k, v in held.items() if not k.startswith("module.")}
