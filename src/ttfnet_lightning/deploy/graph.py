"""What :mod:`ttfnet_lightning.deploy.export` exports: uint8 images -> normalisation -> network -> a
fixed-K decoder (:class:`DetectionExport`), in export-friendly ops."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttfnet_lightning.core.decode import is_released_convention
from ttfnet_lightning.core.models.neck import ModulatedDeformConv2d
from ttfnet_lightning.training.lit_module import IMAGENET_MEAN, IMAGENET_STD, TTFNetModule

__all__ = ["DetectionExport", "exportable_net", "topk_detections"]


def topk_detections(
    heatmap_logits: Tensor,
    wh: Tensor,
    *,
    input_size: tuple[int, int],
    stride: int = 4,
    k: int = 100,
    pool_size: int = 3,
    box_convention: str = "continuous",
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~ttfnet_lightning.core.decode.decode_detections` with a fixed K and no score threshold or
    rescale, in export-friendly ops (no in-place writes, batch size never read as a number).

    Returns boxes (B, K, 4) float32 xyxy input pixels clamped to the input, scores (B, K),
    labels (B, K) int64, K = min(k, C*h*w); the same values, in the same order, as the top K of
    ``decode_detections`` (with the same ``box_convention``, no rescale) before its threshold
    (``tests/deploy/test_export.py`` checks it). ``box_convention="released"``: clamped to [0, W - 1] x
    [0, H - 1], then x2 + 1 and y2 + 1 (:data:`~ttfnet_lightning.core.decode.BOX_CONVENTIONS`).
    """
    _, C, h, w = heatmap_logits.shape
    released = is_released_convention(box_convention)
    H, W = float(input_size[0]), float(input_size[1])
    hi_h, hi_w, one = (H - 1, W - 1, 1.0) if released else (H, W, 0.0)
    heat = heatmap_logits.float().sigmoid()
    peaks = F.max_pool2d(heat, pool_size, stride=1, padding=(pool_size - 1) // 2)
    heat = heat * (peaks == heat).to(heat.dtype)
    k = min(int(k), int(C * h * w))
    scores, idx = heat.flatten(1).topk(k, dim=1)  # (B, K)
    hw = h * w
    labels = torch.div(idx, hw, rounding_mode="floor")
    pix = idx - labels * hw
    row = torch.div(pix, w, rounding_mode="floor")
    ys = row.to(torch.float32) * stride
    xs = (pix - row * w).to(torch.float32) * stride
    if wh.shape[1] != 4:  # class-aware: channel 4*c + side
        chan = labels.unsqueeze(-1) * 4 + torch.arange(4, device=wh.device)  # (B, K, 4)
        flat = chan * hw + pix.unsqueeze(-1)
        dist = wh.flatten(1).gather(1, flat.flatten(1)).reshape(-1, k, 4)
    else:
        dist = wh.flatten(2).gather(2, pix.unsqueeze(1).expand(-1, 4, -1)).permute(0, 2, 1)
    dist = dist.float()
    l, t, r, b = dist.unbind(dim=-1)
    x1, y1 = (xs - l).clamp(0, hi_w), (ys - t).clamp(0, hi_h)
    x2, y2 = (xs + r).clamp(0, hi_w) + one, (ys + b).clamp(0, hi_h) + one
    boxes = torch.stack((x1, y1, x2, y2), dim=-1)
    return boxes, scores, labels


class DetectionExport(nn.Module):
    """uint8 images -> normalisation -> TTFNet -> fixed-K decoder: what is exported.

    Args:
        net: a :class:`~ttfnet_lightning.core.models.TTFNet` (eval mode).
        input_size: (H, W) the model is exported for (multiples of 32).
        topk: K detections per image.
        mean, std: per-channel normalisation on the 0-1 scale (ImageNet's by default).
        box_convention: how the boxes are read, the checkpoint's ``decode.box_convention``
            (:func:`topk_detections`).
    Shapes:
        images (B, 3, H, W) uint8 (or float 0-255) -> boxes (B, K, 4), scores (B, K), labels (B, K).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        input_size: tuple[int, int],
        topk: int = 100,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        box_convention: str = "continuous",
    ) -> None:
        super().__init__()
        is_released_convention(box_convention)  # an unknown name fails here, not at the first call
        self.box_convention = box_convention
        self.net = net
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.topk = int(topk)
        self.stride = int(getattr(net, "stride", 4))
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (images.float() - self.mean) / self.std  # as TTFNetModule.normalize
        heatmap_logits, wh = self.net(x)
        return topk_detections(
            heatmap_logits,
            wh,
            input_size=self.input_size,
            stride=self.stride,
            k=self.topk,
            box_convention=self.box_convention,
        )


def exportable_net(model: TTFNetModule) -> nn.Module:
    """A copy of the module's network in eval mode whose deformable convs use the native
    implementation (grid_sample + matmul: ONNX GridSample; same parameters and results).

    Raises:
        ValueError: a model of another method than TTFNet (``net.method``; torchvision's detectors, whose
            ``peer.name`` is their method): the graph decodes TTFNet's boxes."""
    peer = model.hparams.get("peer")
    if peer:
        raise ValueError(
            f"export supports method=ttfnet; this checkpoint is {peer['name']} (torchvision's detector): export "
            "its network, load_model(ckpt).net.detector, with torchvision's own tools"
        )
    method = model.hparams.net.get("method", "ttfnet")
    if method != "ttfnet":
        raise ValueError(f"export supports method=ttfnet; this checkpoint is {method}")
    net = copy.deepcopy(model.net).float().eval()
    for m in net.modules():
        if isinstance(m, ModulatedDeformConv2d):
            m.deform_impl = "native"
    for p in net.parameters():
        p.requires_grad_(False)
    return net
