"""``TTFNetModule``: the LightningModule that wires network, target encoder, loss, decoder,
optimiser and metrics together. It holds only plain hyper-parameters, builds the network itself,
and so ``TTFNetModule.load_from_checkpoint(path)`` works without Hydra.

Batch format (from ``ttfnet_lightning.data.collate_detection``): ``images`` (B, 3, H, W) uint8,
``boxes`` (B, M, 4) xyxy input pixels, ``labels`` (B, M) with -1 padding, ``meta`` (B dicts with
``image_id``, ``orig_size``, ``input_size``). Normalisation and target encoding run on the
training device in :meth:`on_after_batch_transfer`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from ttfnet_lightning.core.inference import optimize_for_inference
from ttfnet_lightning.core.metrics import TORCHMETRICS_KEYS, is_na
from ttfnet_lightning.core.models import TTFNet
from ttfnet_lightning.training.config import (
    DataInfo,
    DecodeConfig,
    KernelConfig,
    LossConfig,
    NetConfig,
    OptimConfig,
    checked,
    module_groups,
)
from ttfnet_lightning.training.distributed import ImageMeanAveragePrecision as MeanAveragePrecision
from ttfnet_lightning.training.methods import build_objective
from ttfnet_lightning.training.optim import build_optimizer, lr_factor  # noqa: F401  (lr_factor: re-exported for compatibility)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["TTFNetModule", "NonFiniteError", "build_map_metric", "lr_factor", "IMAGENET_MEAN", "IMAGENET_STD"]


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


# the module's argument groups and their schema (ttfnet_lightning.training.config)
GROUPS: dict[str, type] = {
    "net": NetConfig,
    "kernel": KernelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "decode": DecodeConfig,
    "data_info": DataInfo,
}
# flat keyword arguments of checkpoints written before the grouped arguments (still loadable)
_LEGACY_DROPPED = ("results_json",)  # now the CocoResultsWriter callback


def _grouped(groups: dict[str, Mapping[str, Any] | None], legacy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The module's argument groups as checked plain dicts. Flat arguments (the previous API,
    ``num_classes=..., backbone=..., lr=...``, as old checkpoints store them, and overrides such as
    ``load_from_checkpoint(path, pretrained=False)``) go into their groups, overriding them."""
    merged: dict[str, dict[str, Any]] = {g: dict(v or {}) for g, v in groups.items()}
    for key, value in legacy.items():
        if key in _LEGACY_DROPPED:
            continue
        group = next(
            (g for g, cls in GROUPS.items() if g != "kernel" and key in {f.name for f in dataclasses.fields(cls)}), None
        )
        if group is None:
            raise TypeError(f"TTFNetModule: unknown argument {key!r}; arguments are the groups {sorted(GROUPS)}")
        merged[group][key] = (
            value  # a flat argument overrides its group's value (load_from_checkpoint(..., pretrained=False))
        )
    return {g: checked(GROUPS[g], merged[g], where=f"TTFNetModule({g}=...)") for g in GROUPS}


class TTFNetModule(pl.LightningModule):
    """TTFNet training/evaluation module.

    Args (keyword-only; one plain dict per group, checked against the dataclasses of
    :mod:`ttfnet_lightning.training.config` and stored as plain dicts in the checkpoint, so
    ``TTFNetModule.load_from_checkpoint(path)`` needs no Hydra):
        net: :class:`~ttfnet_lightning.training.config.NetConfig` -- ``TTFNet(**net)`` (backbone, neck, heads).
        kernel: :class:`~ttfnet_lightning.training.config.KernelConfig` -- target encoder (alpha, beta, ...).
        loss: :class:`~ttfnet_lightning.training.config.LossConfig` -- wloc, wreg, plus_one.
        optim: :class:`~ttfnet_lightning.training.config.OptimConfig` -- SGD and LR schedule
        (:mod:`ttfnet_lightning.training.optim`).
        decode: :class:`~ttfnet_lightning.training.config.DecodeConfig` -- topk, score_threshold, box_convention.
        data_info: :class:`~ttfnet_lightning.training.config.DataInfo` -- num_classes (C), class_names,
            input_size (H, W), label_to_cat_id, batch_size (per device, for linear LR scaling).
    Omitted settings take their dataclass defaults. Flat arguments of the previous release
    (``num_classes=..., lr=...``, as stored in its checkpoints) are still accepted.
    """

    def __init__(
        self,
        *,
        net: Mapping[str, Any] | None = None,
        kernel: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        decode: Mapping[str, Any] | None = None,
        data_info: Mapping[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        groups = _grouped(
            {"net": net, "kernel": kernel, "loss": loss, "optim": optim, "decode": decode, "data_info": data_info},
            legacy,
        )
        self.save_hyperparameters(groups)
        H, W = self.input_size
        if H % 32 or W % 32:
            raise ValueError(f"input_size must be multiples of 32 (the backbone's stride), got {H}x{W}")
        kernel, method = groups["kernel"], groups["net"]["method"]
        self.class_aware = bool(kernel["class_aware"]) and method == "ttfnet"  # centernet ignores the kernel
        self.net = TTFNet(num_classes=self.num_classes, class_aware=self.class_aware, **groups["net"])
        # target encoder, loss and decoder of the method (training/methods.py)
        self.objective = build_objective(
            method, kernel=kernel, loss=groups["loss"], decode=groups["decode"], stride=TTFNet.stride
        )
        self.loss_fn = self.objective.loss
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.val_map = build_map_metric()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, data_info: Mapping[str, Any]) -> TTFNetModule:
        """The module from the composed training config (resolved plain containers; see
        :func:`~ttfnet_lightning.training.config.module_groups`) and what it knows of its data
        (:class:`~ttfnet_lightning.training.config.DataInfo`, e.g. from :func:`data_info`)."""
        return cls(**module_groups(cfg), data_info=data_info)

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

    def encode(self, batch: dict[str, Any]) -> tuple[Tensor, ...]:
        """Training targets for a batch on its device: TTFNet's (heatmap, box_target, reg_weight) or
        CenterNet's (heatmap, wh, offset, index, mask)."""
        H, W = batch["images"].shape[-2:]
        return self.objective.encode(
            batch["boxes"],
            batch["labels"],
            num_classes=self.num_classes,
            output_size=(H // TTFNet.stride, W // TTFNet.stride),
            stride=TTFNet.stride,
        )

    def use_channels_last(self) -> TTFNetModule:
        """Weights and (from now on) input batches in channels_last memory format (``speed.channels_last``)."""
        self.net.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "images" in batch and batch["images"].dtype == torch.uint8:
            batch = dict(batch)
            batch["images"] = self.normalize(batch["images"])
            if getattr(self, "channels_last", False):
                batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
            if "boxes" in batch and self.trainer is not None and (self.trainer.training or self.trainer.validating):
                batch["targets"] = self.encode(batch)
        return batch

    # ---------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) normalised images -> heatmap logits (B, C, h, w), wh (B, 4 or 4C, h, w) (CenterNet:
        size and offset, (B, 4, h, w))."""
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
                f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, batch "
                f"{batch_idx}): "
                f"{terms}; images {image_ids(batch)}. Training stopped, no checkpoint of this model is saved; "
                "lower schedule.lr (or check these images' boxes) and rerun."
            )
        B = batch["images"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=B)
        for term in self.objective.terms:  # TTFNet: loss_heatmap, loss_box; CenterNet: ..., loss_wh, loss_offset
            self.log(f"train/{term}", losses[term], batch_size=B)
        return losses["loss"]

    def decode(
        self, heatmap_logits: Tensor, wh: Tensor, meta: Sequence[dict[str, Any]] | None, input_size
    ) -> list[dict[str, Tensor]]:
        orig = [tuple(m["orig_size"]) for m in meta] if meta is not None else None
        return self.objective.decode(
            heatmap_logits,
            wh,
            input_size=tuple(input_size),
            orig_sizes=orig,
            stride=TTFNet.stride,
            k=self.hparams.decode["topk"],
            score_threshold=self.hparams.decode["score_threshold"],
            box_convention=self.hparams.decode.get("box_convention", "continuous"),
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Tensor]]:
        losses, (hm, wh) = self._losses(batch)
        B = batch["images"].shape[0]
        self.log("val/loss", losses["loss"], batch_size=B, sync_dist=True)
        H, W = batch["images"].shape[-2:]
        dets = self.decode(hm, wh, batch["meta"], (H, W))
        self.val_map.update(dets, self.ground_truth(batch), image_ids=[m["image_id"] for m in batch["meta"]])
        return dets  # (the CocoResultsWriter callback collects them)

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

    def on_validation_epoch_end(self) -> None:
        res = self.val_map.compute()
        self.val_map.reset()
        for name, key in TORCHMETRICS_KEYS.items():
            value = float(res[key])  # -1 where a size range has no ground truth: kept as -1
            self.log(
                f"val/{name}", -1.0 if is_na(value) else value * 100, prog_bar=name in ("AP", "AP50"), sync_dist=True
            )

    #: ``predict_step`` adds each image's predicted ``heatmap`` (h, w): sigmoid, max over classes
    predict_heatmaps: bool = False

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        """Detections (``{boxes, scores, labels}`` per image, xyxy in ``meta[i]["orig_size"]``
        pixels when given, else input pixels) for a batch of images (``trainer.predict``); with
        ``predict_heatmaps`` also ``heatmap`` (h, w), the output map's class maximum after sigmoid."""
        if batch["images"].shape[0] == 0:  # every image of the batch was unreadable
            return []
        H, W = batch["images"].shape[-2:]
        hm, wh = self.net(batch["images"])
        dets = self.decode(hm, wh, batch.get("meta"), (H, W))
        if self.predict_heatmaps:
            for det, heat in zip(dets, hm.float().sigmoid().amax(1)):
                det["heatmap"] = heat
        return dets

    # ------------------------------------------------------------------------------ inference
    def optimize_for_inference(self, **options: Any) -> TTFNetModule:
        """Replace the network by its inference path (:func:`ttfnet_lightning.core.inference.optimize_for_inference`:
        BN folded, channels_last, ``precision``, optional ``compile``), in place; for evaluation and
        prediction only (the result cannot be trained). Returns ``self`` in eval mode."""

        self.net = optimize_for_inference(self.net.eval(), **options)
        return self.eval()

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
            if self.hparams.optim["milestones"]:
                raise ValueError(
                    f"schedule.milestones {list(self.hparams.optim['milestones'])} are epochs, but the training loader "
                    "has no "
                    "length; use a sized data set or milestones: []"
                )
            return 1
        return max(int(math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))), 1)

    def configure_optimizers(self):
        optim = self.hparams.optim
        total, steps_per_epoch = self.total_batch_size(), self.steps_per_epoch()
        norm_names = {f"net.backbone.{name}" for name in self.net.backbone.released_norm_names()}
        opt, sched = build_optimizer(
            self.named_parameters(), optim, total_batch=total, steps_per_epoch=steps_per_epoch, norm_names=norm_names
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
