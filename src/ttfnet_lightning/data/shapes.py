"""Built-in procedural detection data: coloured geometric shapes on cluttered backgrounds.

Generated on the fly (no files), deterministic per index: sample ``i`` of a data set with seed
``s`` is rendered from ``numpy.random.default_rng((s, i))``, so it is the same image and boxes in
every epoch, every worker process and every run. Rendering a 128 x 128 sample takes ~1-2 ms.

What an image holds:

* background: a smooth random colour field (a 2-4 x 2-4 grid of colours, bilinearly upsampled),
  soft low-contrast blobs, thin random lines and arcs (distractors), and Gaussian pixel noise;
* 1-10 objects, one class per shape (``circle``, ``square``, ``triangle``, ``star``, ``cross`` by
  default; ``ring`` and ``diamond`` are available): the classes differ by shape, never only by
  colour. Colours are random but contrast with what lies under the object (luminance difference
  >= 60 on almost all of its pixels). Sizes are log-uniform between ``min_size`` and ``max_size``
  of the image side (at least 8 px), aspect ratios log-uniform in [0.5, 2] (the shape is
  stretched), triangles and stars randomly rotated;
* overlap is limited: boxes overlap with IoU <= ``max_iou`` and an object is never more than
  ``max_occlusion`` hidden by later (smaller: objects are drawn largest first) ones;
* boxes are the tight xyxy boxes of each drawn shape's pixels (pixel-edge convention: a shape
  covering pixel columns 3..9 has x1 = 3, x2 = 10), in image pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ttfnet_lightning.data.sample import check_index, detection_sample
from ttfnet_lightning.data.transforms import as_size

__all__ = ["ShapesDataset", "render_shapes", "SHAPE_KINDS", "DEFAULT_SHAPE_CLASSES"]

#: Every shape the renderer can draw.
SHAPE_KINDS = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
#: The default class list (C = 5).
DEFAULT_SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")

MIN_SIDE_PX = 8  # smallest object side in pixels
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MIN_CONTRAST = 60.0  # luminance difference object vs. what it covers


def _unit_polygon(points: np.ndarray, w: int, h: int) -> list[tuple[float, float]]:
    """Scale (K, 2) points so their bounding box fills the pixel grid of a w x h mask."""
    lo, hi = points.min(0), points.max(0)
    p = (points - lo) / np.maximum(hi - lo, 1e-6) * np.array([w - 1, h - 1], dtype=np.float64)
    return [(float(x), float(y)) for x, y in p]


def _draw_mask(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool mask of one shape stretched to a w x h box."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    if kind == "circle":
        d.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif kind == "square":
        d.rectangle((0, 0, w - 1, h - 1), fill=255)
    elif kind == "ring":
        d.ellipse((0, 0, w - 1, h - 1), fill=255)
        t = max(2.0, rng.uniform(0.18, 0.28) * min(w, h))
        if w - 1 - 2 * t > 1 and h - 1 - 2 * t > 1:
            d.ellipse((t, t, w - 1 - t, h - 1 - t), fill=0)
    elif kind == "cross":
        t = rng.uniform(0.28, 0.4)
        tw, th = max(2.0, t * w), max(2.0, t * h)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        d.rectangle((0, cy - th / 2, w - 1, cy + th / 2), fill=255)
        d.rectangle((cx - tw / 2, 0, cx + tw / 2, h - 1), fill=255)
    elif kind == "diamond":
        d.polygon([((w - 1) / 2, 0), (w - 1, (h - 1) / 2), ((w - 1) / 2, h - 1), (0, (h - 1) / 2)], fill=255)
    elif kind in ("triangle", "star"):
        theta = rng.uniform(0, 2 * math.pi)
        if kind == "triangle":
            ang = theta + np.arange(3) * (2 * math.pi / 3)
            pts = np.stack([np.cos(ang), np.sin(ang)], 1)
        else:
            ang = theta + np.arange(10) * (math.pi / 5)
            r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
            pts = np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
        d.polygon(_unit_polygon(pts, w, h), fill=255)
    else:  # pragma: no cover - validated by the caller
        raise ValueError(f"unknown shape {kind!r}")
    return np.asarray(img) > 0


def _pick_colour(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 colour whose luminance differs by >= _MIN_CONTRAST from >= 90 % of the
    (K, 3) pixels ``under`` it (random; black or white as a fallback)."""
    if len(under) > 256:
        under = under[rng.integers(0, len(under), 256)]
    y_under = under.astype(np.float32) @ _LUMA
    for _ in range(12):
        c = rng.integers(0, 256, 3)
        if np.mean(np.abs(y_under - float(c @ _LUMA)) >= _MIN_CONTRAST) >= 0.9:
            return c.astype(np.uint8)
    dark = np.mean(y_under) > 127.5
    return np.full(3, 0 if dark else 255, dtype=np.uint8)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 cluttered background: colour field, soft blobs, thin lines and arcs."""
    base = rng.uniform(40, 215, 3)
    gh, gw = rng.integers(2, 5, 2)
    grid = np.clip(base + rng.uniform(-50, 50, (gh, gw, 3)), 20, 235).astype(np.uint8)
    small_w, small_h = max(4, w // 4), max(4, h // 4)
    small = Image.fromarray(grid, "RGB").resize((small_w, small_h), Image.BILINEAR)
    d = ImageDraw.Draw(small)
    for _ in range(rng.integers(0, 5)):  # soft low-contrast blobs
        cx, cy = rng.uniform(0, small_w), rng.uniform(0, small_h)
        rx, ry = rng.uniform(1, small_w / 3), rng.uniform(1, small_h / 3)
        col = tuple(int(v) for v in np.clip(base + rng.uniform(-45, 45, 3), 0, 255))
        d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=col)
    img = small.resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 7)):  # thin lines
        x = rng.uniform(-0.2, 1.2, 2) * w
        y = rng.uniform(-0.2, 1.2, 2) * h
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        d.line((x[0], y[0], x[1], y[1]), fill=col, width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 3)):  # open arcs
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.1, 0.5) * min(w, h)
        start = rng.uniform(0, 360)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        d.arc((cx - r, cy - r, cx + r, cy + r), start, start + rng.uniform(60, 240), fill=col, width=1)
    return np.array(img)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with (K, 4) boxes -> (K,)."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


@dataclass
class _Scene:
    """The image being rendered: its canvas, which object owns each pixel, and the objects placed so
    far (placement boxes for the IoU limit, tight boxes, labels, full and still-visible pixel counts)."""

    canvas: np.ndarray
    owner: np.ndarray
    placed: list[np.ndarray] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    full: list[int] = field(default_factory=list)
    visible: list[int] = field(default_factory=list)

    def place(
        self,
        name: str,
        label: int,
        s: float,
        rng: np.random.Generator,
        *,
        tries: int,
        max_iou: float,
        max_occlusion: float,
    ) -> None:
        """Draw one object of size ``s`` (shrunk by 10 % after each rejected try) where it overlaps no
        placed box by more than ``max_iou`` and hides no object beyond ``max_occlusion``; after
        ``tries`` rejections it is left out."""
        h, w = self.owner.shape
        for _ in range(tries):
            a = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            bw = int(min(w, max(MIN_SIDE_PX, round(s * math.sqrt(a)))))
            bh = int(min(h, max(MIN_SIDE_PX, round(s / math.sqrt(a)))))
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = np.array([x0, y0, x0 + bw, y0 + bh], dtype=np.float64)
            if self.placed and _iou(box, np.stack(self.placed)).max() > max_iou:
                s = max(MIN_SIDE_PX, s * 0.9)
                continue
            mask = _draw_mask(name, bw, bh, rng)
            region = self.owner[y0 : y0 + bh, x0 : x0 + bw]
            hidden = region[mask]
            hidden = hidden[hidden >= 0]
            if hidden.size:
                lost = np.bincount(hidden, minlength=len(self.full))
                if np.any(np.asarray(self.visible) - lost < (1.0 - max_occlusion) * np.asarray(self.full)):
                    s = max(MIN_SIDE_PX, s * 0.9)
                    continue
            else:
                lost = np.zeros(len(self.full), dtype=np.int64)
            self._paint(mask, region, lost, x0, y0, rng)
            self.labels.append(label)
            self.placed.append(box)
            return

    def _paint(
        self, mask: np.ndarray, region: np.ndarray, lost: np.ndarray, x0: int, y0: int, rng: np.random.Generator
    ) -> None:
        """Colour the object's pixels, take them over in ``owner`` and record its tight box."""
        bh, bw = mask.shape
        patch = self.canvas[y0 : y0 + bh, x0 : x0 + bw]
        patch[mask] = _pick_colour(patch[mask], rng)
        region[mask] = len(self.full)
        for j in np.nonzero(lost)[0]:
            self.visible[j] -= int(lost[j])
        npix = int(mask.sum())
        self.full.append(npix)
        self.visible.append(npix)
        cols, rows = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
        self.boxes.append([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1])


def render_shapes(
    rng: np.random.Generator,
    *,
    image_size: tuple[int, int] = (128, 128),
    classes: Sequence[str] = DEFAULT_SHAPE_CLASSES,
    min_objects: int = 1,
    max_objects: int = 10,
    min_size: float = 0.06,
    max_size: float = 0.7,
    max_iou: float = 0.3,
    max_occlusion: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image with shapes.

    Args:
        rng: the random generator (all randomness comes from it).
        image_size: (H, W).
        classes: C shape names from :data:`SHAPE_KINDS`; label ``k`` is ``classes[k]``.
        min_objects, max_objects: number of objects, uniform in the closed range (fewer only if
            an object cannot be placed under the overlap limits in many tries, which is rare).
        min_size, max_size: object size sqrt(w * h) as a fraction of min(H, W), log-uniform.
        max_iou: largest IoU between two object boxes.
        max_occlusion: largest hidden fraction of an object's pixels.
    Returns:
        image (H, W, 3) uint8 RGB, boxes (M, 4) float32 xyxy pixels, labels (M,) int64.
    """
    h, w = image_size
    canvas = _background(h, w, rng)
    owner = np.full((h, w), -1, dtype=np.int16)  # index of the object owning each pixel
    side = min(h, w)
    n = int(rng.integers(min_objects, max_objects + 1))
    lo, hi = math.log(max(min_size * side, 1.0)), math.log(max(max_size * side, 1.0))
    sizes = np.sort(np.exp(rng.uniform(lo, hi, n)))[::-1]  # largest first: small ones on top
    kinds = rng.integers(0, len(classes), n)

    scene = _Scene(canvas=canvas, owner=owner)
    for k in range(n):
        scene.place(
            classes[kinds[k]],
            int(kinds[k]),
            float(sizes[k]),
            rng,
            tries=60 if k < min_objects else 20,
            max_iou=max_iou,
            max_occlusion=max_occlusion,
        )
    boxes, labels = scene.boxes, scene.labels

    sigma = rng.uniform(2.0, 10.0)
    noisy = canvas.astype(np.float32) + rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    image = np.clip(noisy, 0, 255).astype(np.uint8)
    return (
        image,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


class ShapesDataset(Dataset):
    """Procedural shapes detection data set (the project's default data, ``data=shapes``).

    ``dataset[i]`` -> ``(image, target)``: image ``tv_tensors.Image`` uint8 (3, H, W) after
    ``transforms``; target ``boxes`` ``BoundingBoxes`` xyxy float32 (M, 4) in transformed-image
    pixels, ``labels`` int64 (M,) in [0, C), ``image_id`` = i, ``orig_size`` = image_size,
    ``gt_boxes`` float32 (M, 4) / ``gt_labels`` int64 (M,) / ``gt_iscrowd`` int64 zeros (M,) in
    generated-image pixels.

    Args:
        num_images: data set length.
        image_size: (H, W) of the generated images.
        seed: stream seed; sample i is drawn from ``numpy.random.default_rng((seed, i))``.
        min_objects, max_objects: objects per image (closed range).
        min_size, max_size: object size as a fraction of the image side (log-uniform).
        classes: shape names (subset of :data:`SHAPE_KINDS`), label k = ``classes[k]``.
        transforms: callable ``(image, target) -> (image, target)`` (see ``build_transforms``).
        max_iou, max_occlusion: overlap limits (see :func:`render_shapes`).
        cache_mb: keep rendered samples (before ``transforms``) in memory up to this many MiB of
            images per process, so later epochs do not render again (a sample is the same every
            epoch: it depends only on ``(seed, i)``); 0: render every time. 128 px: 48 KiB a sample.
    """

    def __init__(
        self,
        *,
        num_images: int,
        image_size: int | Sequence[int] = (128, 128),
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 10,
        min_size: float = 0.06,
        max_size: float = 0.7,
        classes: Sequence[str] = DEFAULT_SHAPE_CLASSES,
        transforms: Callable[..., Any] | None = None,
        max_iou: float = 0.3,
        max_occlusion: float = 0.3,
        cache_mb: float = 0.0,
    ) -> None:
        self.num_images = int(num_images)
        self.image_size = as_size(image_size, name="image_size")
        self.seed = int(seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.classes = tuple(str(c) for c in classes)
        self.transforms = transforms
        self.max_iou, self.max_occlusion = float(max_iou), float(max_occlusion)
        if self.num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_bytes = int(float(cache_mb) * 2**20)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        unknown = [c for c in self.classes if c not in SHAPE_KINDS]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct names from {SHAPE_KINDS}, got {list(classes)}")

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Untransformed sample ``index``: image (H, W, 3) uint8, boxes (M, 4), labels (M,); from the
        cache when it holds it (``cache_mb``; the cached arrays are shared: ``__getitem__`` copies them)."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        sample = self._render(index)
        size = sum(a.nbytes for a in sample)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = sample
            self._cached_bytes += size
        return sample

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return render_shapes(
            np.random.default_rng((self.seed, index)),
            image_size=self.image_size,
            classes=self.classes,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            min_size=self.min_size,
            max_size=self.max_size,
            max_iou=self.max_iou,
            max_occlusion=self.max_occlusion,
        )

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        index = check_index(index, self.num_images)
        img, boxes, labels = self.render(index)
        return detection_sample(
            # copies (permute + contiguous; tensor()): a transform never writes into a cached sample
            tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1).contiguous()),
            gt_boxes=torch.tensor(boxes),
            gt_labels=torch.tensor(labels),
            gt_iscrowd=torch.zeros(len(labels), dtype=torch.int64),
            image_id=index,
            transforms=self.transforms,
        )
