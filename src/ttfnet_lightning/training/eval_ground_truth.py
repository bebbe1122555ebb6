"""The ground truth and detections of an error analysis (:mod:`ttfnet_lightning.training.error_analysis`)
as pycocotools ``COCO`` objects.

Ground truth: the data module's COCO annotation file (``val_ann_file``) when it has one, else a COCO
ground truth built in memory from its validation data set, without decoding images where the data
set can say: ``annotations(i)`` of the COCO and VOC data sets (COCO's crowd flags and areas; VOC's
difficult boxes as crowd, i.e. ignored, as the validation metric treats them), ``render(i)`` of the
built-in shapes, else the evaluation keys of any data set's samples (``gt_boxes``, ``gt_labels``,
``gt_iscrowd``, ``gt_area``, ``orig_size``: the image is decoded). On COCO both give the same numbers
(tests/training/test_error_analysis.py, on ../shared/data/coco-mini).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GroundTruth",
    "ground_truth",
    "dataset_ground_truth",
    "load_detections",
    "coco_from_dict",
    "quiet",
    "image_of",
]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pycocotools prints progress and tables: silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def coco_from_dict(data: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` of a ground-truth dict (``images``, ``annotations``, ``categories``)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with quiet():
        coco.createIndex()
    return coco


@dataclass(frozen=True, kw_only=True)
class GroundTruth:
    """The evaluated images' ground truth: a pycocotools ``COCO``, the image ids, label -> category
    id (``cat_ids``) and label -> class name, and where it came from (``source``)."""

    coco: Any
    image_ids: list[int]
    cat_ids: list[int]
    class_names: list[str]
    source: str


def _image_annotations(ds: Any, index: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``index``'s (h, w) ((0, 0) when unknown), boxes (N, 4) xyxy original pixels, labels (N,),
    crowd / difficult flags (N,) and areas (N,) (the annotation's, else the box area)."""
    size, area = None, None
    if hasattr(ds, "annotations"):  # COCO / VOC: parsed annotations, no image decoded
        a = ds.annotations(index)
        boxes, labels, area = a["boxes"], a["labels"], a.get("area")
        crowd = a["iscrowd"] if "iscrowd" in a else a.get("difficult", np.zeros(len(labels)))
        size = ds.expected_size(index) if hasattr(ds, "expected_size") else None
    elif hasattr(ds, "render"):  # the built-in shapes, drawn at their image size
        _, boxes, labels = ds.render(index)
        crowd, size = np.zeros(len(labels)), tuple(ds.image_size)
    else:  # any other data set: the evaluation keys of its sample (the image is decoded)
        t = ds[index][1]
        boxes, labels, crowd = t["gt_boxes"].numpy(), t["gt_labels"].numpy(), t["gt_iscrowd"].numpy()
        area, size = t["gt_area"].numpy(), tuple(t["orig_size"])
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return tuple(size or (0, 0)), boxes, np.asarray(labels), np.asarray(crowd), np.asarray(area, np.float64)


def dataset_ground_truth(
    ds: Any, *, image_ids: Sequence[int], cat_ids: Sequence[int], class_names: Sequence[str]
) -> dict[str, Any]:
    """A COCO ground-truth dict (images, annotations, categories) of the first ``len(image_ids)``
    samples of the data set ``ds`` (``image_ids[i]``: sample i's id), labels mapped to ``cat_ids``."""
    images, anns = [], []
    for index, image_id in enumerate(image_ids):
        (h, w), boxes, labels, crowd, area = _image_annotations(ds, index)
        images.append({"id": int(image_id), "height": int(h), "width": int(w)})
        for box, label, c, a in zip(boxes, labels, crowd, area):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append(
                {
                    "id": len(anns) + 1,  # COCOeval's matches use 0 for "none"
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[int(label)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(a),
                    "iscrowd": int(bool(c)),
                }
            )
    cats = [{"id": int(c), "name": str(n)} for c, n in zip(cat_ids, class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def ground_truth(datamodule: Any, *, num_images: int | None = None) -> GroundTruth:
    """The ground truth of the first ``num_images`` (default: all) validation images of
    ``datamodule``: its annotation file (``val_ann_file``) when it has one, else built in memory."""
    from pycocotools.coco import COCO

    if getattr(datamodule, "val_dataset", None) is None:
        datamodule.setup("validate")
    ds = datamodule.val_dataset
    n = len(ds) if num_images is None else min(int(num_images), len(ds))
    ids = list(getattr(ds, "image_ids", None) or [])
    image_ids = [int(ids[i]) if ids else i for i in range(n)]
    names = [str(c) for c in datamodule.class_names]
    to_cat = getattr(datamodule, "label_to_cat_id", None)
    cat_ids = [int(c) for c in to_cat] if to_cat is not None else list(range(len(names)))
    ann = getattr(datamodule, "val_ann_file", None)
    if ann and Path(ann).is_file():
        with quiet():
            coco = COCO(str(ann))
        missing = sorted(set(cat_ids) - set(coco.getCatIds()))
        if missing:
            raise ValueError(f"{ann}: category ids {missing} of the data module are not in its 'categories'")
        return GroundTruth(coco=coco, image_ids=image_ids, cat_ids=cat_ids, class_names=names, source=str(ann))
    data = dataset_ground_truth(ds, image_ids=image_ids, cat_ids=cat_ids, class_names=names)
    source = f"built from the validation data set ({type(ds).__name__}, {n} images)"
    return GroundTruth(
        coco=coco_from_dict(data), image_ids=image_ids, cat_ids=cat_ids, class_names=names, source=source
    )


def load_detections(detections: str | Path | Sequence[dict[str, Any]], gt: GroundTruth) -> list[dict[str, Any]]:
    """The COCO results (a ``detections_val.json`` path or its list) of the evaluated images.

    Raises:
        ValueError: the file is not a JSON list of results, or a result names an unknown category."""
    where = str(detections) if isinstance(detections, (str, Path)) else "detections"
    if isinstance(detections, (str, Path)):
        try:
            detections = json.loads(Path(detections).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the detections {where}: {exc}") from None
    if not isinstance(detections, list) or any(not isinstance(d, dict) or "bbox" not in d for d in detections):
        raise ValueError(f"{where}: expected a JSON list of COCO results {{image_id, category_id, bbox, score}}")
    unknown = sorted({d["category_id"] for d in detections} - set(gt.cat_ids))
    if unknown:
        raise ValueError(f"{where}: category ids {unknown[:5]} are not among the data's {gt.cat_ids[:10]}...")
    keep = set(gt.image_ids)
    return [dict(d) for d in detections if int(d["image_id"]) in keep]


def image_of(ds: Any, index: int) -> Tensor:
    """Sample ``index``'s image in original pixels, (3, H, W) uint8 (the frame of the detections JSON)."""
    if hasattr(ds, "read_image"):  # COCO / VOC: the file, untransformed
        return ds.read_image(index).as_subclass(Tensor)
    if hasattr(ds, "render"):  # the built-in shapes
        return torch.from_numpy(ds.render(index)[0]).permute(2, 0, 1).contiguous()
    image, target = ds[index]  # any other: the network's input, resized back
    image = torch.as_tensor(image).as_subclass(Tensor)
    h, w = (int(v) for v in target["orig_size"])
    if tuple(image.shape[-2:]) == (h, w):
        return image
    resized = torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)
