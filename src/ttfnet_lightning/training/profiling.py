"""Where a training step's time goes: :class:`StepTimer`, a Lightning callback any run switches on
with ``callbacks.step_timer=true``.

Per optimiser step it measures, in wall-clock seconds:

* ``data_wait``: from the end of the previous step until the data loader delivered the batch;
* ``host_to_device``: moving the batch to the training device;
* ``target_encoding``: normalising the images and encoding the targets on the device
  (``on_after_batch_transfer``);
* ``forward``: network and losses (``training_step``);
* ``backward``;
* ``optimizer``: the optimiser step, zeroing the gradients and the step's bookkeeping (logging,
  callbacks) up to the end of the step.

The first ``skip`` steps (warm-up) are left out. With ``sync_cuda`` (default: when training on a
GPU) the device is synchronised at every boundary, so GPU time is charged to the phase that
launched it. ``summary()`` gives mean milliseconds and shares; at the end of training the summary
is logged and, with ``log_every_n_steps``, each phase is logged as ``time/step_<phase>_ms``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)

__all__ = ["StepTimer", "PHASES"]

PHASES = ("data_wait", "host_to_device", "target_encoding", "forward", "backward", "optimizer")


class StepTimer(Callback):
    """Per-step time of each training phase (see the module docstring).

    Args:
        skip: first steps left out of the summary (warm-up).
        sync_cuda: synchronise CUDA at the phase boundaries (None: when the module is on a GPU).
        log_metrics: log ``time/step_<phase>_ms`` with the training metrics.
    """

    def __init__(self, *, skip: int = 2, sync_cuda: bool | None = None, log_metrics: bool = True) -> None:
        self.skip = int(skip)
        self.sync_cuda = sync_cuda
        self.log_metrics = log_metrics
        self.steps: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        self._marks: dict[str, float] = {}
        self._seen = 0
        self._sync = False

    # ---------------------------------------------------------------------------- clock
    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _wrap(self, pl_module: pl.LightningModule, name: str, phase: str) -> None:
        original = getattr(pl_module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not pl_module.training:  # validation batches are not training steps
                return original(*args, **kwargs)
            t0 = self._now()
            if phase == "host_to_device":
                self._current["data_wait"] = t0 - self._marks.get("end", t0)
            out = original(*args, **kwargs)
            self._current[phase] = self._current.get(phase, 0.0) + self._now() - t0
            return out

        setattr(pl_module, name, timed)

    # ---------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._sync = torch.cuda.is_available() and (
            self.sync_cuda if self.sync_cuda is not None else pl_module.device.type == "cuda"
        )
        self._wrap(pl_module, "transfer_batch_to_device", "host_to_device")
        self._wrap(pl_module, "on_after_batch_transfer", "target_encoding")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._marks["end"] = self._now()  # the first batch's wait starts with the epoch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._marks["start"] = self._now()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        t = self._now()
        self._current["forward"] = t - self._marks.get("start", t)
        self._marks["backward"] = t

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self._now()
        self._current["backward"] = t - self._marks.get("backward", t)
        self._marks["optimizer"] = t

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        t = self._now()
        self._current["optimizer"] = t - self._marks.get("optimizer", t)
        self._marks["end"] = t
        step = {p: self._current.get(p, 0.0) for p in PHASES}
        self._current = {}
        self._seen += 1
        if self._seen <= self.skip:
            return
        self.steps.append(step)
        if self.log_metrics and trainer.logger is not None:
            pl_module.log_dict({f"time/step_{p}_ms": 1000 * v for p, v in step.items()}, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steps:
            log.info("training step breakdown (%d steps):\n%s", len(self.steps), self.format())

    # ---------------------------------------------------------------------------- results
    def summary(self) -> dict[str, dict[str, float]]:
        """``{phase: {"ms": mean milliseconds, "share": fraction of the step}}`` plus ``total``."""
        if not self.steps:
            return {}
        n = len(self.steps)
        mean = {p: sum(s[p] for s in self.steps) / n for p in PHASES}
        total = sum(mean.values())
        out = {p: {"ms": 1000 * v, "share": v / total if total > 0 else 0.0} for p, v in mean.items()}
        out["total"] = {"ms": 1000 * total, "share": 1.0}
        return out

    def format(self) -> str:
        return "\n".join(f"  {p:<16} {v['ms']:9.1f} ms  {100 * v['share']:5.1f} %" for p, v in self.summary().items())
