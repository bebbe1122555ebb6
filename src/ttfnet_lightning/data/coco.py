"""MS COCO detection data set (standard layout: ``root/annotations/instances_{split}.json`` and
``root/{split}/*.jpg``), read with pycocotools.

Labels are contiguous: the sorted category ids map to 0..C-1 (``cat_ids[label]`` is the original
id, also exposed as ``label_to_cat_id`` for writing COCO results). The annotation file is
validated up front and every problem raises :class:`DataError` naming the file (and the
annotation / category id).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.paths import ImageFolder, raise_problems
from ttfnet_lightning.data.sample import ImageFileDataset, box_area, detection_sample, load_rgb_image

log = logging.getLogger(__name__)

__all__ = ["CocoDetection", "index_coco", "load_coco_json", "load_rgb_image"]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_hashable(x: Any) -> bool:
    return isinstance(x, (int, float, str, bool)) or x is None


ANN_WHY = "the COCO evaluator keeps only one of them"


def duplicate_ids(entries: list[Any], detail: str, *, what: str, of: str, why: str) -> list[str]:
    """One problem per ``id`` that two or more dict ``entries`` share, naming each copy's
    ``entry[detail]``, and one per id that is not a number or string. Called once a duplicate is
    known (a set of the ids smaller than the entries), so it is never on the path of a clean file."""
    seen: dict[Any, list[Any]] = {}
    problems = []
    for e in entries:
        if isinstance(e, dict) and "id" in e:
            if _is_hashable(e["id"]):
                seen.setdefault(e["id"], []).append(e.get(detail))
            else:
                problems.append(f"{what} {e['id']!r} ({str(e)[:120]}): an id must be a number or string")
    return problems + [
        f"{what} {key} is listed {len(found)} times ({of} {', '.join(map(repr, found[:5]))}"
        f"{', ...' if len(found) > 5 else ''}): ids must be unique ({why})"
        for key, found in seen.items()
        if len(found) > 1
    ]


def _image_problems(images: list[Any]) -> tuple[list[str], set[int]]:
    """Problems of the ``images`` entries (fields, sizes, unique integer ids) and the set of their ids."""
    problems: list[str] = []
    ids: set[int] = set()
    valid = 0
    for img in images:
        if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "height", "width")):
            problems.append(f"image entry {str(img)[:120]} needs id, file_name, height, width")
            continue
        if type(img["id"]) is not int:  # bool is no id
            problems.append(f"image entry {str(img)[:120]}: id must be an integer")
            continue
        if not (_is_number(img["height"]) and _is_number(img["width"]) and img["height"] > 0 and img["width"] > 0):
            problems.append(f"image id {img['id']} has invalid size {img['width']}x{img['height']}")
        ids.add(img["id"])
        valid += 1
    if len(ids) < valid:
        problems += duplicate_ids(
            images, "file_name", what="image id", of="file names", why="each image would get the others' boxes"
        )
    return problems, ids


def _annotation_problems(anns: list[Any], image_ids: set[int], cat_ids: set[Any]) -> list[str]:
    """Problems of the ``annotations`` entries: fields, bbox, known image and category (unique ids:
    see :func:`index_coco`)."""
    problems: list[str] = []
    for ann in anns:
        if not isinstance(ann, dict) or any(k not in ann for k in ("id", "image_id", "category_id", "bbox")):
            problems.append(f"annotation {str(ann)[:120]} needs id, image_id, category_id, bbox")
            continue
        aid = ann["id"]
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            problems.append(f"annotation id {aid} has bbox {bbox!r}, expected 4 numbers [x, y, w, h]")
        try:
            known_cat = ann["category_id"] in cat_ids
        except TypeError:  # an unhashable id (a list, an object)
            known_cat = False
        try:
            known_image = ann["image_id"] in image_ids
        except TypeError:
            known_image = False
        if not known_cat:
            problems.append(f"annotation id {aid} has category_id {ann['category_id']}, which is not in 'categories'")
        if not known_image:
            problems.append(f"annotation id {aid} refers to image_id {ann['image_id']}, which is not in 'images'")
    return problems


def index_coco(data: dict[str, Any]) -> tuple[Any, list[str]]:
    """pycocotools' index (``COCO``) of a validated instances file (:func:`load_coco_json`), and the
    problems of its annotation ids: every id listed twice (the official evaluator keeps one of
    them) or not a number / string. Found for free: the index holds fewer annotations than the file."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    anns = data["annotations"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except TypeError:  # an unhashable annotation id
        pass
    else:
        if len(coco.anns) == len(anns):
            return coco, []
    return coco, duplicate_ids(anns, "image_id", what="annotation id", of="image ids", why=ANN_WHY)


def load_coco_json(path: Path) -> dict[str, Any]:
    """Read and validate a COCO instances file.

    Checks: the file exists and is JSON; it is an object with ``images``, ``annotations`` and
    ``categories`` lists; there is at least one image; images have a unique integer ``id``, a
    ``file_name``, ``height``, ``width``; categories have distinct ``id`` and a ``name``; every
    annotation has a unique ``id`` (a number or string; in a file without other problems found
    when indexed, by :func:`index_coco`, where it costs nothing), an ``image_id`` of a listed image, a ``category_id``
    of a listed category and a ``bbox`` of 4 finite numbers. (File names are checked against the
    image folder by :class:`CocoDetection`.)

    Raises:
        DataError: naming the file and the problem; entry problems (image, category and
            annotation entries, duplicate ids with what each copy names) are all collected and
            listed in one error, each naming the id.
    """
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"COCO annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"COCO annotation file {path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(f"COCO annotation file {path} is missing the key(s) {missing}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"COCO annotation file {path}: '{key}' must be a list, got {type(data[key]).__name__}")
    if not data["images"]:
        raise DataError(f"COCO annotation file {path} is empty: it lists no images")
    if not data["categories"]:
        raise DataError(f"COCO annotation file {path} lists no categories")

    # entry problems are collected and raised together (one list, like the VOC XML check), so a
    # user fixes a broken file in one pass instead of one error per run
    problems, image_ids = _image_problems(data["images"])
    cat_ids = set()
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(f"category entry {str(cat)[:120]} needs id and name")
            continue
        if not _is_hashable(cat["id"]):
            problems.append(f"category entry {str(cat)[:120]}: id must be a number")
            continue
        if cat["id"] in cat_ids:
            problems.append(f"category id {cat['id']} is listed twice")
        cat_ids.add(cat["id"])
    problems += _annotation_problems(data["annotations"], image_ids, cat_ids)
    if problems:  # the list names every problem; a clean file's duplicate annotation ids show when indexed
        problems += duplicate_ids(data["annotations"], "image_id", what="annotation id", of="image ids", why=ANN_WHY)
    raise_problems(problems, where=f"COCO annotation file {path}")
    return data


def coco_boxes(
    anns: list[dict[str, Any]], h: int, w: int, cat_id_to_label: dict[Any, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One image's annotations -> ``(boxes (N, 4) xyxy float32 clipped to the image, labels (N,), iscrowd (N,),
    area (N,), number of degenerate boxes dropped)``; a box with no area left after clipping is dropped;
    ``area`` is the annotation's when it gives a positive number, else the box area."""
    if not anns:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    xyxy = np.clip(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), 0, [w, h, w, h])
    ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    labels = np.array([cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)[ok]
    crowd = np.array([int(bool(a.get("iscrowd", 0))) for a in anns], dtype=np.int64)[ok]
    boxes = xyxy[ok].astype(np.float32)
    given = np.array([a.get("area", 0) if _is_number(a.get("area")) else 0 for a in anns], np.float32)[ok]
    area = np.where(given > 0, given, box_area(boxes)).astype(np.float32)
    return boxes, labels, crowd, area, int((~ok).sum())


class CocoDetection(ImageFileDataset):
    """COCO detection data set.

    ``dataset[i]`` -> ``(image, target)``: image ``tv_tensors.Image`` uint8 (3, H, W) after
    ``transforms``; target ``boxes`` ``BoundingBoxes`` xyxy float32 (M, 4) (non-crowd boxes only,
    transformed-image pixels), ``labels`` int64 (M,) in [0, C), ``image_id`` (the COCO image id),
    ``orig_size`` (h, w), and ``gt_boxes`` float32 (N, 4) xyxy original pixels / ``gt_labels``
    int64 (N,) / ``gt_iscrowd`` int64 (N,) / ``gt_area`` float32 (N,) (the annotation's ``area``,
    what COCO's APs/APm/APl bucket by; box area when the annotation has none): every
    non-degenerate annotation, crowd included.

    Boxes are clipped to the image; a box with no area left (w <= 0 or h <= 0 after clipping,
    e.g. outside the image) is dropped from both and counted in ``num_degenerate`` (one warning
    per data set names the file).

    Args:
        root: COCO root folder.
        split: split name, e.g. ``"val2017"``.
        ann_file: annotation json (default ``root/annotations/instances_{split}.json``).
        image_dir: image folder (default ``root/{split}``).
        transforms: callable ``(image, target) -> (image, target)`` (see ``build_transforms``).
        keep_empty: keep images without non-crowd boxes (False: drop them, e.g. for training;
            the drops are counted in the log, and a set left empty raises :class:`DataError`).
        skip_bad_images: on a missing/undecodable image, log a warning naming it and skip it
            (``num_skipped`` counts the distinct bad images met by this process) instead of
            raising :class:`DataError`; see :class:`ImageFileDataset` (truncated images load
            with a warning either way).
        substitute_bad_images: a skipped image is replaced by the next readable one (training);
            False: ``dataset[i]`` returns a :class:`BadImage` that the collate drops (evaluation:
            the image is excluded from the metric, never scored twice).
        max_bad_images: with ``skip_bad_images``, raise once more than this many distinct bad
            images were met.
        max_truncated_fraction: a truncated image missing more than this fraction of its rows is a
            bad image (see :class:`ImageFileDataset`).
    Raises:
        DataError: missing/malformed annotation file (duplicate image or annotation ids included),
            unknown category id, no images, missing image folder, a ``file_name`` that leaves the
            image folder (absolute, ``..``, a symbolic link pointing outside) or a file named by
            two entries (all such entries listed in one error), no usable image left with
            ``keep_empty=False``.
    """

    per_image = ("image_ids", "file_names", "orig_sizes", "_boxes", "_labels", "_crowd", "_area")

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "val2017",
        ann_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        transforms: Callable[..., Any] | None = None,
        keep_empty: bool = True,
        skip_bad_images: bool = False,
        substitute_bad_images: bool = False,
        max_bad_images: int = 10,
        max_truncated_fraction: float = 0.1,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.ann_file = (
            Path(ann_file) if ann_file is not None else self.root / "annotations" / f"instances_{split}.json"
        )
        self.image_dir = Path(image_dir) if image_dir is not None else self.root / split
        self.transforms = transforms
        self.keep_empty = bool(keep_empty)
        self.init_image_policy(
            skip_bad_images=skip_bad_images,
            max_bad_images=max_bad_images,
            substitute_bad_images=substitute_bad_images,
            max_truncated_fraction=max_truncated_fraction,
        )

        data = load_coco_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise DataError(f"COCO image folder not found: {self.image_dir} (annotations: {self.ann_file})")
        self.image_folder = ImageFolder(self.image_dir)
        images = data["images"]
        problems = self.image_folder.problems(
            [img["file_name"] for img in images], lambda k: f"image id {images[k]['id']}"
        )
        coco, id_problems = index_coco(data)
        raise_problems(
            problems + id_problems, where=f"COCO annotation file {self.ann_file} (image folder {self.image_dir})"
        )
        self.coco = coco

        self.cat_ids: list[int] = sorted(coco.cats)
        self.cat_id_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names: list[str] = [str(coco.cats[c]["name"]) for c in self.cat_ids]

        self._index_images(data["images"])
        self._report_drops(len(data["images"]))

    def _index_images(self, images: list[dict[str, Any]]) -> None:
        """The per-image lists (``per_image``) from the annotation file's images, in file order; with
        ``keep_empty=False`` images without a usable box are left out and counted in ``dropped``."""
        self.num_degenerate = 0
        # images dropped with keep_empty=False, by why: no annotation / only crowd / only degenerate
        self.dropped: dict[str, int] = {"no annotations": 0, "only crowd boxes": 0, "only degenerate boxes": 0}
        for name in self.per_image:
            setattr(self, name, [])
        for img in images:
            h, w = int(img["height"]), int(img["width"])
            anns = self.coco.imgToAnns.get(img["id"], [])
            boxes, labels, crowd, area, degenerate = coco_boxes(anns, h, w, self.cat_id_to_label)
            self.num_degenerate += degenerate
            if not self.keep_empty and not (crowd == 0).any():
                why = "only crowd boxes" if len(crowd) else "only degenerate boxes" if anns else "no annotations"
                self.dropped[why] += 1
                continue
            for name, value in zip(
                self.per_image, (img["id"], str(img["file_name"]), (h, w), boxes, labels, crowd, area)
            ):
                getattr(self, name).append(value)

    def _report_drops(self, num_images: int) -> None:
        """Log the degenerate boxes and the dropped images; no image left raises :class:`DataError`."""
        if self.num_degenerate:
            log.warning(
                "%s: dropped %d degenerate box(es) (no area left after clipping to the image)",
                self.ann_file,
                self.num_degenerate,
            )
        if self.keep_empty:
            return
        drops = ", ".join(f"{n} with {why}" for why, n in self.dropped.items() if n)
        if not self.image_ids:
            raise DataError(
                f"COCO annotation file {self.ann_file} leaves no image with a usable (non-crowd, "
                f"non-degenerate) box: all {num_images} images dropped ({drops})"
            )
        if drops:
            log.info(
                "%s: dropped %d image(s) without a usable box (%s)", self.ann_file, sum(self.dropped.values()), drops
            )

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def label_to_cat_id(self) -> list[int]:
        """Contiguous label -> COCO category id (``cat_ids``)."""
        return list(self.cat_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.file_names[index]

    def expected_size(self, index: int) -> tuple[int, int]:
        return self.orig_sizes[index]

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Untransformed annotations of image ``index``: ``boxes`` (N, 4) xyxy original pixels,
        ``labels`` (N,), ``iscrowd`` (N,), ``area`` (N,) (all non-degenerate annotations)."""
        return {
            "boxes": self._boxes[index],
            "labels": self._labels[index],
            "iscrowd": self._crowd[index],
            "area": self._area[index],
        }

    def make_sample(self, index: int, image: tv_tensors.Image) -> tuple[tv_tensors.Image, dict[str, Any]]:
        return detection_sample(
            image,
            gt_boxes=torch.from_numpy(self._boxes[index].copy()),
            gt_labels=torch.from_numpy(self._labels[index].copy()),
            gt_iscrowd=torch.from_numpy(self._crowd[index].copy()),
            gt_area=torch.from_numpy(self._area[index].copy()),
            image_id=int(self.image_ids[index]),
            transforms=self.transforms,
        )
