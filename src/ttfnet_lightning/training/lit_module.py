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
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ttfnet_lightning.core.inference import optimize_for_inference
from ttfnet_lightning.core.models import TTFNet
from ttfnet_lightning.training.config import (
    DataInfo,
    DecodeConfig,
    KernelConfig,
    LossConfig,
    MultiScaleConfig,
    NetConfig,
    OptimConfig,
    checked,
)
from ttfnet_lightning.training.config_groups import module_groups
from ttfnet_lightning.training.detector_module import (  # noqa: F401  (re-exported: their historical home)
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectorModule,
    NonFiniteError,
    build_map_metric,
    data_info,
    image_ids,
)
from ttfnet_lightning.training.methods import build_objective
from ttfnet_lightning.training.multiscale import MultiScale
from ttfnet_lightning.training.optim import lr_factor  # noqa: F401  (lr_factor: re-exported for compatibility)

log = logging.getLogger(__name__)

__all__ = [
    "TTFNetModule",
    "NonFiniteError",
    "build_map_metric",
    "data_info",
    "lr_factor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


# the module's argument groups and their schema (ttfnet_lightning.training.config)
GROUPS: dict[str, type] = {
    "net": NetConfig,
    "kernel": KernelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "decode": DecodeConfig,
    "data_info": DataInfo,
    "multiscale": MultiScaleConfig,
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


class TTFNetModule(DetectorModule):
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
        multiscale: :class:`~ttfnet_lightning.training.config.MultiScaleConfig` -- training batches resized to
            sizes around input_size (:mod:`ttfnet_lightning.training.multiscale`); off by default.
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
        multiscale: Mapping[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        super().__init__()
        groups = _grouped(
            {"net": net, "kernel": kernel, "loss": loss, "optim": optim, "decode": decode, "data_info": data_info}
            | {"multiscale": multiscale},
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
        # multiscale=standard: the training batches' sizes (None: off)
        self.multiscale = MultiScale.from_group(groups["multiscale"], self.input_size)
        self._setup_shared()  # normalisation buffers, the validation metric (training/detector_module.py)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, data_info: Mapping[str, Any]) -> TTFNetModule:
        """The module from the composed training config (resolved plain containers; see
        :func:`~ttfnet_lightning.training.config_groups.module_groups`) and what it knows of its data
        (:class:`~ttfnet_lightning.training.config.DataInfo`, e.g. from :func:`data_info`)."""
        return cls(**module_groups(cfg), data_info=data_info)

    # ----------------------------------------------------------------------------- data on device
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

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "images" in batch and batch["images"].dtype == torch.uint8:
            batch = self.normalized_batch(batch)  # normalised (and channels_last when set)
            if "boxes" in batch and self.trainer is not None and (self.trainer.training or self.trainer.validating):
                if self.multiscale is not None and self.trainer.training:  # before encoding: targets at its size
                    batch = self.multiscale(batch, self.global_step)
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
        self.check_finite(losses, losses["loss"], batch, batch_idx)
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
        self.update_metric(dets, batch)
        return dets  # (the CocoResultsWriter callback collects them)

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
    def norm_names(self) -> Collection[str]:
        """The backbone's BN layers named bn/bnN (``schedule.norm_groups=released``: their biases train like
        weights)."""
        return {f"net.backbone.{name}" for name in self.net.backbone.released_norm_names()}
