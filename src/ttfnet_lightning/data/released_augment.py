"""The released TTFNet "aug 10x" augmentation, reproduced on this library's ``(image, target)`` samples.

The released code (github ZJULearning/ttfnet, mmdetection v1.0rc0, ``configs/ttfnet/ttfnet_*_aug_10x.py``)
trains with ``PhotoMetricDistortion(brightness_delta=32, contrast_range=(0.5, 1.5),
saturation_range=(0.5, 1.5), hue_delta=18)``, ``Expand(mean=img_norm_cfg.mean, to_rgb=True,
ratio_range=(1, 4))`` and ``MinIoURandomCrop(min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3)``
(``mmdet/datasets/pipelines/transforms.py``), then resizes to 512 x 512 and flips. Each class here is
one of them, drawing from torch's RNG (so ``exact_resume``'s per-sample seeds cover it):

* :class:`ReleasedPhotoMetricDistortion`: in float32, no clipping between steps, each step with
  probability 0.5: brightness ``+ U(-32, 32)``; contrast ``x U(0.5, 1.5)`` before or after the colour
  steps (one fair draw); conversion to HSV (OpenCV's float formulas, always done, even when neither
  colour step is drawn); saturation ``x U(0.5, 1.5)``; hue ``+ U(-18, 18)`` degrees, wrapped once into
  [0, 360]; back to RGB; a random channel permutation. A uint8 image is rounded and clipped to
  0-255 once, at the end (the released pipeline stays float up to its normalisation).
* :class:`ReleasedExpand`: with probability 0.5 the image is placed on a canvas ``U(1, 4)`` times
  its size filled with the mean pixel, at offset ``int(U(0, w * ratio - w))``.
* :class:`ReleasedMinIoURandomCrop`: see its docstring: a crop is kept only when *every* box overlaps
  it with IoU >= the drawn threshold.

Why torchvision's v2 transforms are not used for these (measured against torchvision 0.29's code):
``RandomPhotometricDistort`` multiplies the brightness, blends the contrast around the grey mean and
clamps uint8 after each step; ``RandomIoUCrop`` accepts a crop when *any* box whose centre lies in it
reaches the threshold, tries 40 crops per draw and has the extra thresholds 0 and 1 (no crop);
``RandomZoomOut`` draws the offset from the integer canvas (``int(w * r) - w``), the released code from
``w * r - w``, so :class:`ReleasedExpand` keeps its padding and box code and only replaces the draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

__all__ = [
    "RELEASED_MEAN",
    "ReleasedExpand",
    "ReleasedMinIoURandomCrop",
    "ReleasedPhotoMetricDistortion",
    "crop_keep",
    "hsv_to_rgb",
    "photometric_distort",
    "rgb_to_hsv",
]

#: ``img_norm_cfg.mean`` of the released configs (RGB, 0-255): the Expand canvas colour.
RELEASED_MEAN = (123.675, 116.28, 103.53)

_EPS = float(torch.finfo(torch.float32).eps)  # OpenCV's FLT_EPSILON
# OpenCV's HSV -> RGB: per hue sector, which of (v, p, q, t) is (r, g, b)
_SECTOR_RGB = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _coin() -> bool:
    return bool(torch.randint(2, ()).item())


def _uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(()).item())


# ------------------------------------------------------------------------------------- photometric
def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """OpenCV's float ``COLOR_BGR2HSV`` (what ``mmcv.bgr2hsv`` runs on the released float32 images) for
    (..., 3, H, W) RGB: H in degrees [0, 360), ``S = (max - min) / (|max| + eps)``, ``V = max``; values
    outside 0-255 are converted by the same formulas (e.g. a negative max gives S > 1)."""
    r, g, b = rgb.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = diff / (v.abs() + _EPS)
    k = 60.0 / (diff + _EPS)
    h = torch.where(v == r, (g - b) * k, torch.where(v == g, (b - r) * k + 120.0, (r - g) * k + 240.0))
    h = torch.where(h < 0, h + 360.0, h)
    return torch.stack([h, s, v], dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """OpenCV's float ``COLOR_HSV2BGR`` (``mmcv.hsv2bgr``), inverse of :func:`rgb_to_hsv`, for
    (..., 3, H, W) with H in degrees (taken modulo 360) -> RGB."""
    h, s, v = hsv.unbind(-3)
    h6 = torch.fmod(h * (6.0 / 360.0), 6.0)
    h6 = torch.where(h6 < 0, h6 + 6.0, h6)
    sector = torch.floor(h6)
    f = h6 - sector
    bad = (sector < 0) | (sector >= 6)  # h6 rounded up to 6.0
    sector, f = torch.where(bad, 0.0, sector).long(), torch.where(bad, 0.0, f)
    table = torch.stack([v, v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))])  # v, p, q, t
    index = _SECTOR_RGB.to(hsv.device)[sector].movedim(-1, 0)  # (3, ..., H, W): r, g, b
    rgb = torch.gather(table, 0, index).movedim(0, -3)
    return torch.where((s == 0).unsqueeze(-3), v.unsqueeze(-3), rgb)


def photometric_distort(
    image: Tensor,
    *,
    brightness: float | None = None,
    contrast: float | None = None,
    contrast_first: bool = True,
    saturation: float | None = None,
    hue: float | None = None,
    permutation: Sequence[int] | None = None,
) -> Tensor:
    """The released ``PhotoMetricDistortion`` on a float (..., 3, H, W) RGB image with its draws given
    (None: step not drawn), in the released order, nothing clipped: ``+ brightness``; ``x contrast``
    (here if ``contrast_first``); RGB -> HSV; ``S x saturation``; ``H + hue`` wrapped once into
    [0, 360]; HSV -> RGB; ``x contrast`` (here otherwise); channels reordered by ``permutation``."""
    img = image.to(torch.float32)
    if brightness is not None:
        img = img + brightness
    if contrast_first and contrast is not None:
        img = img * contrast
    h, s, v = rgb_to_hsv(img).unbind(-3)
    if saturation is not None:
        s = s * saturation
    if hue is not None:
        h = h + hue
        h = torch.where(h > 360.0, h - 360.0, h)
        h = torch.where(h < 0.0, h + 360.0, h)
    img = hsv_to_rgb(torch.stack([h, s, v], dim=-3))
    if not contrast_first and contrast is not None:
        img = img * contrast
    if permutation is not None:
        img = img[..., list(permutation), :, :]
    return img


class ReleasedPhotoMetricDistortion(v2.Transform):
    """The released ``PhotoMetricDistortion`` (see :func:`photometric_distort`), drawn like the released
    code: each step with probability 0.5, the contrast step before or after the colour steps with
    probability 0.5 (the released code does it first when its ``mode == 1``; its comment says the
    opposite); only ``tv_tensors.Image`` is changed. A float image stays float and unclipped; an
    integer one is rounded and clipped to its range once, at the end."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self,
        *,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
    ) -> None:
        super().__init__()
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = float(hue_delta)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """The random draws, in the released code's order (each ``None`` when its coin says no)."""
        p: dict[str, Any] = dict(brightness=None, contrast=None, saturation=None, hue=None, permutation=None)
        if _coin():
            p["brightness"] = _uniform(-self.brightness_delta, self.brightness_delta)
        p["contrast_first"] = _coin()
        if p["contrast_first"] and _coin():
            p["contrast"] = _uniform(*self.contrast_range)
        if _coin():
            p["saturation"] = _uniform(*self.saturation_range)
        if _coin():
            p["hue"] = _uniform(-self.hue_delta, self.hue_delta)
        if not p["contrast_first"] and _coin():
            p["contrast"] = _uniform(*self.contrast_range)
        if _coin():
            p["permutation"] = torch.randperm(3).tolist()
        return p

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = photometric_distort(inpt.as_subclass(Tensor), **params)
        if not inpt.is_floating_point():
            info = torch.iinfo(inpt.dtype)
            out = out.round().clamp(info.min, info.max)
        return tv_tensors.wrap(out.to(inpt.dtype), like=inpt)


# ------------------------------------------------------------------------------------------ expand
class ReleasedExpand(v2.RandomZoomOut):
    """The released ``Expand``: with probability ``p`` (0.5) a canvas ``int(h * r) x int(w * r)``,
    ``r ~ U(ratio_range)``, filled with ``mean`` (RGB; rounded for an integer image), the image at
    ``(int(U(0, w * r - w)), int(U(0, h * r - h)))``; boxes move with it. Padding and boxes are
    torchvision's ``RandomZoomOut``; only the draw is the released one."""

    def __init__(
        self, *, mean: Sequence[float] = RELEASED_MEAN, ratio_range: tuple[float, float] = (1.0, 4.0), p: float = 0.5
    ) -> None:
        self.mean = [float(m) for m in mean]
        super().__init__(fill={tv_tensors.Image: self.mean, "others": 0}, side_range=ratio_range, p=p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.side_range
        ratio = _uniform(lo, hi)
        canvas_w, canvas_h = int(w * ratio), int(h * ratio)
        left = min(int(_uniform(0.0, w * ratio - w)), canvas_w - w)
        top = min(int(_uniform(0.0, h * ratio - h)), canvas_h - h)
        return dict(padding=[left, top, canvas_w - w - left, canvas_h - h - top])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            fill = self.mean if inpt.is_floating_point() else [round(m) for m in self.mean]
            return v2.functional.pad(inpt, params["padding"], fill=fill)
        return super().transform(inpt, params)


# -------------------------------------------------------------------------------------------- crop
def crop_keep(patch: Sequence[int], boxes: Tensor, min_iou: float) -> Tensor | None:
    """The released crop rule: ``None`` (reject) unless *every* box (N, 4) xyxy has IoU >= ``min_iou``
    with ``patch`` (l, t, r, b) and at least one box centre lies strictly inside it; else the (N,) mask
    of the boxes to keep (centre strictly inside). With no boxes every patch is accepted (the released
    code filtered such images out of its training set; here the crop still happens)."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool)
    l, t, r, b = (float(x) for x in patch)
    xyxy = boxes.as_subclass(Tensor).to(torch.float32).reshape(-1, 4)
    ious = box_iou(torch.tensor([[l, t, r, b]]), xyxy)[0]
    if bool(ious.min() < min_iou):
        return None
    cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
    keep = (cx > l) & (cy > t) & (cx < r) & (cy < b)
    return keep if bool(keep.any()) else None


def _unpack(inputs: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    sample = inputs if len(inputs) > 1 else inputs[0]
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[1], dict)):
        raise TypeError("ReleasedMinIoURandomCrop takes an (image, target) sample whose target holds 'boxes'")
    return sample[0], sample[1]


class ReleasedMinIoURandomCrop(v2.Transform):
    """The released ``MinIoURandomCrop`` on an ``(image, target)`` sample (``target["boxes"]`` XYXY
    ``BoundingBoxes``, ``target["labels"]``).

    Draw one of ``(no crop, *min_ious, 0)`` uniformly; "no crop" returns the sample unchanged. Else try
    up to ``trials`` (50) crops of ``U(min_crop_size, 1)`` x each side (drawn independently; rejected
    unless height / width is in [0.5, 2]); the first one :func:`crop_keep` accepts (every box at IoU >=
    the threshold, one centre inside) is taken: boxes whose centre lies outside are dropped with their
    labels, the rest clipped to the crop; after ``trials`` failures a new threshold is drawn. The crop's
    corner is ``int(U(w - new_w, 1))``: the released code calls ``numpy.random.uniform(w - new_w)``, whose
    second bound defaults to 1, so a crop smaller than the image by a pixel or more never starts in the
    first row or column. IoU and centres are computed on this library's continuous boxes (the released
    ``bbox_overlaps`` adds 1 pixel to widths and heights of its inclusive-pixel boxes)."""

    def __init__(
        self, *, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size: float = 0.3, trials: int = 50
    ) -> None:
        super().__init__()
        self.modes: tuple[float | None, ...] = (None, *(float(m) for m in min_ious), 0.0)  # None: no crop
        self.min_crop_size = float(min_crop_size)
        self.trials = int(trials)

    def draw_mode(self) -> float | None:
        """The IoU threshold of this round, or None for "no crop"."""
        return self.modes[int(torch.randint(len(self.modes), ()).item())]

    def draw_patch(self, w: int, h: int) -> tuple[int, int, int, int] | None:
        """One trial crop (l, t, r, b) in pixels, or None when its aspect ratio is out of range."""
        new_w = _uniform(self.min_crop_size * w, w)
        new_h = _uniform(self.min_crop_size * h, h)
        if new_h / new_w < 0.5 or new_h / new_w > 2:
            return None
        left = _uniform(w - new_w, 1.0)  # numpy.random.uniform(w - new_w): from w - new_w to 1
        top = _uniform(h - new_h, 1.0)
        patch = (int(left), int(top), int(left + new_w), int(top + new_h))
        return patch if patch[2] > patch[0] and patch[3] > patch[1] else None  # empty only below 4 px

    def find_crop(self, boxes: Tensor, w: int, h: int) -> tuple[tuple[int, int, int, int], Tensor] | None:
        """The crop and the kept-box mask, or None for "no crop"."""
        while True:
            min_iou = self.draw_mode()
            if min_iou is None:
                return None
            for _ in range(self.trials):
                patch = self.draw_patch(w, h)
                keep = None if patch is None else crop_keep(patch, boxes, min_iou)
                if patch is not None and keep is not None:
                    return patch, keep

    def forward(self, *inputs: Any) -> Any:
        image, target = _unpack(inputs)
        boxes = target["boxes"]
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            raise ValueError(f"ReleasedMinIoURandomCrop needs XYXY boxes, got {boxes.format}")
        h, w = (int(s) for s in image.shape[-2:])
        found = self.find_crop(boxes, w, h)
        if found is None:
            return image, target
        (l, t, r, b), keep = found
        xyxy = boxes.as_subclass(Tensor)[keep].clone()
        xyxy[:, 2:] = torch.minimum(xyxy[:, 2:], xyxy.new_tensor([r, b]))
        xyxy[:, :2] = torch.maximum(xyxy[:, :2], xyxy.new_tensor([l, t]))
        xyxy -= xyxy.new_tensor([l, t, l, t])
        out = dict(target)
        out["boxes"] = tv_tensors.wrap(xyxy, like=boxes, canvas_size=(b - t, r - l))
        if "labels" in target:
            out["labels"] = target["labels"][keep]
        return tv_tensors.wrap(image[..., t:b, l:r], like=image), out
