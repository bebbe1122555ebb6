"""Lightning callbacks: time-to-accuracy tracking and validation images with boxes."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)

__all__ = ["TimeToAccuracy", "LogValPredictions"]


class TimeToAccuracy(Callback):
    """Cumulative training wall-clock time, validation excluded, logged with every validation.

    The paper's point is accuracy per training hour; this logs ``time/train_seconds``,
    ``time/train_hours`` and ``time/step`` beside ``val/AP`` so AP can be plotted against training
    time. The clock survives checkpoint/resume (it is part of the callback state).
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self._since: float | None = None

    def _pause(self) -> None:
        if self._since is not None:
            self.train_seconds += time.perf_counter() - self._since
            self._since = None

    def _resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training:  # validation inside fit: the training loop goes on
            self._resume()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        pl_module.log("time/train_seconds", self.train_seconds)
        pl_module.log("time/train_hours", self.train_seconds / 3600)
        pl_module.log("time/step", float(trainer.global_step))

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))


class LogValPredictions(Callback):
    """Log a few validation images with predicted (red) and true (green) boxes to W&B/TensorBoard.

    Args:
        num_images: images logged per validation (from the first validation batch).
        min_score: predictions drawn above this score.
    """

    def __init__(self, *, num_images: int = 4, min_score: float = 0.3) -> None:
        self.num_images = num_images
        self.min_score = min_score

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or outputs is None:
            return
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
        from torchvision.utils import draw_bounding_boxes

        targets = [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, TensorBoardLogger))]
        if not targets:
            return
        images = batch["images"][: self.num_images]
        mean, std = pl_module.mean, pl_module.std
        pics = (images * std + mean).clamp(0, 255).to(torch.uint8).cpu()
        H, W = images.shape[-2:]
        names = list(pl_module.hparams.get("class_names") or [])
        drawn = []
        for i, pic in enumerate(pics):
            h0, w0 = batch["meta"][i]["orig_size"]
            scale = torch.tensor([W / w0, H / h0, W / w0, H / h0])
            det = outputs[i]
            keep = det["scores"].cpu() >= self.min_score
            pboxes = det["boxes"].cpu()[keep] * scale
            plabels = [
                f"{names[c] if c < len(names) else c} {s:.2f}"
                for c, s in zip(det["labels"].cpu()[keep].tolist(), det["scores"].cpu()[keep].tolist())
            ]
            gkeep = batch["labels"][i].cpu() >= 0
            pic = draw_bounding_boxes(pic, batch["boxes"][i].cpu()[gkeep], colors="lime", width=1)
            if len(pboxes):
                pic = draw_bounding_boxes(pic, pboxes, labels=plabels, colors="red", width=1)
            drawn.append(pic)
        for lg in targets:
            try:
                if isinstance(lg, WandbLogger):
                    lg.log_image(key="val/predictions", images=[p.permute(1, 2, 0).numpy() for p in drawn], step=trainer.global_step)
                else:
                    lg.experiment.add_images("val/predictions", torch.stack(drawn), trainer.global_step)
            except Exception as exc:  # a logging failure must never stop training
                log.warning("could not log validation images to %s: %s", type(lg).__name__, exc)
