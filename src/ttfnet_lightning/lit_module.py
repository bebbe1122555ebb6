"""``TTFNetModule``: the LightningModule that wires network, target encoder, loss, decoder,
optimiser and metrics together. It holds only plain hyper-parameters, builds the network itself,
and so ``TTFNetModule.load_from_checkpoint(path)`` works without Hydra.

Batch format (from ``ttfnet_lightning.data.collate_detection``): ``images`` (B, 3, H, W) uint8,
``boxes`` (B, M, 4) xyxy input pixels, ``labels`` (B, M) with -1 padding, ``meta`` (B dicts with
``image_id``, ``orig_size``, ``input_size``). Normalisation and target encoding run on the
training device in :meth:`on_after_batch_transfer`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from .decode import coco_results, decode_detections
from .losses import TTFNetLoss
from .models import TTFNet
from .targets import encode_targets

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["TTFNetModule", "NonFiniteError", "build_map_metric", "lr_factor"]


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/inf loss or weights: the run stops (no checkpoint of it is saved)."""


def image_ids(batch: dict[str, Any]) -> list[Any]:
    """The ``image_id`` of each image of a batch (for error messages)."""
    return [m.get("image_id") for m in batch.get("meta") or []]


def build_map_metric():
    """torchmetrics COCO mAP (box IoU), faster_coco_eval backend when installed, else pycocotools."""
    from torchmetrics.detection import MeanAveragePrecision

    try:
        import faster_coco_eval  # noqa: F401

        backend = "faster_coco_eval"
    except ImportError:
        backend = "pycocotools"
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_steps: int,
    warmup_ratio: float,
) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up from ``warmup_ratio`` over
    ``warmup_steps`` steps, times ``gamma`` for each epoch milestone passed."""
    epoch = step // max(steps_per_epoch, 1)
    factor = gamma ** sum(epoch >= m for m in milestones)
    if step < warmup_steps:
        factor *= warmup_ratio + (1 - warmup_ratio) * step / warmup_steps
    return factor


class TTFNetModule(pl.LightningModule):
    """TTFNet training/evaluation module.

    Args (all plain values, stored in the checkpoint):
        num_classes, class_names: C and its names.
        input_size: (H, W) network input, multiples of 32 (used by prediction from checkpoints).
        label_to_cat_id: contiguous label -> original dataset category id (COCO), for results JSON.
        backbone, pretrained, weights, frozen_stages, neck_channels, shortcut_convs, deformable, deform_impl,
        heatmap_convs, heatmap_channels, box_convs, box_channels, wh_scale: see :class:`TTFNet`.
        kernel: target-encoder options (see :func:`encode_targets`): alpha, beta, wh_gaussian,
            gaussian_weight, area_weight, aspect_ratio, class_aware, ...
        wloc, wreg, plus_one: loss weights and GIoU convention.
        lr: base learning rate for ``reference_batch`` images per step (paper: 0.016 for 128);
            with ``scale_lr`` it is scaled linearly to the real total batch
            (batch per device x devices x gradient accumulation).
        momentum, weight_decay, bias_lr_mult, bias_decay: SGD settings (biases: 2x LR, no decay).
        warmup_steps, warmup_ratio: linear warm-up (500 steps from 0.2x).
        milestones, gamma: LR x gamma at these epochs.
        topk, score_threshold: decoder settings.
        results_json: write COCO-format detections of each validation to the log dir.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        input_size: Sequence[int] = (512, 512),
        label_to_cat_id: Sequence[int] | None = None,
        backbone: str = "r18",
        pretrained: bool = False,
        weights: str | None = None,
        frozen_stages: int = 1,
        neck_channels: Sequence[int] = (256, 128, 64),
        shortcut_convs: Sequence[int] = (3, 2, 1),
        deformable: bool = True,
        deform_impl: str = "native",
        heatmap_convs: int = 2,
        heatmap_channels: int = 128,
        box_convs: int | None = None,
        box_channels: int = 64,
        wh_scale: float = 16.0,
        kernel: dict[str, Any] | None = None,
        wloc: float = 1.0,
        wreg: float = 5.0,
        plus_one: bool = True,
        lr: float = 0.016,
        reference_batch: int = 128,
        scale_lr: bool = True,
        momentum: float = 0.9,
        weight_decay: float = 4e-4,
        bias_lr_mult: float = 2.0,
        bias_decay: float = 0.0,
        warmup_steps: int = 500,
        warmup_ratio: float = 0.2,
        milestones: Sequence[int] = (9, 11),
        gamma: float = 0.1,
        topk: int = 100,
        score_threshold: float = 0.01,
        results_json: bool = True,
    ) -> None:
        super().__init__()
        kernel = dict(kernel or {})
        kernel.pop("name", None)
        self.save_hyperparameters()
        self.hparams.kernel = kernel
        H, W = int(input_size[0]), int(input_size[1])
        if H % 32 or W % 32:
            raise ValueError(f"input_size must be multiples of 32 (the backbone's stride), got {H}x{W}")
        self.class_aware = bool(kernel.get("class_aware", False))
        self.net = TTFNet(
            num_classes=num_classes,
            backbone=backbone,
            pretrained=pretrained,
            weights=weights,
            frozen_stages=frozen_stages,
            neck_channels=tuple(neck_channels),
            shortcut_convs=tuple(shortcut_convs),
            deformable=deformable,
            deform_impl=deform_impl,
            heatmap_convs=heatmap_convs,
            heatmap_channels=heatmap_channels,
            box_convs=box_convs,
            box_channels=box_channels,
            class_aware=self.class_aware,
            wh_scale=wh_scale,
        )
        self.kernel = kernel
        self.loss_fn = TTFNetLoss(stride=TTFNet.stride, wloc=wloc, wreg=wreg, plus_one=plus_one)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.val_map = build_map_metric()
        self._val_results: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------- data on device
    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 RGB -> float, ImageNet mean/std normalised."""
        return (images.float() - self.mean) / self.std

    def encode(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Training targets for a batch on its device (heatmap, box_target, reg_weight)."""
        H, W = batch["images"].shape[-2:]
        return encode_targets(
            batch["boxes"],
            batch["labels"],
            num_classes=self.hparams.num_classes,
            output_size=(H // TTFNet.stride, W // TTFNet.stride),
            stride=TTFNet.stride,
            **self.kernel,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "images" in batch and batch["images"].dtype == torch.uint8:
            batch = dict(batch)
            batch["images"] = self.normalize(batch["images"])
            if "boxes" in batch and self.trainer is not None and (self.trainer.training or self.trainer.validating):
                batch["targets"] = self.encode(batch)
        return batch

    # ---------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) normalised images -> heatmap logits (B, C, h, w), wh (B, 4 or 4C, h, w)."""
        return self.net(images)

    def _losses(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        targets = batch["targets"] if "targets" in batch else self.encode(batch)
        out = self.net(batch["images"])
        return self.loss_fn(*out, *targets), out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses, _ = self._losses(batch)
        if not bool(torch.isfinite(losses["loss"])):
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise NonFiniteError(
                f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}): "
                f"{terms}; images {image_ids(batch)}. Training stopped, no checkpoint of this model is saved; "
                "lower schedule.lr (or check these images' boxes) and rerun."
            )
        B = batch["images"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=B)
        self.log("train/loss_heatmap", losses["loss_heatmap"], batch_size=B)
        self.log("train/loss_box", losses["loss_box"], batch_size=B)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=B)
        return losses["loss"]

    def decode(self, heatmap_logits: Tensor, wh: Tensor, meta: Sequence[dict[str, Any]] | None, input_size) -> list[dict[str, Tensor]]:
        orig = [tuple(m["orig_size"]) for m in meta] if meta is not None else None
        return decode_detections(
            heatmap_logits,
            wh,
            input_size=tuple(input_size),
            orig_sizes=orig,
            stride=TTFNet.stride,
            k=self.hparams.topk,
            score_threshold=self.hparams.score_threshold,
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Tensor]]:
        losses, (hm, wh) = self._losses(batch)
        B = batch["images"].shape[0]
        self.log("val/loss", losses["loss"], batch_size=B, sync_dist=True)
        H, W = batch["images"].shape[-2:]
        dets = self.decode(hm, wh, batch["meta"], (H, W))
        self.val_map.update(dets, self.ground_truth(batch))
        if self.hparams.results_json:
            self._collect_results(dets, batch["meta"])
        return dets

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
                gt = {"boxes": m["gt_boxes"].to(device).float().reshape(-1, 4), "labels": m["gt_labels"].to(device).long()}
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

    def _collect_results(self, dets: list[dict[str, Tensor]], meta: Sequence[dict[str, Any]]) -> None:
        self._val_results += coco_results(dets, [m["image_id"] for m in meta], self.hparams.label_to_cat_id)

    def on_validation_epoch_start(self) -> None:
        self._val_results = []

    def on_validation_epoch_end(self) -> None:
        res = self.val_map.compute()
        self.val_map.reset()
        names = {"map": "AP", "map_50": "AP50", "map_75": "AP75", "map_small": "APs", "map_medium": "APm", "map_large": "APl"}
        for key, name in names.items():
            value = float(res[key])
            # torchmetrics reports -1 where a size range has no ground truth
            self.log(f"val/{name}", value * 100 if value >= 0 else -1.0, prog_bar=name in ("AP", "AP50"), sync_dist=True)
        if self.hparams.results_json and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.write_results_json()

    def results_json_path(self) -> Path | None:
        log_dir = self.trainer.log_dir if self.trainer is not None else None
        if log_dir is None:
            return None
        return Path(log_dir) / "detections_val.json"

    def write_results_json(self, path: str | Path | None = None) -> Path | None:
        """COCO-format detections of the last validation (original category ids when known)."""
        path = Path(path) if path else self.results_json_path()
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._val_results))
        log.info("wrote %d detections to %s", len(self._val_results), path)
        return path

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        H, W = batch["images"].shape[-2:]
        return self.decode(*self.net(batch["images"]), batch.get("meta"), (H, W))

    # ------------------------------------------------------------------------------ optimiser
    def total_batch_size(self) -> int:
        """Images per optimiser step: batch per device x devices x gradient accumulation."""
        trainer = self.trainer
        per_device = None
        dm = getattr(trainer, "datamodule", None)
        if dm is not None:
            per_device = getattr(dm, "batch_size", None) or getattr(getattr(dm, "hparams", {}), "batch_size", None)
        if per_device is None:
            per_device = trainer.train_dataloader.batch_size if trainer.train_dataloader is not None else 1
        return int(per_device) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)

    def effective_lr(self) -> float:
        hp = self.hparams
        if not hp.scale_lr:
            return float(hp.lr)
        return float(hp.lr) * self.total_batch_size() / float(hp.reference_batch)

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch of the real training loader (``limit_train_batches`` applied),
        independent of ``max_steps``: the LR milestones are epochs of the data."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018  (sets up the train dataloader when needed)
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            if self.hparams.milestones:
                raise ValueError(
                    f"schedule.milestones {list(self.hparams.milestones)} are epochs, but the training loader has no "
                    "length; use a sized data set or milestones: []"
                )
            return 1
        return max(int(math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))), 1)

    def configure_optimizers(self):
        hp = self.hparams
        lr = self.effective_lr()
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith(".bias") else decay).append(p)
        groups = [
            {"params": decay, "lr": lr, "weight_decay": hp.weight_decay},
            {"params": no_decay, "lr": lr * hp.bias_lr_mult, "weight_decay": hp.weight_decay * hp.bias_decay},
        ]
        opt = torch.optim.SGD(groups, lr=lr, momentum=hp.momentum)
        steps_per_epoch = self.steps_per_epoch()
        log.info(
            "SGD lr %.5g (base %.5g for batch %d, total batch %d), %d steps/epoch, milestones %s",
            lr, hp.lr, hp.reference_batch, self.total_batch_size(), steps_per_epoch, list(hp.milestones),
        )

        def factor(step: int) -> float:
            return lr_factor(
                step,
                steps_per_epoch=steps_per_epoch,
                milestones=hp.milestones,
                gamma=hp.gamma,
                warmup_steps=hp.warmup_steps,
                warmup_ratio=hp.warmup_ratio,
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
