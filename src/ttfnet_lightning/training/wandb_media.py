"""Validation images for the trackers (:class:`LogValPredictions`): W&B gets the plain images with
the predicted and true boxes as its interactive overlays (:func:`wandb_boxes`: class labels, a class
filter and a score slider), TensorBoard the same boxes burnt into the pixels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ttfnet_lightning.core.drawing import overlay_heatmap

log = logging.getLogger(__name__)

__all__ = ["LogValPredictions", "wandb_boxes"]


def _box_data(boxes: torch.Tensor, labels: Sequence[int], names: Sequence[str], scores: Sequence[float] | None) -> list:
    """W&B ``box_data`` entries: pixel positions, the class id and a caption (with the score)."""
    data = []
    for i, (box, c) in enumerate(zip(boxes.tolist(), labels)):
        name = names[c] if 0 <= c < len(names) else str(c)
        x1, y1, x2, y2 = (round(float(v), 2) for v in box)
        entry: dict[str, Any] = {
            "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
            "domain": "pixel",
            "class_id": int(c),
            "box_caption": name,
        }
        if scores is not None:
            entry["scores"] = {"score": round(float(scores[i]), 4)}
            entry["box_caption"] = f"{name} {float(scores[i]):.2f}"
        data.append(entry)
    return data


def wandb_boxes(
    *,
    pred_boxes: torch.Tensor,
    pred_labels: torch.Tensor,
    pred_scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    class_names: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """The ``boxes=`` argument of ``wandb.Image`` for one image (W&B's documented box format):
    ``{"predictions": {...}, "ground_truth": {...}}``, each ``{"box_data": [...], "class_labels":
    {id: name}}``, positions in pixels of the logged image.

    Args:
        pred_boxes: (N, 4) predicted x1, y1, x2, y2 in the logged image's pixels.
        pred_labels: (N,) class ids in [0, C); pred_scores: (N,) scores in (0, 1].
        gt_boxes: (M, 4) true boxes, same coordinates; gt_labels: (M,) class ids (-1 padding dropped).
        class_names: C names.
    """
    class_labels = {i: str(n) for i, n in enumerate(class_names)}
    keep = gt_labels >= 0
    return {
        "predictions": {
            "box_data": _box_data(pred_boxes, pred_labels.tolist(), class_names, pred_scores.tolist()),
            "class_labels": class_labels,
        },
        "ground_truth": {
            "box_data": _box_data(gt_boxes[keep], gt_labels[keep].tolist(), class_names, None),
            "class_labels": class_labels,
        },
    }


class LogValPredictions(Callback):
    """Log a few validation images with their predicted and true boxes (``val/predictions``), and
    the same images with the predicted heatmap (sigmoid, max over classes, scaled to its maximum,
    given in the caption) blended over them and the true boxes in white (``val/heatmaps``).

    W&B gets the plain images with the boxes as interactive overlays (:func:`wandb_boxes`: every
    prediction above ``wandb_min_score``, its class and score; the UI filters by class and score);
    TensorBoard gets the predictions above ``min_score`` (red, labelled) and the true boxes (green)
    drawn into the pixels.

    Args:
        num_images: images logged per validation (from the first validation batch).
        min_score: predictions drawn into TensorBoard's images above this score.
        wandb_min_score: predictions sent to W&B above this score (its slider hides the lower ones).
    """

    def __init__(self, *, num_images: int = 4, min_score: float = 0.3, wandb_min_score: float = 0.05) -> None:
        self.num_images = num_images
        self.min_score = min_score
        self.wandb_min_score = wandb_min_score

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero or outputs is None:
            return
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        targets = [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, TensorBoardLogger))]
        if not targets:
            return
        images = batch["images"][: self.num_images]
        pics = (images * pl_module.std + pl_module.mean).clamp(0, 255).to(torch.uint8).cpu()
        dets = self._scaled_detections(outputs[: len(pics)], batch, images.shape[-2:])
        heat, peaks = self.heatmaps(pl_module, batch, pics)
        names = list(getattr(pl_module, "class_names", None) or [])
        for lg in targets:
            try:
                if isinstance(lg, WandbLogger):
                    self._log_wandb(lg, pics, dets, batch, names, heat, peaks, trainer.global_step)
                else:
                    drawn = self.burnt_in(pics, dets, batch, names)
                    lg.experiment.add_images("val/predictions", torch.stack(drawn), trainer.global_step)
                    if heat:
                        lg.experiment.add_images("val/heatmaps", torch.stack(heat), trainer.global_step)
            except Exception as exc:  # a logging failure must never stop training
                log.warning("could not log validation images to %s: %s", type(lg).__name__, exc)

    @staticmethod
    def _scaled_detections(outputs: Any, batch: Any, size: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Each logged image's detections (``boxes`` in its original pixels) at the input size (H, W)."""
        H, W = size
        dets = []
        for i in range(min(len(outputs), len(batch["meta"]))):
            h0, w0 = batch["meta"][i]["orig_size"]
            scale = torch.tensor([W / w0, H / h0, W / w0, H / h0])
            det = outputs[i]
            dets.append(
                {"boxes": det["boxes"].cpu() * scale, "scores": det["scores"].cpu(), "labels": det["labels"].cpu()}
            )
        return dets

    def _log_wandb(
        self,
        lg: Any,
        pics: torch.Tensor,
        dets: Sequence[dict[str, torch.Tensor]],
        batch: Any,
        names: Sequence[str],
        heat: Sequence[torch.Tensor],
        peaks: Sequence[str],
        step: int,
    ) -> None:
        """The plain images with W&B box overlays, and the heatmap images."""
        import wandb

        boxes = []
        for i, det in enumerate(dets[: len(pics)]):
            keep = det["scores"] >= self.wandb_min_score
            boxes.append(
                wandb_boxes(
                    pred_boxes=det["boxes"][keep],
                    pred_labels=det["labels"][keep],
                    pred_scores=det["scores"][keep],
                    gt_boxes=batch["boxes"][i].cpu(),
                    gt_labels=batch["labels"][i].cpu(),
                    class_names=names,
                )
            )
        classes = wandb.Classes([{"id": i, "name": str(n)} for i, n in enumerate(names)])
        images = [p.permute(1, 2, 0).numpy() for p in pics[: len(boxes)]]
        lg.log_image(key="val/predictions", images=images, step=step, boxes=boxes, classes=[classes] * len(boxes))
        if heat:
            lg.log_image(
                key="val/heatmaps", images=[p.permute(1, 2, 0).numpy() for p in heat], step=step, caption=list(peaks)
            )

    def burnt_in(
        self, pics: torch.Tensor, dets: Sequence[dict[str, torch.Tensor]], batch: Any, names: Sequence[str]
    ) -> list[torch.Tensor]:
        """The images (uint8, input size) with the predictions above ``min_score`` (red, labelled
        with class and score) and the true boxes (green) drawn into them."""
        from torchvision.utils import draw_bounding_boxes

        drawn = []
        for i, (pic, det) in enumerate(zip(pics, dets)):
            keep = det["scores"] >= self.min_score
            plabels = [
                f"{names[c] if c < len(names) else c} {s:.2f}"
                for c, s in zip(det["labels"][keep].tolist(), det["scores"][keep].tolist())
            ]
            gkeep = batch["labels"][i].cpu() >= 0
            pic = draw_bounding_boxes(pic, batch["boxes"][i].cpu()[gkeep], colors="lime", width=1)
            if keep.any():
                pic = draw_bounding_boxes(pic, det["boxes"][keep], labels=plabels, colors="red", width=1)
            drawn.append(pic)
        return drawn

    def heatmaps(
        self, pl_module: pl.LightningModule, batch: Any, pics: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[str]]:
        """The images ``pics`` (uint8, input size) with the predicted heatmap, scaled to its maximum,
        blended over them and the true boxes in white, and captions giving each maximum (one more
        forward pass of these few images; nothing if it fails or the module has no heatmap)."""
        from torchvision.utils import draw_bounding_boxes

        if not getattr(pl_module, "has_heatmap", True):  # torchvision's detectors (PeerDetectorModule)
            return [], []
        try:
            with torch.no_grad():
                hm, _ = pl_module(batch["images"][: len(pics)])
            heat = hm.float().sigmoid().amax(1).cpu()
        except Exception as exc:  # a logging failure must never stop training
            log.warning("could not compute validation heatmaps: %s", exc)
            return [], []
        out = []
        for i, (pic, h) in enumerate(zip(pics, heat)):
            pic = overlay_heatmap(pic, h, alpha=0.6, vmax=None)
            gkeep = batch["labels"][i].cpu() >= 0
            if gkeep.any():
                pic = draw_bounding_boxes(pic, batch["boxes"][i].cpu()[gkeep], colors="white", width=1)
            out.append(pic)
        return out, [f"heatmap max {float(h.max()):.2f}" for h in heat]
