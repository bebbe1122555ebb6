"""TTFNet losses: modified focal loss (heatmap) and weighted GIoU loss (boxes), as named scalars.

Normalisers follow the released code, not the paper's formulas:
the focal loss sum is divided by the number of positive pixels (target exactly 1), and the GIoU
loss sum by the sum of all regression weights in the batch (+1e-4).

Shapes: B images, C classes, G regression groups (1, or C when class-aware), h x w output map.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from ttfnet_lightning.core.decode import grid_boxes

__all__ = ["modified_focal_loss", "giou_loss", "TTFNetLoss"]


def modified_focal_loss(
    heatmap_logits: Tensor,
    heatmap: Tensor,
    *,
    alpha_f: float = 2.0,
    beta_f: float = 4.0,
    eps: float = 1e-4,
) -> Tensor:
    """CornerNet/CenterNet modified focal loss (equation (4)).

    Args:
        heatmap_logits: (B, C, h, w) raw logits; probabilities are ``sigmoid`` clamped to
            ``[eps, 1 - eps]`` as in the released code.
        heatmap: (B, C, h, w) Gaussian targets; positives are pixels exactly equal to 1.
    Returns:
        scalar: (sum of positive and negative terms) / number of positives; when there is no
        positive the negative sum alone (no host synchronisation either way).
    """
    pred = heatmap_logits.float().sigmoid().clamp(eps, 1 - eps)
    pos = heatmap.eq(1).float()
    neg = 1.0 - pos
    pos_loss = -(torch.log(pred) * torch.pow(1 - pred, alpha_f) * pos).sum()
    neg_loss = -(torch.log(1 - pred) * torch.pow(pred, alpha_f) * torch.pow(1 - heatmap, beta_f) * neg).sum()
    num_pos = pos.sum()
    return (pos_loss + neg_loss) / num_pos.clamp(min=1.0)


def _giou_loss_plus_one(pred: Tensor, target: Tensor) -> Tensor:
    """1 - GIoU with the released code's "+1 pixel" convention in widths, heights and areas.

    Args:
        pred, target: (..., 4) xyxy boxes.
    Returns:
        (...,) loss per box pair.
    """
    lt = torch.maximum(pred[..., :2], target[..., :2])
    rb = torch.minimum(pred[..., 2:], target[..., 2:])
    wh = (rb - lt + 1).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    area_p = (pred[..., 2] - pred[..., 0] + 1) * (pred[..., 3] - pred[..., 1] + 1)
    area_t = (target[..., 2] - target[..., 0] + 1) * (target[..., 3] - target[..., 1] + 1)
    union = area_p + area_t - overlap
    enc_lt = torch.minimum(pred[..., :2], target[..., :2])
    enc_rb = torch.maximum(pred[..., 2:], target[..., 2:])
    enc_wh = (enc_rb - enc_lt + 1).clamp(min=0)
    enclose = enc_wh[..., 0] * enc_wh[..., 1]
    giou = overlap / union - (enclose - union) / enclose
    return 1 - giou


def giou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    weight: Tensor,
    *,
    plus_one: bool = True,
    avg_eps: float = 1e-4,
) -> Tensor:
    """Weighted GIoU loss (equation (6) with the released normaliser).

    Args:
        pred_boxes, target_boxes: (..., 4) xyxy boxes in input pixels.
        weight: (...,) sample weights; pixels with weight 0 contribute nothing (their target may be
            anything, e.g. the encoder's -1 fill).
        plus_one: the released code's "+1 pixel" convention (default). False uses
            ``torchvision.ops.generalized_box_iou_loss`` (continuous coordinates).
    Returns:
        scalar: ``sum(weight * (1 - GIoU)) / (sum(weight) + avg_eps)``.
    """
    pos = weight > 0
    # unused pixels get a harmless target (the prediction itself) so no NaN can leak into gradients
    target = torch.where(pos.unsqueeze(-1), target_boxes.to(pred_boxes.dtype), pred_boxes.detach())
    if plus_one:
        per_box = _giou_loss_plus_one(pred_boxes, target)
    else:
        per_box = generalized_box_iou_loss(pred_boxes.reshape(-1, 4), target.reshape(-1, 4), reduction="none")
        per_box = per_box.reshape(weight.shape)
    per_box = torch.where(pos, per_box, torch.zeros_like(per_box))
    return (per_box * weight).sum() / (weight.sum() + avg_eps)


class TTFNetLoss:
    """Total TTFNet loss ``wloc * L_loc + wreg * L_reg`` returned as named scalars.

    Args:
        stride: output stride r used to decode box predictions (equation (5)).
        wloc, wreg: loss weights (1.0 and 5.0 in the paper).
        alpha_f, beta_f: focal loss exponents (2, 4).
        plus_one: GIoU "+1 pixel" convention of the released code (default True).
    """

    def __init__(
        self,
        *,
        stride: int = 4,
        wloc: float = 1.0,
        wreg: float = 5.0,
        alpha_f: float = 2.0,
        beta_f: float = 4.0,
        plus_one: bool = True,
    ) -> None:
        self.stride = stride
        self.wloc = wloc
        self.wreg = wreg
        self.alpha_f = alpha_f
        self.beta_f = beta_f
        self.plus_one = plus_one

    def __call__(
        self,
        heatmap_logits: Tensor,
        wh: Tensor,
        heatmap: Tensor,
        box_target: Tensor,
        reg_weight: Tensor,
    ) -> dict[str, Tensor]:
        """Compute the losses.

        Args:
            heatmap_logits: (B, C, h, w) network heatmap logits.
            wh: (B, 4G, h, w) predicted distances (l, t, r, b) in input pixels.
            heatmap: (B, C, h, w) target heatmap.
            box_target: (B, 4G, h, w) target boxes xyxy in input pixels.
            reg_weight: (B, G, h, w) sample weights.
        Returns:
            ``{"loss", "loss_heatmap", "loss_box"}``; ``loss_heatmap`` and ``loss_box`` are the
            weighted terms, ``loss`` their sum.
        """
        B, G, h, w = reg_weight.shape
        loss_heatmap = modified_focal_loss(heatmap_logits, heatmap, alpha_f=self.alpha_f, beta_f=self.beta_f)
        pred = grid_boxes(wh.float().reshape(B, G, 4, h, w), self.stride).permute(0, 1, 3, 4, 2)
        target = box_target.reshape(B, G, 4, h, w).permute(0, 1, 3, 4, 2)
        loss_box = giou_loss(pred, target, reg_weight.float(), plus_one=self.plus_one)
        loss_heatmap = self.wloc * loss_heatmap
        loss_box = self.wreg * loss_box
        return {"loss": loss_heatmap + loss_box, "loss_heatmap": loss_heatmap, "loss_box": loss_box}
