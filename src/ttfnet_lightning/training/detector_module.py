"""What every detector module of the project shares (:class:`DetectorModule`): TTFNet's
:class:`~ttfnet_lightning.training.lit_module.TTFNetModule` and the torchvision peers'
:class:`~ttfnet_lightning.training.peer_module.PeerDetectorModule` read the same batches, normalise them the
same way, are measured by the same COCO metric on the same ground truth, log the same ``val/*`` keys and train
with the same optimiser and LR schedule (:mod:`ttfnet_lightning.training.optim`).

A subclass stores the hyper-parameter groups ``optim`` (:class:`~ttfnet_lightning.training.config.OptimConfig`)
and ``data_info`` (:class:`~ttfnet_lightning.training.config.DataInfo`) and has its network as ``self.net``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from ttfnet_lightning.core.metrics import TORCHMETRICS_KEYS, is_na
from ttfnet_lightning.training.distributed import ImageMeanAveragePrecision as MeanAveragePrecision
from ttfnet_lightning.training.optim import build_optimizer

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "DetectorModule",
    "NonFiniteError",
    "build_map_metric",
    "data_info",
    "image_ids",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/inf loss or weights: the run stops (no checkpoint of it is saved)."""


def image_ids(batch: dict[str, Any]) -> list[Any]:
    """The ``image_id`` of each image of a batch (for error messages)."""
    return [m.get("image_id") for m in batch.get("meta") or []]


def build_map_metric():
    """torchmetrics COCO mAP (box IoU), faster_coco_eval backend when installed, else pycocotools;
    under DDP each image counts once (:class:`~ttfnet_lightning.training.distributed.ImageMeanAveragePrecision`)."""

    try:
        import faster_coco_eval  # noqa: F401

        backend = "faster_coco_eval"
    except ImportError:
        backend = "pycocotools"
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)


class DetectorModule(pl.LightningModule):
    """The shared part of the project's detector modules: data info, normalisation, the validation metric and
    its logging, the optimiser. Subclasses call :meth:`_setup_shared` in ``__init__`` after
    ``save_hyperparameters``."""

    def _setup_shared(self) -> None:
        """The normalisation buffers and the validation metric."""
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.val_map = build_map_metric()

    # ------------------------------------------------------------------------------ data info
    @property
    def num_classes(self) -> int:
        return int(self.hparams.data_info["num_classes"])

    @property
    def input_size(self) -> tuple[int, int]:
        H, W = self.hparams.data_info["input_size"]
        return int(H), int(W)

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.data_info["class_names"] or [str(c) for c in range(self.num_classes)])

    @property
    def label_to_cat_id(self) -> list[int] | None:
        ids = self.hparams.data_info["label_to_cat_id"]
        return None if ids is None else list(ids)

    # ----------------------------------------------------------------------------- data on device
    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 RGB -> float, ImageNet mean/std normalised."""
        return (images.float() - self.mean) / self.std

    def use_channels_last(self) -> DetectorModule:
        """Weights and (from now on) input batches in channels_last memory format (``speed.channels_last``)."""
        self.net.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def normalized_batch(self, batch: Any) -> Any:
        """``batch`` with its uint8 ``images`` normalised (and channels_last when set); other batches as they are."""
        if isinstance(batch, dict) and "images" in batch and batch["images"].dtype == torch.uint8:
            batch = dict(batch)
            batch["images"] = self.normalize(batch["images"])
            if getattr(self, "channels_last", False):
                batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.normalized_batch(batch)

    def check_finite(self, losses: Mapping[str, Tensor], loss: Tensor, batch: dict[str, Any], batch_idx: int) -> None:
        """Raise :class:`NonFiniteError` (naming the step, the loss terms and the images) when ``loss`` is NaN/inf."""
        if bool(torch.isfinite(loss)):
            return
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        raise NonFiniteError(
            f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, batch "
            f"{batch_idx}): "
            f"{terms}; images {image_ids(batch)}. Training stopped, no checkpoint of this model is saved; "
            "lower schedule.lr (or check these images' boxes) and rerun."
        )

    # ------------------------------------------------------------------------------ validation
    @staticmethod
    def ground_truth(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """Per-image ground truth in original-image pixels for the mAP metric: the data set's own
        annotations (``meta[i]["gt_boxes"]``, with crowd/difficult flags and ``gt_area``, the area
        COCO's APs/APm/APl bucket by: COCO's annotation ``area``, box area elsewhere) when present,
        else the batch boxes scaled back from input pixels (the metric then uses box areas)."""
        H, W = batch["images"].shape[-2:]
        device = batch["images"].device
        gts = []
        for i, m in enumerate(batch["meta"]):
            if "gt_boxes" in m:
                gt = {
                    "boxes": m["gt_boxes"].to(device).float().reshape(-1, 4),
                    "labels": m["gt_labels"].to(device).long(),
                }
                if "gt_iscrowd" in m:
                    gt["iscrowd"] = m["gt_iscrowd"].to(device).long()
                if "gt_area" in m:
                    gt["area"] = m["gt_area"].to(device).float().reshape(-1)
            else:
                keep = batch["labels"][i] >= 0
                h0, w0 = m["orig_size"]
                scale = torch.tensor([w0 / W, h0 / H, w0 / W, h0 / H], device=device)
                gt = {"boxes": batch["boxes"][i][keep] * scale, "labels": batch["labels"][i][keep]}
            gts.append(gt)
        return gts

    def update_metric(self, detections: list[dict[str, Tensor]], batch: dict[str, Any]) -> None:
        """The validation metric's update with a batch's detections (original-image pixels) and ground truth."""
        self.val_map.update(detections, self.ground_truth(batch), image_ids=[m["image_id"] for m in batch["meta"]])

    def on_validation_epoch_end(self) -> None:
        res = self.val_map.compute()
        self.val_map.reset()
        for name, key in TORCHMETRICS_KEYS.items():
            value = float(res[key])  # -1 where a size range has no ground truth: kept as -1
            self.log(
                f"val/{name}", -1.0 if is_na(value) else value * 100, prog_bar=name in ("AP", "AP50"), sync_dist=True
            )

    # ------------------------------------------------------------------------------ optimiser
    def total_batch_size(self) -> int:
        """Images per optimiser step: batch per device (``data_info.batch_size``, else the training
        loader's) x devices x gradient accumulation."""
        trainer = self.trainer
        per_device = self.hparams.data_info["batch_size"]
        if per_device is None:
            loader = trainer.train_dataloader
            per_device = getattr(loader, "batch_size", None) or 1
        return int(per_device) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch of the real training loader (``limit_train_batches`` applied),
        independent of ``max_steps``: the LR milestones are epochs of the data."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018  (sets up the train dataloader when needed)
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            if self.hparams.optim["milestones"] and self.hparams.optim.get("lr_policy", "step") == "step":
                raise ValueError(
                    f"schedule.milestones {list(self.hparams.optim['milestones'])} are epochs, but the training loader "
                    "has no "
                    "length; use a sized data set or milestones: []"
                )
            return 1
        return max(int(math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))), 1)

    def norm_names(self) -> Collection[str]:
        """Parameter names whose biases ``schedule.norm_groups=released`` trains like weights (none here)."""
        return ()

    def configure_optimizers(self):
        optim = self.hparams.optim
        total, steps_per_epoch = self.total_batch_size(), self.steps_per_epoch()
        opt, sched = build_optimizer(
            self.named_parameters(),
            optim,
            total_batch=total,
            steps_per_epoch=steps_per_epoch,
            norm_names=self.norm_names(),
            # the run's optimiser steps (max_epochs, max_steps, accumulation): the cosine policies' length
            total_steps=float(self.trainer.estimated_stepping_batches),
        )
        log.info(
            "SGD lr %.5g (base %.5g for batch %d, total batch %d), %d steps/epoch, milestones %s",
            opt.param_groups[0]["lr"],
            optim["lr"],
            optim["reference_batch"],
            total,
            steps_per_epoch,
            list(optim["milestones"]),
        )
        # "name": Lightning's LearningRateMonitor logs train/lr/weights and train/lr/biases
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "train/lr"}}


def data_info(dm: Any) -> dict[str, Any]:
    """What the module keeps of its data module (:class:`~ttfnet_lightning.training.config.DataInfo`):
    class names and count, input size, category ids, per-device batch size."""
    return {
        "num_classes": dm.num_classes,
        "class_names": list(dm.class_names),
        "input_size": list(dm.input_size),
        "label_to_cat_id": None if dm.label_to_cat_id is None else list(dm.label_to_cat_id),
        "batch_size": int(dm.batch_size),
    }
