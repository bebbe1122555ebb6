"""The released TTFNet augmentation (data/released_augment.py): the min-IoU crop's every-box rule,
the photometric arithmetic with its draws fixed, the expand canvas, and that schedule=10x trains with
it while schedule=fast trains unaugmented. Small tensors only: the file runs in seconds."""

from __future__ import annotations

import colorsys

import pytest
import torch
from hydra.utils import instantiate
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from conftest import compose
from ttfnet_lightning.data import ShapesDataModule, ShapesDataset, build_transforms
from ttfnet_lightning.data import released_augment as ra
from ttfnet_lightning.data.released_augment import (
    ReleasedExpand,
    ReleasedMinIoURandomCrop,
    ReleasedPhotoMetricDistortion,
    crop_keep,
    photometric_distort,
)
from ttfnet_lightning.data.transforms import IoUCropIfBoxes


def _sample(h: int = 80, w: int = 100, boxes=(), labels=(), dtype=torch.uint8):
    img = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w).remainder(251).to(dtype)
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "gt_boxes": b.clone(),
        "image_id": 3,
    }
    return tv_tensors.Image(img), target


def _torchvision_accepts(patch, boxes, min_iou: float) -> bool:
    """torchvision's RandomIoUCrop rule (v2/_geometry.py): some box with its centre in the crop has
    IoU >= min_iou."""
    l, t, r, b = patch
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (l < cx) & (cx < r) & (t < cy) & (cy < b)
    return bool(inside.any()) and bool(
        box_iou(boxes[inside], torch.tensor([[l, t, r, b]], dtype=boxes.dtype)).max() >= min_iou
    )


# ------------------------------------------------------------------------------------------- crop


def test_crop_needs_every_box_at_the_threshold():
    patch = (0, 0, 100, 100)
    big, small = [0.0, 0.0, 90.0, 90.0], [95.0, 95.0, 105.0, 105.0]  # IoU 0.81 and 0.0025 with the patch
    boxes = torch.tensor([big, small])
    assert _torchvision_accepts(patch, boxes, 0.5)  # the any-box rule takes this crop ...
    assert crop_keep(patch, boxes, 0.5) is None  # ... the released every-box rule does not
    assert crop_keep(patch, boxes[:1], 0.5).tolist() == [True]
    # threshold 0 (the released "0" mode): accepted; the small box's centre (100, 100) is not inside
    assert crop_keep(patch, boxes, 0.0).tolist() == [True, False]
    # every box at the threshold, but no centre strictly inside: rejected
    assert crop_keep((0, 0, 50, 50), torch.tensor([[50.0, 0.0, 100.0, 50.0]]), 0.0) is None
    assert crop_keep(patch, torch.zeros(0, 4), 0.9).tolist() == []  # no boxes: any crop


def _fixed(monkeypatch, crop, *, modes, patches):
    modes, patches, calls = list(modes), list(patches), []
    monkeypatch.setattr(crop, "draw_mode", lambda: modes.pop(0))

    def draw_patch(w, h):
        calls.append((w, h))
        return patches.pop(0) if patches else (0, 0, 1, 1)

    monkeypatch.setattr(crop, "draw_patch", draw_patch)
    return calls


def test_crop_drops_outside_centres_and_clips_the_rest(monkeypatch):
    img, t = _sample(boxes=[(20, 20, 50, 50), (60, 30, 90, 50), (0, 0, 30, 30)], labels=[1, 2, 3])
    crop = ReleasedMinIoURandomCrop()
    # (70, 60, 100, 80) misses the first box (IoU 0 < 0.05); (10, 10, 70, 60) passes (IoUs 0.3, 0.059,
    # 0.114); the second box's centre (75, 40) lies outside it, the third box sticks out at the top left
    calls = _fixed(monkeypatch, crop, modes=[0.05], patches=[(70, 60, 100, 80), (10, 10, 70, 60)])
    out_img, out = crop(img, t)
    assert len(calls) == 2 and calls[0] == (100, 80)
    assert torch.equal(out_img, img[:, 10:60, 10:70]) and isinstance(out_img, tv_tensors.Image)
    assert out["labels"].tolist() == [1, 3]
    assert out["boxes"].tolist() == [[10, 10, 40, 40], [0, 0, 20, 20]]
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and out["boxes"].canvas_size == (50, 60)
    assert torch.equal(out["gt_boxes"], t["gt_boxes"]) and out["image_id"] == 3  # evaluation keys untouched
    assert t["labels"].tolist() == [1, 2, 3] and len(t["boxes"]) == 3  # the input is not modified


def test_crop_no_crop_choice_and_redraw_after_failed_trials(monkeypatch):
    img, t = _sample(boxes=[(20, 20, 50, 50)], labels=[1])
    crop = ReleasedMinIoURandomCrop()
    _fixed(monkeypatch, crop, modes=[None], patches=[])
    out_img, out = crop(img, t)
    assert out_img is img and out is t
    # threshold 0.9 never met by the (0, 0, 1, 1) trials: 50 trials, then a new draw (no crop)
    calls = _fixed(monkeypatch, crop, modes=[0.9, None], patches=[])
    out_img, out = crop((img, t))
    assert len(calls) == 50 and out_img is img and out is t


def test_crop_without_boxes_still_crops():
    img, t = _sample(boxes=(), labels=())
    crop = ReleasedMinIoURandomCrop()
    torch.manual_seed(0)
    sizes = set()
    for _ in range(30):
        out_img, out = crop(img, t)
        sizes.add(tuple(out_img.shape[-2:]))
        assert out["boxes"].shape == (0, 4) and len(out["labels"]) == 0
        assert out["boxes"].canvas_size == tuple(out_img.shape[-2:])
    assert (80, 100) in sizes and len(sizes) > 5  # "no crop" and crops


def test_crop_draws_like_the_released_code():
    crop = ReleasedMinIoURandomCrop()
    torch.manual_seed(1)
    w, h = 100, 80
    patches = [p for p in (crop.draw_patch(w, h) for _ in range(3000)) if p is not None]
    assert 1000 < len(patches) < 3000  # some trials fail the aspect-ratio check
    for l, t, r, b in patches:
        assert 0 <= l < r <= w and 0 <= t < b <= h
        assert r - l >= int(0.3 * w) and b - t >= int(0.3 * h)
        assert 0.45 <= (b - t) / (r - l) <= 2.1
        # numpy.random.uniform(w - new_w) draws between w - new_w and 1: a corner in the first row or
        # column only for a crop within a pixel of the full side
        assert (l >= 1 or r == w) and (t >= 1 or b == h)
    modes = [crop.draw_mode() for _ in range(1400)]
    assert set(modes) == {None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0}
    assert all(150 < modes.count(m) < 250 for m in set(modes))  # uniform over 7


# ------------------------------------------------------------------------------------ photometric


def _colorsys_saturation_hue(rgb: torch.Tensor, saturation: float, hue: float) -> torch.Tensor:
    """Reference: per pixel with the standard library's HSV (the same formulas as OpenCV's float
    conversion for non-negative values), S x saturation, H + hue wrapped into [0, 360]."""
    out = torch.empty_like(rgb)
    for i in range(rgb.shape[1]):
        for j in range(rgb.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*rgb[:, i, j].tolist())
            h = h * 360 + hue
            h = h - 360 if h > 360 else h + 360 if h < 0 else h
            out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb(h / 360, s * saturation, v))
    return out


def test_photometric_steps_in_float_without_clipping():
    x = torch.tensor([[[250.0, 10.0], [128.0, 0.0]], [[30.0, 200.0], [128.0, 64.0]], [[5.0, 90.0], [17.0, 255.0]]])
    close = lambda a, b: torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # noqa: E731
    close(photometric_distort(x, brightness=20.5), x + 20.5)  # adds; 270.5 kept
    close(photometric_distort(x, contrast=1.5), x * 1.5)  # multiplies (not around the mean)
    close(photometric_distort(x, contrast=0.5, contrast_first=False), x * 0.5)
    close(photometric_distort(x, permutation=[2, 0, 1]), x[[2, 0, 1]])
    close(photometric_distort(x, saturation=1.4, hue=-17.3), _colorsys_saturation_hue(x, 1.4, -17.3))
    close(photometric_distort(x, saturation=0.6, hue=12.0), _colorsys_saturation_hue(x, 0.6, 12.0))
    # the steps chained, nothing clipped in between: saturation 1.5 drives channels below 0
    want = _colorsys_saturation_hue(x + 20.5, 1.5, 18.0) * 1.25
    got = photometric_distort(x, brightness=20.5, contrast=1.25, contrast_first=False, saturation=1.5, hue=18.0)
    close(got, want)
    assert got.min() < 0 and got.max() > 255 and got.dtype == torch.float32


def test_photometric_hsv_of_negative_values_is_opencvs():
    # brightness -15 on (5, 0, 0) gives (-10, -15, -15); OpenCV's float HSV (checked against
    # cv2.cvtColor, opencv 5.1) maps it to S = diff / |V| = 0.5 and back to (-10, -5, -5), as in the
    # released code, which converts to HSV whether or not a colour step was drawn
    x = torch.tensor([5.0, 0.0, 0.0]).reshape(3, 1, 1)
    torch.testing.assert_close(photometric_distort(x, brightness=-15.0).flatten(), torch.tensor([-10.0, -5.0, -5.0]))


def test_photometric_transform_converts_back_once(monkeypatch):
    img, t = _sample(h=2, w=2, boxes=[(0, 0, 1, 1)], labels=[0])
    img = tv_tensors.Image(torch.tensor([[[250, 3], [100, 0]]] * 3, dtype=torch.uint8))
    tr = ReleasedPhotoMetricDistortion()
    monkeypatch.setattr(tr, "make_params", lambda flat: dict(brightness=10.6, contrast=None, saturation=None))
    out_img, out = tr(img, t)
    assert isinstance(out_img, tv_tensors.Image) and out_img.dtype == torch.uint8
    assert out_img[0].tolist() == [[255, 14], [111, 11]]  # rounded, clipped to 0-255 at the end
    assert out["boxes"] is t["boxes"] and out["labels"] is t["labels"]
    monkeypatch.setattr(tr, "make_params", lambda flat: dict(brightness=-10.0, contrast=2.0))
    assert tr(img)[0].tolist() == [[255, 0], [180, 0]]  # (3 - 10) x 2 = -14 -> 0; 240 x 2 -> 255
    f = tr(tv_tensors.Image(img.float()))
    assert f.dtype == torch.float32 and f[0].tolist() == [[480.0, -14.0], [180.0, -20.0]]  # float: unclipped


def test_photometric_draws():
    tr = ReleasedPhotoMetricDistortion()
    torch.manual_seed(0)
    draws = [tr.make_params([]) for _ in range(2000)]
    for key in ("brightness", "saturation", "hue", "permutation"):
        assert 900 < sum(d[key] is not None for d in draws) < 1100  # each step with probability 0.5
    assert 900 < sum(d["contrast_first"] for d in draws) < 1100
    assert 900 < sum(d["contrast"] is not None for d in draws) < 1100
    assert all(-32 <= d["brightness"] <= 32 for d in draws if d["brightness"] is not None)
    assert all(0.5 <= d["contrast"] <= 1.5 for d in draws if d["contrast"] is not None)
    assert all(-18 <= d["hue"] <= 18 for d in draws if d["hue"] is not None)
    assert all(sorted(d["permutation"]) == [0, 1, 2] for d in draws if d["permutation"] is not None)


# ----------------------------------------------------------------------------------------- expand


def test_expand_canvas_offset_and_fill(monkeypatch):
    u = iter([0.5, 0.5, 0.25])  # ratio 1 + 3 x 0.5 = 2.5; left 0.5 x (60 x 2.5 - 60); top 0.25 x 60
    monkeypatch.setattr(ra, "_uniform", lambda lo, hi: lo + (hi - lo) * next(u))
    img, t = _sample(h=40, w=60, boxes=[(10, 5, 30, 25)], labels=[4])
    out_img, out = ReleasedExpand(p=1.0)(img, t)
    assert out_img.shape == (3, 100, 150) and out_img.dtype == torch.uint8
    assert torch.equal(out_img[:, 15:55, 45:105], img)
    assert out_img[:, 0, 0].tolist() == [124, 116, 104] and out_img[:, 99, 149].tolist() == [124, 116, 104]
    assert out["boxes"].tolist() == [[55, 20, 75, 40]] and out["boxes"].canvas_size == (100, 150)
    assert out["labels"].tolist() == [4] and torch.equal(out["gt_boxes"], t["gt_boxes"])
    u = iter([0.0, 0.0, 0.0])
    fimg = tv_tensors.Image(img.float())
    f = ReleasedExpand(p=1.0)(fimg, t)[0]
    assert f.shape == (3, 40, 60) and torch.equal(f, fimg)  # ratio 1: the image itself
    u = iter([1 / 3, 1.0, 1.0])  # ratio 2: offsets at the far end, float canvas = the exact mean
    f = ReleasedExpand(p=1.0)(fimg, t)[0]
    assert f.shape == (3, 80, 120) and torch.equal(f[:, 40:, 60:], fimg)
    torch.testing.assert_close(f[:, 0, 0], torch.tensor(ra.RELEASED_MEAN))


def test_expand_probability():
    img, t = _sample(h=8, w=8)
    torch.manual_seed(0)
    grown = sum(ReleasedExpand()(img, t)[0].shape[-1] > 8 for _ in range(400))
    assert 160 < grown < 240  # p = 0.5 (a ratio under 1.125 keeps 8 px: rare)


# ------------------------------------------------------------------------------- wiring and pipeline


def _train_ops(overrides: list[str]) -> tuple[dict, list]:
    cfg = compose("train", ["data.datamodule.num_workers=0", "data.datamodule.input_size=[64,64]", *overrides])
    dm = instantiate(cfg.data.datamodule, _convert_="all")
    return cfg.data.datamodule, [type(op) for op in dm.train_transforms().transforms]


def test_released_style_is_the_10x_default_and_fast_is_unaugmented():
    dm_cfg, ops = _train_ops(["schedule=10x"])
    assert dm_cfg.augment is True and dm_cfg.augment_style == "released"
    assert ops[:3] == [ReleasedPhotoMetricDistortion, ReleasedExpand, ReleasedMinIoURandomCrop]
    assert v2.RandomIoUCrop not in ops and v2.RandomPhotometricDistort not in ops
    dm_cfg, ops = _train_ops(["schedule=fast"])
    assert dm_cfg.augment is False
    assert ops == [v2.Resize, v2.RandomHorizontalFlip, v2.ClampBoundingBoxes, v2.SanitizeBoundingBoxes]
    _, ops = _train_ops(["schedule=10x", "data.datamodule.augment_style=torchvision"])
    assert ops[:3] == [v2.RandomPhotometricDistort, v2.RandomZoomOut, IoUCropIfBoxes]
    with pytest.raises(ValueError, match="augment_style"):
        ShapesDataModule(augment_style="mmdet", num_workers=0)


def test_released_pipeline_keeps_valid_boxes():
    ds = ShapesDataset(num_images=6, image_size=(96, 96), seed=5)
    tr = build_transforms(input_size=(64, 64), train=True, augment=True)
    torch.manual_seed(0)
    dropped = 0
    for i in range(6):
        img, t = ds[i]
        for _ in range(4):
            oi, ot = tr(img, dict(t))
            b = ot["boxes"]
            assert oi.shape == (3, 64, 64) and oi.dtype == torch.uint8 and len(b) == len(ot["labels"])
            assert (b >= 0).all() and (b <= 64).all() and ((b[:, 2:] - b[:, :2]) >= 1).all()
            assert torch.equal(ot["gt_boxes"], t["gt_boxes"])
            dropped += len(b) < len(t["boxes"])
    assert dropped > 0
