"""``PeerDetectorModule``: torchvision's detectors (FCOS, RetinaNet, Faster R-CNN on a ResNet-18 FPN, SSDlite
on MobileNetV3-Large; :mod:`ttfnet_lightning.core.models.peers`) as peers of TTFNet (issue 24): the same batches,
normalisation, optimiser and LR schedule, COCO metric and ``val/*`` keys as
:class:`~ttfnet_lightning.training.lit_module.TTFNetModule` (both are a
:class:`~ttfnet_lightning.training.detector_module.DetectorModule`), so that ``method=fcos`` etc. trains on the
same data module, schedule and trainer.

What differs from TTFNet: the detector computes its own targets and losses from the batch's boxes (torchvision
in train mode returns a dict of loss terms), so there is no target encoding in :meth:`on_after_batch_transfer`;
no ``val/loss`` is logged (torchvision returns losses only in train mode: a second, train-mode forward of each
validation batch would cost as much as the validation and move the BN statistics); and there is no heatmap
(:attr:`has_heatmap`). Hyper-parameters are plain dicts (``peer``, ``optim``, ``decode``, ``data_info``), so
``PeerDetectorModule.load_from_checkpoint(path)`` needs no Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ttfnet_lightning.core.models.peers import build_peer
from ttfnet_lightning.training.config import (
    DataInfo,
    DecodeConfig,
    OptimConfig,
    PeerNetConfig,
    checked,
)
from ttfnet_lightning.training.config_groups import peer_groups
from ttfnet_lightning.training.detector_module import DetectorModule

log = logging.getLogger(__name__)

__all__ = ["PeerDetectorModule", "PEER_GROUPS", "peer_hparams", "is_peer_hparams"]

# the module's argument groups and their schema (ttfnet_lightning.training.config)
PEER_GROUPS: dict[str, type] = {
    "peer": PeerNetConfig,
    "optim": OptimConfig,
    "decode": DecodeConfig,
    "data_info": DataInfo,
}


def is_peer_hparams(hparams: Mapping[str, Any]) -> bool:
    """Whether a module's (or a checkpoint's) hyper-parameters are a peer detector's: they have a ``peer`` group."""
    return isinstance(hparams, Mapping) and isinstance(hparams.get("peer"), Mapping)


def peer_hparams(groups: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """The peer module's argument groups as checked plain dicts (defaults filled in; an unknown group or key
    raises TypeError naming it, a bad value ValueError)."""
    unknown = sorted(set(groups) - set(PEER_GROUPS))
    if unknown:
        raise TypeError(
            f"PeerDetectorModule: unknown argument(s) {unknown}; arguments are the groups {sorted(PEER_GROUPS)}"
        )
    return {
        g: checked(cls, dict(groups.get(g) or {}), where=f"PeerDetectorModule({g}=...)")
        for g, cls in PEER_GROUPS.items()
    }


def _loss_name(term: str) -> str:
    """torchvision's loss keys as logged: ``classification`` -> ``loss_classification``; ``loss_classifier`` stays."""
    return term if term.startswith("loss_") else f"loss_{term}"


class PeerDetectorModule(DetectorModule):
    """A torchvision detector trained and validated like TTFNet.

    Args (keyword-only; one plain dict per group, checked and stored in the checkpoint):
        peer: :class:`~ttfnet_lightning.training.config.PeerNetConfig` -- ``name`` (fcos | retinanet | ssdlite |
            faster_rcnn), ``pretrained_backbone``, ``trainable_layers``.
        optim: :class:`~ttfnet_lightning.training.config.OptimConfig` -- SGD and LR schedule, as TTFNet's.
        decode: :class:`~ttfnet_lightning.training.config.DecodeConfig` -- ``topk`` (detections per image after
            NMS) and ``score_threshold``; ``box_convention`` must be ``continuous``.
        data_info: :class:`~ttfnet_lightning.training.config.DataInfo` -- classes, input size, category ids, batch.
        backbone_weights: not a hyper-parameter: False builds a ``pretrained_backbone`` network without
            loading torchvision's ImageNet weights (``load_model``: the checkpoint holds the weights).

    ``forward(images)`` returns ``(detections, None)`` and :meth:`decode` takes them with the same arguments as
    TTFNetModule's (``module.decode(*module(images), meta, input_size)``), so code written for TTFNetModule
    (speed measurement, video, figures) runs on a peer too.
    """

    #: no heatmap to draw (LogValPredictions, predict's draw_heatmap)
    has_heatmap: bool = False
    #: accepted for TTFNetModule's interface; a peer adds no heatmap
    predict_heatmaps: bool = False

    def __init__(
        self,
        *,
        peer: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        decode: Mapping[str, Any] | None = None,
        data_info: Mapping[str, Any] | None = None,
        backbone_weights: bool = True,
    ) -> None:
        super().__init__()
        groups = peer_hparams({"peer": peer, "optim": optim, "decode": decode, "data_info": data_info})
        self.save_hyperparameters(groups)
        p, d = groups["peer"], groups["decode"]
        if d["box_convention"] != "continuous":
            raise ValueError(
                f"model.box_convention={d['box_convention']} is the released TTFNet models' convention; "
                f"model.method={p['name']} decodes continuous boxes only"
            )
        self.net = build_peer(
            p["name"],
            num_classes=self.num_classes,
            input_size=self.input_size,
            pretrained_backbone=bool(p["pretrained_backbone"]),
            trainable_layers=p["trainable_layers"],
            score_threshold=float(d["score_threshold"]),
            detections_per_img=int(d["topk"]),
            load_weights=backbone_weights,
        )
        self._setup_shared()  # normalisation buffers, the validation metric (training/detector_module.py)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, data_info: Mapping[str, Any]) -> PeerDetectorModule:
        """The module from the composed training config (resolved plain containers;
        :func:`~ttfnet_lightning.training.config_groups.peer_groups`) and what it knows of its data.

        Raises:
            ValueError: ``export_backbone`` is set (a peer's backbone is not a TTFNet backbone file)."""
        name = cfg["model"]["method"]
        if cfg.get("export_backbone"):
            raise ValueError(
                f"export_backbone={cfg['export_backbone']}: model.method={name} is torchvision's detector, whose "
                "backbone is not written as a backbone.weights file; leave export_backbone unset"
            )
        _note_unused_backbone(name, cfg.get("backbone") or {})
        return cls(**peer_groups(cfg), data_info=data_info)

    # ---------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor) -> tuple[list[dict[str, Tensor]], None]:
        """(B, 3, H, W) normalised images -> (B dicts ``{boxes, scores, labels}`` in input pixels, None); eval mode."""
        return self.net(images), None

    def decode(
        self,
        detections: Sequence[dict[str, Tensor]],
        _unused: Any,
        meta: Sequence[dict[str, Any]] | None,
        input_size: Sequence[int],
    ) -> list[dict[str, Tensor]]:
        """Detections in input pixels (``forward``'s) -> in each image's ``meta[i]["orig_size"]`` pixels (as
        :meth:`TTFNetModule.decode <ttfnet_lightning.training.lit_module.TTFNetModule.decode>` returns them);
        ``meta`` None keeps input pixels."""
        if meta is None:
            return [dict(d) for d in detections]
        H, W = (float(v) for v in input_size)
        out = []
        for det, m in zip(detections, meta):
            h0, w0 = m["orig_size"]
            scale = torch.tensor([w0 / W, h0 / H, w0 / W, h0 / H], dtype=torch.float32, device=det["boxes"].device)
            out.append({"boxes": det["boxes"].float() * scale, "scores": det["scores"], "labels": det["labels"]})
        return out

    def detect(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """A batch's detections in its images' original pixels (eval mode)."""
        H, W = batch["images"].shape[-2:]
        return self.decode(*self(batch["images"]), batch.get("meta"), (H, W))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = {_loss_name(k): v for k, v in self.net(batch["images"], batch["boxes"], batch["labels"]).items()}
        loss = torch.stack([v.float() for v in losses.values()]).sum()
        self.check_finite(losses, loss, batch, batch_idx)
        B = batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for term, value in losses.items():  # e.g. FCOS: loss_classification, loss_bbox_regression, loss_bbox_ctrness
            self.log(f"train/{term}", value, batch_size=B)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Tensor]]:
        dets = self.detect(batch)
        self.update_metric(dets, batch)
        return dets  # (the CocoResultsWriter callback collects them)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        """Detections (``{boxes, scores, labels}`` per image, xyxy in ``meta[i]["orig_size"]`` pixels when given,
        else input pixels) for a batch of images (``trainer.predict``)."""
        if batch["images"].shape[0] == 0:  # every image of the batch was unreadable
            return []
        return self.detect(batch)

    def use_channels_last(self) -> PeerDetectorModule:
        """Weights and (from now on) input batches in channels_last memory format (``speed.channels_last``;
        :meth:`~ttfnet_lightning.core.models.peers.PeerDetector.to_channels_last`)."""
        self.net.to_channels_last()
        self.channels_last = True
        return self

    # ------------------------------------------------------------------------------ inference
    def optimize_for_inference(
        self, *, precision: str = "fp32", compile: bool = False, **options: Any
    ) -> PeerDetectorModule:
        """The inference path of TTFNetModule's interface: a peer runs as trained (fp32; ``compile`` compiles
        its backbone and FPN, :meth:`~ttfnet_lightning.core.models.peers.PeerDetector.compile`). Returns ``self``
        in eval mode.

        Raises:
            ValueError: another precision than fp32."""
        if precision != "fp32":
            raise ValueError(
                f"precision {precision!r}: model.method={self.hparams.peer['name']} (torchvision's detector) is "
                "evaluated in fp32 only"
            )
        if compile:
            self.net.compile()
        return self.eval()


def _note_unused_backbone(name: str, backbone: Mapping[str, Any]) -> None:
    """Log that the ``backbone`` group's settings do not apply to a peer (it builds its own backbone)."""
    given = {k: backbone.get(k) for k in ("name", "pretrained", "weights") if backbone.get(k)}
    if given.get("pretrained") or given.get("weights") or given.get("name") not in (None, "r18"):
        own = "MobileNetV3-Large" if name == "ssdlite" else "ResNet-18 FPN"
        log.warning(
            "model.method=%s builds its own backbone (%s): backbone=%s is not used; torchvision's ImageNet "
            "weights: peer.pretrained_backbone=true",
            name,
            own,
            given,
        )
