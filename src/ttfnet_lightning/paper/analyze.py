"""Ambiguous regression samples in a training set (the "Ratio" column of the paper's Tables 2, 3).

The ratio is a property of the target encoder and the annotations only, so it is computed exactly,
without training, from the boxes the training targets are built from.

Definition (the one used throughout):

* the output map is the encoder's, ``input_size / 4`` (stride 4) at the training input size
  ``data.datamodule.input_size``;
* a **regression sample** is a pixel of an image's output map that lies in the regression area of
  at least one of the image's boxes (the same areas as :func:`~ttfnet_lightning.core.targets.encode_targets`
  draws, counted by :func:`~ttfnet_lightning.core.targets.regression_coverage`);
* a sample is **ambiguous** when the regression areas of two or more boxes cover that pixel;
* class-aware regression (``kernel.class_aware``) has one regression channel per class: only boxes
  of the same class conflict, and a pixel counts once per class channel in which it is a sample
  (ambiguous when two or more boxes of that class cover it);
* ratio = (ambiguous samples) / (regression samples) over the whole training split, in percent.

Why pixels: a sample is what the encoder produces, one regression target per pixel (and class
channel), the smallest covering box owning an ambiguous one. The alternative, "share of (box, pixel)
pairs lying on a pixel covered by two or more boxes", counts an ambiguous pixel once per box
covering it, so it is about twice this ratio; the pixel count is the one of the paper's magnitude.
The ratios measured on coco-mini beside the paper's Tables 2 and 3, and the command that
regenerates them: ``docs/tables.md``, "Ratio of ambiguous samples on real COCO annotations".

Which boxes: the training split of ``cfg.data`` as the DataModule builds it (same image list,
crowd / difficult / degenerate boxes dropped as the data sets do), scaled to the input size without
keeping the aspect ratio and clamped / sanitised by the training transforms, with no augmentation
(no random flip, no SSD augmentations). COCO and VOC images are never decoded: boxes come from
the annotation JSON / XML with the image sizes written there (a VOC XML without a ``<size>`` falls
back to the image file's header); the shapes generator renders its images (that is how its boxes
are made; ~1 ms each).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ttfnet_lightning.core.models import TTFNet
from ttfnet_lightning.core.targets import regression_coverage
from ttfnet_lightning.data import CocoDetection, ShapesDataset, VocDetection, build_transforms
from ttfnet_lightning.data.voc import parse_voc_xml

__all__ = ["ambiguity_counts", "ambiguity_ratio", "ambiguity_stats", "analyze", "training_boxes"]

IMAGES_PER_CALL = 64  # images per encoder call
_MAX_COUNT_ELEMENTS = 1 << 24  # bound on rows * h * w of one coverage call (memory only)
_CACHE_VERSION = 1  # bump when the definition or the box pipeline changes
# data-module arguments that change how data is loaded, never which boxes the training set has
_LOADER_ONLY = (
    "batch_size",
    "num_workers",
    "augment",
    # the bad-image policy and the pre-flight check do not change the training boxes
    "skip_bad_images",
    "max_bad_images",
    "substitute_bad_images",
    "preflight",
    "preflight_workers",
    "check_cache_dir",
)


def ambiguity_counts(
    boxes: Tensor, labels: Tensor, *, num_classes: int, output_size: tuple[int, int], **kernel: Any
) -> tuple[int, int]:
    """Ambiguous and total regression samples of a padded batch (see the module docstring).

    Args:
        boxes: (B, M, 4) float xyxy boxes in input pixels.
        labels: (B, M) int64 class indices in [0, C); -1 marks padding.
        num_classes: C.
        output_size: (h, w) of the output map.
        **kernel: encoder options (a kernel config: alpha, beta, wh_gaussian, aspect_ratio,
            class_aware, ...; stride defaults to 4), see :func:`regression_coverage`.
    Returns:
        (ambiguous, total): samples covered by >= 2 boxes, and by >= 1 box (per class channel
        when class-aware), summed over the batch.
    """
    kernel = dict(kernel)
    if kernel.pop("class_aware", False):
        # class channel c of image b = an image holding only b's boxes of class c: the same counts
        # as regression_coverage(class_aware=True), without its (B, C, h, w) tensor of mostly zeros
        boxes, labels = _class_rows(boxes, labels, int(num_classes))
        num_classes = 1
    step = max(1, _MAX_COUNT_ELEMENTS // (int(output_size[0]) * int(output_size[1])))
    ambiguous = total = 0
    for s in range(0, labels.shape[0], step):
        cover = regression_coverage(
            boxes[s : s + step], labels[s : s + step], num_classes=num_classes, output_size=output_size, **kernel
        )
        ambiguous += int((cover >= 2).sum())
        total += int((cover >= 1).sum())
    return ambiguous, total


def _class_rows(boxes: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """One padded row per (image, class) present in the batch, holding that image's boxes of that
    class with label 0: (R, M', 4) boxes and (R, M') labels (-1 = padding)."""
    valid = (labels >= 0) & (labels < num_classes)
    image = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
    keys = (image * num_classes + labels)[valid]
    if keys.numel() == 0:
        return boxes.new_zeros(0, 1, 4), labels.new_full((0, 1), -1)
    _, row, count = torch.unique(keys, return_inverse=True, return_counts=True)
    order = torch.argsort(row, stable=True)
    row = row[order]
    slot = torch.arange(len(row), device=row.device) - (torch.cumsum(count, 0) - count)[row]
    out_boxes = boxes.new_zeros(len(count), int(count.max()), 4)
    out_labels = labels.new_full((len(count), int(count.max())), -1)
    out_boxes[row, slot] = boxes[valid][order]
    out_labels[row, slot] = 0
    return out_boxes, out_labels


def _raw_annotations(dataset: Any) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Per training image: the boxes the training sample starts from (float32 (N, 4) xyxy original
    pixels, crowd / difficult / degenerate ones dropped as ``__getitem__`` does), their labels
    (N,) and the original image size (h, w), without decoding any image."""
    if isinstance(dataset, ShapesDataset):
        for i in range(len(dataset)):
            _, boxes, labels = dataset.render(i)
            yield boxes, labels, dataset.image_size
    elif isinstance(dataset, CocoDetection):
        for i in range(len(dataset)):
            ann = dataset.annotations(i)
            keep = ann["iscrowd"] == 0
            yield ann["boxes"][keep], ann["labels"][keep], dataset.orig_sizes[i]
    elif isinstance(dataset, VocDetection):
        for i, name in enumerate(dataset.image_names):
            size = parse_voc_xml(dataset.root / "Annotations" / f"{name}.xml", default_filename=f"{name}.jpg").size
            if size is None:
                with Image.open(dataset.image_path(i)) as im:  # reads the header only
                    size = (im.height, im.width)
            h, w = size
            ann = dataset.annotations(i)
            boxes = np.minimum(ann["boxes"], np.array([w, h, w, h], dtype=np.float32))
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & ~ann["difficult"]
            yield boxes[keep], ann["labels"][keep], (h, w)
    else:
        raise TypeError(f"no annotation reader for {type(dataset).__name__}: expected shapes, COCO or VOC data")


def training_boxes(dm: Any) -> Iterator[tuple[Tensor, Tensor]]:
    """Per image of ``dm``'s training split (``setup("fit")`` first): the training boxes
    (float32 (N, 4) xyxy input pixels) and labels (N,) as the training transforms leave them with
    augmentation and flipping off (resize without keeping the aspect ratio, clamp, drop boxes under
    1 px). The transforms act on the boxes alone: no image is decoded or resized."""
    ops = build_transforms(input_size=dm.input_size, train=True, augment=False, hflip=0.0).transforms
    for boxes, labels, orig_size in _raw_annotations(dm.train_dataset):
        sample = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=tuple(orig_size)
            ),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        }
        for op in ops:
            if isinstance(op, v2.SanitizeBoundingBoxes):  # drops labels with their boxes
                sample = op(sample)
            else:  # geometric: moves the boxes (a lone BoundingBoxes carries its canvas size)
                sample["boxes"] = op(sample["boxes"])
        yield sample["boxes"].as_subclass(Tensor), sample["labels"]


def _pad(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(B, M, 4) boxes zero-padded and (B, M) labels padded with -1."""
    m = max(1, max(len(b) for b, _ in items))
    boxes = torch.zeros(len(items), m, 4)
    labels = torch.full((len(items), m), -1, dtype=torch.int64)
    for i, (b, lab) in enumerate(items):
        boxes[i, : len(b)] = b
        labels[i, : len(lab)] = lab
    return boxes, labels


def _kernel(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.kernel, resolve=True)  # type: ignore[return-value]


def _cache_key(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    data = OmegaConf.to_container(cfg.data.datamodule, resolve=True)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if k not in _LOADER_ONLY}
    kernel = {k: v for k, v in _kernel(cfg).items() if k != "name"}
    what = {"version": _CACHE_VERSION, "data": data, "kernel": kernel}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20], what


def ambiguity_stats(cfg: DictConfig, *, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything :func:`ambiguity_ratio` measures: ``ratio`` (percent), ``ambiguous`` and
    ``samples`` counts, ``images``, ``boxes``, ``data`` (name), ``input_size``, ``output_size``,
    ``num_classes``, ``kernel``, ``seconds`` (of the computation; a cached result keeps it) and
    ``cached`` (True when read from ``cache_dir``)."""
    key, what = _cache_key(cfg)
    cache_file = Path(cache_dir) / f"ambiguity-{key}.json" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        stats = json.loads(cache_file.read_text(encoding="utf-8"))
        if stats.get("config") == json.loads(json.dumps(what, sort_keys=True, default=str)):
            return dict(stats, cached=True)

    t0 = time.perf_counter()
    kernel = _kernel(cfg)
    dm = instantiate(cfg.data.datamodule, _convert_="all")
    dm.setup("fit")
    H, W = dm.input_size
    stride = int(kernel.pop("stride", TTFNet.stride))
    output_size = (H // stride, W // stride)
    images = boxes = ambiguous = samples = 0
    pending: list[tuple[Tensor, Tensor]] = []

    def flush() -> None:
        nonlocal ambiguous, samples
        b, lab = _pad(pending)
        a, t = ambiguity_counts(b, lab, num_classes=dm.num_classes, output_size=output_size, stride=stride, **kernel)
        ambiguous, samples = ambiguous + a, samples + t
        pending.clear()

    for item in training_boxes(dm):
        pending.append(item)
        images += 1
        boxes += len(item[0])
        if len(pending) == IMAGES_PER_CALL:
            flush()
    if pending:
        flush()
    stats = {
        "ratio": 100.0 * ambiguous / samples if samples else 0.0,
        "ambiguous": ambiguous,
        "samples": samples,
        "images": images,
        "boxes": boxes,
        "data": str(cfg.data.get("name", type(dm).__name__)),
        "num_classes": int(dm.num_classes),
        "input_size": [int(H), int(W)],
        "output_size": list(output_size),
        "kernel": _kernel(cfg),
        "seconds": round(time.perf_counter() - t0, 3),
        "config": json.loads(json.dumps(what, sort_keys=True, default=str)),
    }
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(cache_file)
    return dict(stats, cached=False)


def ambiguity_ratio(cfg: DictConfig, *, cache_dir: str | Path | None = None) -> float:
    """Percentage of ambiguous regression samples in the training split of ``cfg.data`` with the
    target encoder ``cfg.kernel`` (definition: module docstring).

    Args:
        cfg: a composed train config (``data``, ``kernel``).
        cache_dir: when given, results are cached there as JSON, keyed by a hash of the data
            module's arguments (loader-only ones excepted) and the kernel options.
    """
    return float(ambiguity_stats(cfg, cache_dir=cache_dir)["ratio"])


def analyze(cfg: DictConfig) -> float:
    """Measure and print the ambiguity ratio of ``cfg`` (the CLI); returns it (percent). The
    optional key ``cache_dir`` (``+cache_dir=DIR`` on the command line) enables the cache."""
    stats = ambiguity_stats(cfg, cache_dir=cfg.get("cache_dir"))
    kernel = ", ".join(f"{k}={v}" for k, v in stats["kernel"].items() if k != "name")
    dm = cfg.data.datamodule
    where = f", root {dm.root}, split {dm.train_split}" if "root" in dm else ""
    h, w = stats["input_size"]
    print(f"data set: {stats['data']} (training split{where}), {stats['num_classes']} classes, no augmentation")
    print(
        f"images: {stats['images']}, boxes: {stats['boxes']}, input {h}x{w}, output map "
        f"{stats['output_size'][0]}x{stats['output_size'][1]}"
    )
    print(f"kernel: {stats['kernel'].get('name', '?')} ({kernel})")
    print(f"regression samples: {stats['samples']}, ambiguous: {stats['ambiguous']}")
    took = f"{stats['seconds']:.1f} s" + (", from the cache" if stats["cached"] else "")
    print(f"computed in {took}")
    print(f"ambiguous samples: {stats['ratio']:.2f} %")
    return float(stats["ratio"])


# Command line: no Hydra run dir, no .hydra/ folder, no log file in the cwd (appended to the command
# line unless the user sets the same key, e.g. hydra.run.dir=...). A multirun (-m) writes its
# multirun.yaml into a temporary sweep dir, removed at the end.
