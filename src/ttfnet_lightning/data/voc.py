"""Pascal VOC layout detection data set: ``root/ImageSets/Main/{split}.txt`` (one image name per
line), ``root/Annotations/{name}.xml`` and ``root/JPEGImages/{filename}``.

VOC boxes are 1-based and inclusive (a box covering pixel columns 0..9 is written xmin=1,
xmax=10); they are converted to 0-based pixel-edge xyxy as ``(xmin - 1, ymin - 1, xmax, ymax)``.
All XML files of the split are parsed up front, so annotation problems surface at construction
as :class:`DataError` naming the file.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .errors import DataError
from .sample import check_index, detection_sample, load_rgb_image

log = logging.getLogger(__name__)

__all__ = ["VocDetection", "parse_voc_xml", "read_voc_split"]


@dataclass
class VocRecord:
    """One parsed VOC annotation: ``boxes`` (N, 4) float32 0-based xyxy (clipped at 0, and at the
    XML's image size when it gives one), class ``names`` (N,), ``difficult`` (N,) bool."""

    xml: Path
    filename: str
    size: tuple[int, int] | None  # (h, w) from <size>, None when absent/zero
    boxes: np.ndarray
    names: list[str]
    difficult: np.ndarray


def read_voc_split(root: Path, split: str) -> list[str]:
    """Image names of ``root/ImageSets/Main/{split}.txt`` (first token of each non-empty line)."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"VOC split file not found: {path}")
    names = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"VOC split file {path} lists no images")
    return names


def _text(node: ET.Element, tag: str, xml: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"malformed VOC XML {xml}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml: Path) -> float:
    value = _text(node, tag, xml)
    try:
        return float(value)
    except ValueError:
        raise DataError(f"malformed VOC XML {xml}: <{tag}> is {value!r}, not a number") from None


def parse_voc_xml(xml: Path, *, default_filename: str) -> VocRecord:
    """Parse one VOC annotation file.

    Raises:
        DataError: the file is missing, not well-formed XML, or an object lacks a name / a numeric
            bndbox (names the file).
    """
    if not xml.is_file():
        raise DataError(f"VOC annotation file not found: {xml}")
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise DataError(f"malformed VOC XML {xml}: {e}") from None
    if root.tag != "annotation":
        raise DataError(f"malformed VOC XML {xml}: root element is <{root.tag}>, expected <annotation>")
    fn = root.find("filename")
    filename = fn.text.strip() if fn is not None and fn.text and fn.text.strip() else default_filename
    size = None
    s = root.find("size")
    if s is not None and s.find("width") is not None and s.find("height") is not None:
        w, h = int(_number(s, "width", xml)), int(_number(s, "height", xml))
        if w > 0 and h > 0:
            size = (h, w)
    boxes, names, difficult = [], [], []
    for obj in root.iter("object"):
        names.append(_text(obj, "name", xml))
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"malformed VOC XML {xml}: object {names[-1]!r} has no <bndbox>")
        x1, y1, x2, y2 = (_number(bb, t, xml) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        d = obj.find("difficult")
        difficult.append(d is not None and d.text is not None and d.text.strip() in ("1", "true", "True"))
    arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    arr = np.maximum(arr, 0)
    if size is not None:
        arr = np.minimum(arr, np.array([size[1], size[0], size[1], size[0]], dtype=np.float32))
    return VocRecord(xml, filename, size, arr, names, np.asarray(difficult, dtype=bool))


class VocDetection(Dataset):
    """Pascal VOC layout detection data set.

    ``dataset[i]`` -> ``(image, target)``: image ``tv_tensors.Image`` uint8 (3, H, W) after
    ``transforms``; target ``boxes`` ``BoundingBoxes`` xyxy float32 (M, 4) (transformed-image
    pixels; difficult objects excluded unless ``keep_difficult``), ``labels`` int64 (M,),
    ``image_id`` (position of the image in the split file), ``orig_size`` (h, w), and
    ``gt_boxes`` float32 (N, 4) xyxy original pixels / ``gt_labels`` int64 (N,) / ``gt_iscrowd``
    int64 (N,): all objects, difficult ones flagged as crowd (ignored by the COCO-style
    evaluator) unless ``keep_difficult``.

    Args:
        root: VOC root (holding ``Annotations``, ``ImageSets/Main``, ``JPEGImages``).
        split: split file name without ``.txt``.
        class_names: the C class names (label k = ``class_names[k]``); None: the sorted unique
            names found in the split's XML files.
        transforms: callable ``(image, target) -> (image, target)`` (see ``build_transforms``).
        keep_difficult: treat difficult objects as ordinary ones.
        keep_empty: keep images without (non-difficult) objects.
    Raises:
        DataError: missing split file / XML / image, malformed XML, a class name not in
            ``class_names`` (names the file and the class).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train",
        class_names: Sequence[str] | None = None,
        transforms: Callable[..., Any] | None = None,
        keep_difficult: bool = False,
        keep_empty: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.keep_difficult = bool(keep_difficult)
        self.keep_empty = bool(keep_empty)
        names = read_voc_split(self.root, split)
        records = [
            parse_voc_xml(self.root / "Annotations" / f"{n}.xml", default_filename=f"{n}.jpg") for n in names
        ]
        if class_names is None:
            class_names = sorted({c for r in records for c in r.names})
            if not class_names:
                raise DataError(
                    f"no objects in the XML files of split {split!r} under {self.root}: cannot discover class names"
                )
        self.class_names: list[str] = [str(c) for c in class_names]
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"class_names has duplicates: {self.class_names}")
        index = {c: i for i, c in enumerate(self.class_names)}

        self.num_degenerate = 0
        self.image_names: list[str] = []
        self.image_ids: list[int] = []
        self._paths: list[Path] = []
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._difficult: list[np.ndarray] = []
        for pos, (name, rec) in enumerate(zip(names, records)):
            for c in rec.names:
                if c not in index:
                    raise DataError(f"VOC annotation {rec.xml}: unknown class {c!r} (class_names: {self.class_names})")
            labels = np.array([index[c] for c in rec.names], dtype=np.int64)
            ok = (rec.boxes[:, 2] > rec.boxes[:, 0]) & (rec.boxes[:, 3] > rec.boxes[:, 1])
            self.num_degenerate += int((~ok).sum())
            difficult = rec.difficult[ok] & (not self.keep_difficult)
            if not self.keep_empty and difficult.all():
                continue
            path = self.root / "JPEGImages" / rec.filename
            if not path.is_file():
                raise DataError(f"image file not found: {path} (from {rec.xml})")
            self.image_names.append(name)
            self.image_ids.append(pos)
            self._paths.append(path)
            self._boxes.append(rec.boxes[ok])
            self._labels.append(labels[ok])
            self._difficult.append(difficult)
        if self.num_degenerate:
            log.warning(
                "VOC %s split %r: dropped %d degenerate box(es) (no area after clipping to the image)",
                self.root,
                split,
                self.num_degenerate,
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_names)

    def image_path(self, index: int) -> Path:
        return self._paths[index]

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Untransformed annotations of image ``index``: ``boxes`` (N, 4) 0-based xyxy,
        ``labels`` (N,), ``difficult`` (N,) bool (False everywhere when ``keep_difficult``)."""
        return {"boxes": self._boxes[index], "labels": self._labels[index], "difficult": self._difficult[index]}

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        index = check_index(index, len(self))
        image = load_rgb_image(self._paths[index])
        h, w = int(image.shape[-2]), int(image.shape[-1])
        boxes = np.minimum(self._boxes[index], np.array([w, h, w, h], dtype=np.float32))
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return detection_sample(
            image,
            gt_boxes=torch.from_numpy(boxes[ok].copy()),
            gt_labels=torch.from_numpy(self._labels[index][ok].copy()),
            gt_iscrowd=torch.from_numpy(self._difficult[index][ok].copy()),
            image_id=int(self.image_ids[index]),
            transforms=self.transforms,
        )
