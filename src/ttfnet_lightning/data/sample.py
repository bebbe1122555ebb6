"""The one sample format every data set returns (see the package docstring), built in one place,
and the one image-reading policy of every data set that reads image files (COCO, VOC).

Image policy (:func:`~ttfnet_lightning.data.image_decode.decode`, :class:`ImageFileDataset`):

* every image mode decodes to 8-bit RGB with its values kept (16-bit scaled, transparency
  composited over white; see :mod:`~ttfnet_lightning.data.image_decode`) or fails clearly;
* an image is first decoded strictly; one PIL refuses (e.g. a JPEG a few bytes short) is decoded
  again with truncation allowed (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``, set only for that call,
  under a lock, then restored) and, if that works, the fraction of its rows not decoded is
  measured: up to ``max_truncated_fraction`` (default 0.1: a file a few bytes short loses at most
  part of its last block row, as before) it is loaded with a warning naming the file and that
  fraction, counted per data set (``num_truncated``); beyond it the image is a bad image (below);
* a file whose name leaves its image folder (a symbolic link replaced after the index was built)
  is refused when read (:meth:`~ttfnet_lightning.data.paths.ImageFolder.verify`), like a bad image;
* a missing or undecodable image raises :class:`DataError`, or with ``skip_bad_images`` is skipped
  and counted (``num_skipped``, at most ``max_bad_images``): a training set substitutes the next
  readable image, an evaluation set returns a :class:`BadImage` marker that
  :func:`~ttfnet_lightning.data.collate.collate_detection` drops, so the image is excluded from the
  metric, never replaced by (and scored as) another one.
* the pre-flight check (:mod:`ttfnet_lightning.data.check`) finds bad images before training and
  removes them from the index (:meth:`ImageFileDataset.exclude`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.image_decode import decode, decode_image
from ttfnet_lightning.data.paths import ImageFolder

log = logging.getLogger(__name__)

__all__ = [
    "BadImage",
    "ImageFileDataset",
    "box_area",
    "check_index",
    "decode_image",
    "detection_sample",
    "load_rgb_image",
    "to_image_tensor",
]

DEFAULT_MAX_TRUNCATED_FRACTION = 0.1


def load_rgb_image(path: Path) -> tv_tensors.Image:
    """Read an image file as RGB -> ``tv_tensors.Image`` uint8 (3, H, W) with the truncation
    policy: a truncated-but-decodable file loads with a warning naming it (data sets also count
    them, see :class:`ImageFileDataset`).

    Raises:
        DataError: the file is missing, unreadable or undecodable (names the path).
    """
    rgb, truncated = decode_image(path)
    if truncated is not None:
        log.warning("loaded truncated/damaged image %s with truncation allowed: %s", path, truncated)
    return to_image_tensor(rgb)


def to_image_tensor(rgb: Image.Image) -> tv_tensors.Image:
    """RGB PIL image -> ``tv_tensors.Image`` uint8 (3, H, W) (how every data set returns images)."""
    arr = np.array(rgb, dtype=np.uint8)  # (H, W, 3), writable copy
    return tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1).contiguous())


def check_index(index: int, length: int) -> int:
    """``index`` as a non-negative int in ``[0, length)`` (negative counts from the end)."""
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {length} images")
    return index


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N,) float32 areas."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)


def detection_sample(
    image: tv_tensors.Image,
    *,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_iscrowd: Tensor,
    image_id: int,
    transforms: Callable | None,
    gt_area: Tensor | None = None,
) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """``(image, target)`` from an image and its untransformed annotations.

    gt_boxes (N, 4) xyxy original pixels, gt_labels (N,), gt_iscrowd (N,) (crowd / difficult = 1)
    and gt_area (N,) (the area COCO buckets objects by, original pixels; default: box area) go to
    the evaluation keys as they are; the training ``boxes``/``labels`` are the non-crowd ones,
    and ``transforms`` (applied last) move them with the image.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    gt_iscrowd = gt_iscrowd.to(torch.int64)
    if gt_area is None:
        gt_area = torch.from_numpy(box_area(gt_boxes.numpy()))
    keep = gt_iscrowd == 0
    target: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(gt_boxes[keep], format="XYXY", canvas_size=(h, w)),
        "labels": gt_labels[keep],
        "image_id": int(image_id),
        "orig_size": (h, w),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_iscrowd": gt_iscrowd,
        "gt_area": gt_area.to(torch.float32),
    }
    if transforms is not None:
        image, target = transforms(image, target)
    return image, target


@dataclass(frozen=True)
class BadImage:
    """What an evaluation data set returns for an image it skipped (``skip_bad_images``);
    :func:`collate_detection` drops it, so the image is excluded from the metric."""

    image_id: int
    path: str
    reason: str


class BadImageCounts:
    """``num_skipped`` / ``num_truncated`` of a data set that records its ``bad_images`` and
    ``truncated_images`` (name -> reason) as it meets them (folder and streaming data sets)."""

    bad_images: dict[str, str]
    truncated_images: dict[str, str]

    @property
    def num_skipped(self) -> int:
        """Distinct bad images skipped by this process (``skip_bad_images=True``)."""
        return len(self.bad_images)

    @property
    def num_truncated(self) -> int:
        """Distinct truncated-but-decodable images loaded by this process."""
        return len(self.truncated_images)


class ImageFileDataset(BadImageCounts, Dataset):
    """Base of the data sets that read image files: the one bad / truncated image policy.

    Subclasses set ``per_image`` (names of their per-image lists, all in index order), call
    :meth:`init_image_policy`, and implement :meth:`image_path`, :meth:`expected_size` and
    :meth:`make_sample`.
    """

    per_image: tuple[str, ...] = ()
    image_folder: ImageFolder | None = None  # the folder every image path must stay inside (set by subclasses)

    def init_image_policy(
        self,
        *,
        skip_bad_images: bool,
        max_bad_images: int,
        substitute_bad_images: bool,
        max_truncated_fraction: float = DEFAULT_MAX_TRUNCATED_FRACTION,
    ) -> None:
        """Set the bad-image policy.

        Args:
            skip_bad_images: skip (and count) a bad image instead of raising :class:`DataError`.
            max_bad_images: with ``skip_bad_images``, raise once more than this many were met.
            substitute_bad_images: a skipped image is replaced by the next readable one (training),
                else a :class:`BadImage` is returned (evaluation).
            max_truncated_fraction: in [0, 1]; a truncated image whose undecoded rows exceed this
                fraction of its height is a bad image; up to it, it loads with a warning (0.1:
                a file a few bytes short still loads, as it always did; half an image does not;
                1: every decodable truncated image loads; 0: none does).
        Raises:
            ValueError: ``max_truncated_fraction`` outside [0, 1].
        """
        if not 0.0 <= float(max_truncated_fraction) <= 1.0:
            raise ValueError(f"max_truncated_fraction must be in [0, 1], got {max_truncated_fraction}")
        self.skip_bad_images = bool(skip_bad_images)
        self.max_bad_images = int(max_bad_images)
        self.substitute_bad_images = bool(substitute_bad_images)
        self.max_truncated_fraction = float(max_truncated_fraction)
        self.bad_images: dict[str, str] = {}  # path -> reason, met by this process
        self.truncated_images: dict[str, str] = {}  # path -> what is missing + strict decoder error, this process
        self.excluded_images: dict[str, str] = {}  # path -> reason, removed from the index by exclude()

    def truncation_problem(self, path: Path | str, truncated: str, missing: float) -> str | None:
        """The bad-image reason for a truncated image missing ``missing`` (0..1) of its rows (what
        :func:`~ttfnet_lightning.data.image_decode.decode` says in ``truncated``), None when it may
        load with a warning."""
        limit = self.max_truncated_fraction
        if limit > 0.0 and missing <= limit:
            return None
        return f"truncated image {path}: {truncated} (more than max_truncated_fraction={limit} missing)"

    # -- subclass interface
    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def expected_size(self, index: int) -> tuple[int, int] | None:
        """(h, w) the annotations give for image ``index``, None when they give none."""
        return None

    def image_id(self, index: int) -> int:
        return int(self.image_ids[index])  # type: ignore[attr-defined]

    def make_sample(self, index: int, image: tv_tensors.Image) -> tuple[tv_tensors.Image, dict[str, Any]]:
        raise NotImplementedError

    # -- shared
    def __len__(self) -> int:
        return len(getattr(self, self.per_image[0]))

    def read_image(self, index: int) -> tv_tensors.Image:
        """Image ``index`` as uint8 (3, H, W); a truncated one with a (once per file) warning.

        Raises:
            DataError: the path now resolves outside the image folder, missing / undecodable file,
                a truncated file missing more than ``max_truncated_fraction`` of its rows, or a
                size other than the annotations say.
        """
        path = self.image_path(index)
        if self.image_folder is not None:
            self.image_folder.verify(path, entry=f"image id {self.image_id(index)}")
        d = decode(path)
        if d.truncated is not None:
            problem = self.truncation_problem(path, d.truncated, d.missing)
            if problem is not None:
                raise DataError(problem)
            if str(path) not in self.truncated_images:
                self.truncated_images[str(path)] = d.truncated
                log.warning(
                    "loaded truncated/damaged image %s with truncation allowed (%d such image(s) so far in "
                    "this process): %s",
                    path,
                    self.num_truncated,
                    d.truncated,
                )
        size = self.expected_size(index)
        if size is not None and (d.image.height, d.image.width) != tuple(size):
            raise DataError(
                f"image {path} is {d.image.width}x{d.image.height} (WxH) but its annotation says {size[1]}x{size[0]}"
            )
        return to_image_tensor(d.image)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]] | BadImage:
        n = len(self)
        index = check_index(index, n)
        if not self.skip_bad_images:
            return self.make_sample(index, self.read_image(index))
        for step in range(n if self.substitute_bad_images else 1):
            i = (index + step) % n
            path = str(self.image_path(i))
            if path not in self.bad_images:
                try:
                    return self.make_sample(i, self.read_image(i))
                except DataError as e:
                    self._count_bad(path, str(e))
            if not self.substitute_bad_images:
                return BadImage(image_id=self.image_id(i), path=path, reason=self.bad_images[path])
        raise DataError(f"no readable image among the {n} of this data set (first: {self.image_path(0)})")

    def _count_bad(self, path: str, reason: str) -> None:
        self.bad_images[path] = reason
        action = "substituting the next readable image" if self.substitute_bad_images else "excluding it"
        log.warning("bad image (%d so far in this process), %s: %s", self.num_skipped, action, reason)
        if self.num_skipped > self.max_bad_images:
            raise DataError(
                f"more than max_bad_images={self.max_bad_images} bad images (last: {reason}); "
                f"fix the data or raise max_bad_images"
            )

    def exclude(self, bad: Mapping[int, str]) -> None:
        """Remove images (index -> reason) from the index, e.g. those the pre-flight check found bad."""
        if not bad:
            return
        for i, reason in bad.items():
            self.excluded_images[str(self.image_path(i))] = reason
        keep = [i for i in range(len(self)) if i not in bad]
        for name in self.per_image:
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])
