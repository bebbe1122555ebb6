"""Pascal VOC layout detection data set: ``root/ImageSets/Main/{split}.txt`` (one image name per
line), ``root/Annotations/{name}.xml`` and ``root/JPEGImages/{filename}``.

VOC boxes are 1-based and inclusive (a box covering pixel columns 0..9 is written xmin=1,
xmax=10); they are converted to 0-based pixel-edge xyxy as ``(xmin - 1, ymin - 1, xmax, ymax)``.
All XML files of the split are parsed up front, so annotation problems surface at construction
as :class:`DataError` naming the file; so do names that leave their folder (see
:mod:`~ttfnet_lightning.data.paths`) or are listed twice. The XML's ``<size>`` is compared with
the image (when read and in the pre-flight check).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.paths import ImageFolder, raise_problems
from ttfnet_lightning.data.sample import ImageFileDataset, detection_sample

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


def _parse_split(root: Path, names: Sequence[str], workers: int = 8) -> list[VocRecord | DataError]:
    """Parse the XML files of ``names`` (in a thread pool): a record or the error, per name."""

    def parse(name: str) -> VocRecord | DataError:
        try:
            return parse_voc_xml(root / "Annotations" / f"{name}.xml", default_filename=f"{name}.jpg")
        except DataError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        return list(pool.map(parse, names))


def index_split(root: Path, split: str) -> tuple[list[str], list[VocRecord], ImageFolder]:
    """Names, parsed records and image folder of a split; every path read from the split file (an
    XML name) or an XML file (``<filename>``) must stay inside its folder and name its file once.

    Raises:
        DataError: listing at once every split entry leaving ``Annotations/`` or listed twice,
            every missing / malformed XML file, every ``<filename>`` leaving ``JPEGImages/``
            (absolute, ``..``, a symbolic link pointing outside) and every image named by two XMLs.
    """
    names = read_voc_split(root, split)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    annotations = ImageFolder(root / "Annotations")
    problems = annotations.problems(
        [f"{n}.xml" for n in names], lambda k: f"{split_file.name} entry {k + 1} ({names[k]!r})"
    )
    safe = [n for n in names if annotations.resolve(f"{n}.xml")[1] is None]  # the others are never read
    parsed = _parse_split(root, safe)
    problems += [str(r) for r in parsed if isinstance(r, DataError)]
    records = [r for r in parsed if isinstance(r, VocRecord)]
    images = ImageFolder(root / "JPEGImages")
    problems += images.problems([r.filename for r in records], lambda k: str(records[k].xml))
    raise_problems(problems, where=f"VOC split {split!r} under {root}")
    return names, records, images


def discover_classes(records: Sequence[VocRecord], *, where: str, min_boxes_per_class: int) -> list[str]:
    """The sorted class names of ``records``, logged with their box counts.

    Raises:
        DataError: no objects at all, or a class with fewer than ``min_boxes_per_class`` boxes
            (likely a misspelt name; names the class, its count and XML files it occurs in).
    """
    counts: Counter[str] = Counter()
    files: dict[str, list[Path]] = {}
    for r in records:
        for c in r.names:
            counts[c] += 1
            if r.xml not in files.setdefault(c, []):
                files[c].append(r.xml)
    if not counts:
        raise DataError(f"no objects in the XML files of {where}: cannot discover class names")
    names = sorted(counts)
    log.info(
        "%s: discovered %d class(es) (boxes): %s", where, len(names), ", ".join(f"{c} ({counts[c]})" for c in names)
    )
    rare = [c for c in names if counts[c] < min_boxes_per_class]
    if rare:
        lines = [
            f"{c!r}: {counts[c]} box(es), in {', '.join(str(x) for x in files[c][:3])}"
            + (f" and {len(files[c]) - 3} more file(s)" if len(files[c]) > 3 else "")
            for c in rare
        ]
        raise DataError(
            f"{where}: class(es) discovered with fewer than min_boxes_per_class={min_boxes_per_class} boxes "
            f"(a misspelt name becomes a silent extra class):\n  "
            + "\n  ".join(lines)
            + "\nfix the XML files, list the classes (data.datamodule.class_names=[...]), or allow rare classes "
            f"(data.datamodule.min_boxes_per_class={min(counts[c] for c in rare)})"
        )
    return names


class VocDetection(ImageFileDataset):
    """Pascal VOC layout detection data set.

    ``dataset[i]`` -> ``(image, target)``: image ``tv_tensors.Image`` uint8 (3, H, W) after
    ``transforms``; target ``boxes`` ``BoundingBoxes`` xyxy float32 (M, 4) (transformed-image
    pixels; difficult objects excluded unless ``keep_difficult``), ``labels`` int64 (M,),
    ``image_id`` (position of the image in the split file), ``orig_size`` (h, w), and
    ``gt_boxes`` float32 (N, 4) xyxy original pixels / ``gt_labels`` int64 (N,) / ``gt_iscrowd``
    int64 (N,) / ``gt_area`` float32 (N,) (box area): all objects, difficult ones flagged as crowd
    (ignored by the COCO-style evaluator) unless ``keep_difficult``.

    Args:
        root: VOC root (holding ``Annotations``, ``ImageSets/Main``, ``JPEGImages``).
        split: split file name without ``.txt``.
        class_names: the C class names (label k = ``class_names[k]``); None: the sorted unique
            names found in the split's XML files (logged with their box counts).
        min_boxes_per_class: with ``class_names=None``, refuse a discovered class with fewer
            boxes than this (0: allow any).
        transforms: callable ``(image, target) -> (image, target)`` (see ``build_transforms``).
        keep_difficult: treat difficult objects as ordinary ones.
        keep_empty: keep images without (non-difficult) objects (False: a set left empty raises).
        skip_bad_images, substitute_bad_images, max_bad_images, max_truncated_fraction: the
            bad-image policy, as for COCO (see :class:`ImageFileDataset`); an image whose size
            differs from its XML's ``<size>`` is a bad image.
    Raises:
        DataError: missing split file / XML, malformed XML, a split entry or ``<filename>`` that
            leaves its folder or is listed twice (all of them listed, see :func:`index_split`), a class name not
            in ``class_names`` (names the file and the class), a rare discovered class, no usable
            image left with ``keep_empty=False``.
    """

    per_image = ("image_names", "image_ids", "_paths", "_sizes", "_boxes", "_labels", "_difficult")

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train",
        class_names: Sequence[str] | None = None,
        min_boxes_per_class: int = 5,
        transforms: Callable[..., Any] | None = None,
        keep_difficult: bool = False,
        keep_empty: bool = True,
        skip_bad_images: bool = False,
        substitute_bad_images: bool = False,
        max_bad_images: int = 10,
        max_truncated_fraction: float = 0.1,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.keep_difficult = bool(keep_difficult)
        self.keep_empty = bool(keep_empty)
        self.init_image_policy(
            skip_bad_images=skip_bad_images,
            max_bad_images=max_bad_images,
            substitute_bad_images=substitute_bad_images,
            max_truncated_fraction=max_truncated_fraction,
        )
        names, records, self.image_folder = index_split(self.root, split)
        where = f"VOC split {split!r} under {self.root}"
        if class_names is None:
            class_names = discover_classes(records, where=where, min_boxes_per_class=int(min_boxes_per_class))
        self.class_names: list[str] = [str(c) for c in class_names]
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"class_names has duplicates: {self.class_names}")
        self._index_images(names, records, where=where)

    def _index_images(self, names: Sequence[str], records: Sequence[Any], *, where: str) -> None:
        """The per-image lists (``per_image``) from the split's parsed XML files, in split order; with
        ``keep_empty=False`` images without a usable object are left out and counted in ``num_dropped``."""
        index = {c: i for i, c in enumerate(self.class_names)}
        self.num_degenerate = 0
        self.num_dropped = 0  # images without a usable object, dropped with keep_empty=False
        for name in self.per_image:
            setattr(self, name, [])
        for pos, (name, rec) in enumerate(zip(names, records)):
            unknown = [c for c in rec.names if c not in index]
            if unknown:
                raise DataError(
                    f"VOC annotation {rec.xml}: unknown class {unknown[0]!r} (class_names: {self.class_names})"
                )
            labels = np.array([index[c] for c in rec.names], dtype=np.int64)
            ok = (rec.boxes[:, 2] > rec.boxes[:, 0]) & (rec.boxes[:, 3] > rec.boxes[:, 1])
            self.num_degenerate += int((~ok).sum())
            difficult = rec.difficult[ok] & (not self.keep_difficult)
            if not self.keep_empty and difficult.all():
                self.num_dropped += 1
                continue
            values = (
                name,
                pos,
                self.root / "JPEGImages" / rec.filename,
                rec.size,
                rec.boxes[ok],
                labels[ok],
                difficult,
            )
            for attr, value in zip(self.per_image, values):
                getattr(self, attr).append(value)
        if self.num_degenerate:
            log.warning(
                "%s: dropped %d degenerate box(es) (no area after clipping to the image)", where, self.num_degenerate
            )
        if not self.keep_empty and self.num_dropped:
            if not self.image_names:
                raise DataError(
                    f"{where} leaves no image with a usable (non-difficult, non-degenerate) object: "
                    f"all {len(names)} images dropped (split file "
                    f"{self.root / 'ImageSets' / 'Main' / f'{self.split}.txt'})"
                )
            log.info("%s: dropped %d image(s) without a usable object", where, self.num_dropped)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_path(self, index: int) -> Path:
        return self._paths[index]

    def expected_size(self, index: int) -> tuple[int, int] | None:
        """(h, w) of the XML's ``<size>`` (None when it gives none or a zero size)."""
        return self._sizes[index]

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Untransformed annotations of image ``index``: ``boxes`` (N, 4) 0-based xyxy,
        ``labels`` (N,), ``difficult`` (N,) bool (False everywhere when ``keep_difficult``)."""
        return {"boxes": self._boxes[index], "labels": self._labels[index], "difficult": self._difficult[index]}

    def make_sample(self, index: int, image: tv_tensors.Image) -> tuple[tv_tensors.Image, dict[str, Any]]:
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
