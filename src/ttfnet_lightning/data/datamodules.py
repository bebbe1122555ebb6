"""LightningDataModules for COCO and VOC data (the shapes' module is in
:mod:`~ttfnet_lightning.data.shapes_datamodule`), all producing the batch format of
:func:`~ttfnet_lightning.data.collate.collate_detection`.

Every module exposes, right after construction (the LightningModule is built from them):
``num_classes``, ``class_names``, ``batch_size``, ``input_size`` (H, W), ``label_to_cat_id``
(COCO category id per label, None otherwise) and ``val_ann_file`` (the COCO val json, None
otherwise). Dataloaders: train shuffled (``drop_last`` only when the data set is larger than a
batch); val/test/predict = the validation set in order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ttfnet_lightning.data.check import check_datasets, default_cache_dir
from ttfnet_lightning.data.coco import CocoDetection
from ttfnet_lightning.data.collate import collate_detection
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.fingerprint import file_digest, voc_split_digest, with_defaults
from ttfnet_lightning.data.sample import ImageFileDataset
from ttfnet_lightning.data.transforms import AUGMENT_STYLES, as_size, build_transforms
from ttfnet_lightning.data.voc import VocDetection

if TYPE_CHECKING:
    from ttfnet_lightning.data.check import CheckReport

log = logging.getLogger(__name__)

__all__ = ["DetectionDataModule", "ImageFileDataModule", "CocoDataModule", "VocDataModule", "train_batches_per_epoch"]

STRIDE = 32  # input sizes must be multiples of the backbone's total stride


def drops_last_batch(num_images: int, batch_size: int) -> bool:
    """Whether the training loader drops the last partial batch: only when there is more than one batch."""
    return num_images > batch_size


def train_batches_per_epoch(num_images: int, batch_size: int) -> int:
    """Training batches (optimiser steps) per epoch of ``num_images`` images, by the loader's rule above."""
    return num_images // batch_size if drops_last_batch(num_images, batch_size) else 1


class DetectionDataModule(pl.LightningDataModule):
    """Shared dataloader logic; subclasses set the attributes and build the data sets."""

    num_classes: int
    class_names: list[str]
    label_to_cat_id: list[int] | None = None
    val_ann_file: str | None = None

    def __init__(
        self,
        *,
        input_size: int | Sequence[int],
        batch_size: int,
        num_workers: int,
        augment: bool,
        augment_style: str = "released",
    ) -> None:
        super().__init__()
        self.input_size = as_size(input_size, name="input_size", multiple=STRIDE)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.augment = bool(augment)
        if augment_style not in AUGMENT_STYLES:
            raise ValueError(f"augment_style must be one of {AUGMENT_STYLES}, got {augment_style!r}")
        self.augment_style = str(augment_style)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    @classmethod
    def data_fingerprint(cls, **options: Any) -> dict[str, str | None]:
        """Fingerprint of the data that ``cls(**options)`` reads, without reading the data set:
        ``{part: "sha256:..."}`` per split (None: a file that is missing). Unknown options are
        ignored. {} here: a subclass without a fingerprint (its runs' data are not checked)."""
        return {}

    def train_transforms(self):
        return build_transforms(
            input_size=self.input_size, train=True, augment=self.augment, augment_style=self.augment_style
        )

    def val_transforms(self):
        return build_transforms(input_size=self.input_size, train=False)

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for dataloaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and drops_last_batch(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # faster host-to-GPU copies; off on CPU-only machines
            collate_fn=collate_detection,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ImageFileDataModule(DetectionDataModule):
    """A data module reading image files (COCO, VOC): the bad-image options and the pre-flight
    check (:mod:`ttfnet_lightning.data.check`) run once per data set in ``setup``."""

    def __init__(
        self,
        *,
        skip_bad_images: bool,
        max_bad_images: int,
        preflight: bool,
        preflight_workers: int,
        check_cache_dir: str | Path | None,
        max_truncated_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.skip_bad_images, self.max_bad_images = bool(skip_bad_images), int(max_bad_images)
        self.max_truncated_fraction = float(max_truncated_fraction)
        self.preflight, self.preflight_workers = bool(preflight), int(preflight_workers)
        # .check is imported when used: `python -m ttfnet_lightning.data.check` must not find it imported

        self.check_cache_dir = Path(check_cache_dir) if check_cache_dir is not None else default_cache_dir()
        self._checked: set[int] = set()  # id() of the data sets already checked

    def bad_image_policy(self, *, train: bool) -> dict[str, Any]:
        """Data set keyword arguments: training substitutes a bad image, evaluation excludes it."""
        return {
            "skip_bad_images": self.skip_bad_images,
            "max_bad_images": self.max_bad_images,
            "substitute_bad_images": train,
            "max_truncated_fraction": self.max_truncated_fraction,
        }

    def image_datasets(self) -> dict[str, ImageFileDataset]:
        """The built data sets, by name (``train``, ``val``)."""
        sets = {"train": self.train_dataset, "val": self.val_dataset}
        return {k: v for k, v in sets.items() if isinstance(v, ImageFileDataset)}

    def check_data(self) -> CheckReport:
        """Pre-flight check of the built data sets (nothing excluded; see :func:`check_datasets`)."""

        return check_datasets(self.image_datasets(), cache_dir=self.check_cache_dir, workers=self.preflight_workers)

    def run_preflight(self) -> None:
        """Check the data sets not checked yet, log every problem in one list, raise on fatal
        problems, and remove the bad images from the index (excluded, never substituted)."""
        todo = {k: v for k, v in self.image_datasets().items() if id(v) not in self._checked}
        if not self.preflight or not todo:
            return

        report = check_datasets(todo, cache_dir=self.check_cache_dir, workers=self.preflight_workers)
        self._checked.update(id(v) for v in todo.values())
        if report.fatal:
            raise DataError(report.summary())
        (log.warning if report.problems else log.info)(report.summary())
        for name, bad in report.bad.items():
            if bad:
                todo[name].exclude(bad)
                log.warning(
                    "%s: excluded %d bad image(s) from the index: %s",
                    name,
                    len(bad),
                    sorted(todo[name].excluded_images),
                )


# ImageFileDataModule's arguments, passed on from the subclasses' own
_BASE_ARGS = (
    "input_size",
    "batch_size",
    "num_workers",
    "augment",
    "augment_style",
    "skip_bad_images",
    "max_bad_images",
    "preflight",
    "preflight_workers",
    "check_cache_dir",
    "max_truncated_fraction",
)
_CHECK_ARGS = """        skip_bad_images, max_bad_images: bad-image policy (see :class:`ImageFileDataset`): skip
            (training: substitute the next image; validation: exclude it from the metric) or raise.
        max_truncated_fraction: a truncated image missing more of its rows is a bad image.
        preflight: check every image once in ``setup`` (:mod:`ttfnet_lightning.data.check`).
        preflight_workers: threads of the check.
        check_cache_dir: cache of the check (None: ``~/.cache/ttfnet_lightning/data-check``)."""


class CocoDataModule(ImageFileDataModule):
    (
        """COCO (:class:`CocoDetection`). The val annotation file is read at construction (it fixes
    the classes and ``label_to_cat_id``); the train file in ``setup`` (its categories must match).

    Args:
        root: COCO root (``annotations/instances_{split}.json``, ``{split}/``).
        train_split, val_split: split names.
        input_size: (H, W), multiples of 32.
        batch_size, num_workers: dataloader settings.
        augment: SSD-style augmentations for training.
        augment_style: ``released`` (the released TTFNet code's) or ``torchvision``.
        train_keep_empty, val_keep_empty: keep images without non-crowd boxes.
    """
        + _CHECK_ARGS
    )

    def __init__(
        self,
        *,
        root: str | Path,
        train_split: str = "train2017",
        val_split: str = "val2017",
        input_size: int | Sequence[int] = (512, 512),
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = False,
        augment_style: str = "released",
        train_keep_empty: bool = False,
        val_keep_empty: bool = True,
        skip_bad_images: bool = True,
        max_bad_images: int = 10,
        preflight: bool = True,
        preflight_workers: int = 8,
        check_cache_dir: str | Path | None = None,
        max_truncated_fraction: float = 0.1,
    ) -> None:
        super().__init__(**{k: v for k, v in locals().items() if k in _BASE_ARGS})
        self.root = Path(root)
        self.train_split, self.val_split = train_split, val_split
        self.train_keep_empty, self.val_keep_empty = bool(train_keep_empty), bool(val_keep_empty)
        self.val_dataset = CocoDetection(
            root=self.root,
            split=val_split,
            transforms=self.val_transforms(),
            keep_empty=self.val_keep_empty,
            **self.bad_image_policy(train=False),
        )
        self.class_names = list(self.val_dataset.class_names)
        self.num_classes = self.val_dataset.num_classes
        self.label_to_cat_id = self.val_dataset.label_to_cat_id
        self.val_ann_file = str(self.val_dataset.ann_file)

    @classmethod
    def data_fingerprint(cls, **options: Any) -> dict[str, str | None]:
        """The content digest of each split's annotation file (``annotations/instances_{split}.json``)."""
        o = with_defaults(cls, options)
        root = Path(o["root"])
        files = {
            name: f"annotations/instances_{o[key]}.json"
            for name, key in (("train", "train_split"), ("val", "val_split"))
        }
        return {f"{name} {rel}": file_digest(root / rel, cache_dir=o["check_cache_dir"]) for name, rel in files.items()}

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            train = CocoDetection(
                root=self.root,
                split=self.train_split,
                transforms=self.train_transforms(),
                keep_empty=self.train_keep_empty,
                **self.bad_image_policy(train=True),
            )
            if train.cat_ids != self.label_to_cat_id:
                raise DataError(
                    f"categories of {train.ann_file} ({len(train.cat_ids)}) differ from those of "
                    f"{self.val_ann_file} ({len(self.label_to_cat_id or [])}): both splits must list the same "
                    "categories"
                )
            self.train_dataset = train
        self.run_preflight()


class VocDataModule(ImageFileDataModule):
    (
        """Pascal VOC layout (:class:`VocDetection`). The train split is read at construction (it
    fixes the classes when ``class_names`` is None); the val split uses the same classes.

    Args:
        root: VOC root.
        train_split, val_split: split file names (``ImageSets/Main/{split}.txt``).
        class_names: the classes (None: discovered from the train split's XML files, logged with
            their box counts).
        min_boxes_per_class: with ``class_names`` None, refuse a discovered class with fewer boxes
            (a misspelt name); 0 allows any.
        input_size: (H, W), multiples of 32.
        batch_size, num_workers: dataloader settings.
        augment: SSD-style augmentations for training.
        augment_style: ``released`` (the released TTFNet code's) or ``torchvision``.
    """
        + _CHECK_ARGS
    )

    def __init__(
        self,
        *,
        root: str | Path,
        train_split: str = "train",
        val_split: str = "val",
        class_names: Sequence[str] | None = None,
        min_boxes_per_class: int = 5,
        input_size: int | Sequence[int] = (512, 512),
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = False,
        augment_style: str = "released",
        skip_bad_images: bool = True,
        max_bad_images: int = 10,
        preflight: bool = True,
        preflight_workers: int = 8,
        check_cache_dir: str | Path | None = None,
        max_truncated_fraction: float = 0.1,
    ) -> None:
        super().__init__(**{k: v for k, v in locals().items() if k in _BASE_ARGS})
        self.root = Path(root)
        self.train_split, self.val_split = train_split, val_split
        self.train_dataset = VocDetection(
            root=self.root,
            split=train_split,
            class_names=None if class_names is None else [str(c) for c in class_names],
            min_boxes_per_class=min_boxes_per_class,
            transforms=self.train_transforms(),
            keep_empty=False,
            **self.bad_image_policy(train=True),
        )
        self.class_names = list(self.train_dataset.class_names)
        self.num_classes = self.train_dataset.num_classes

    @classmethod
    def data_fingerprint(cls, **options: Any) -> dict[str, str | None]:
        """Per split, the content digest of its list (``ImageSets/Main/{split}.txt``) and of every
        XML file it lists."""
        o = with_defaults(cls, options)
        root = Path(o["root"])
        return {
            f"{name} ImageSets/Main/{o[key]}.txt + Annotations/*.xml": voc_split_digest(
                root, str(o[key]), cache_dir=o["check_cache_dir"]
            )
            for name, key in (("train", "train_split"), ("val", "val_split"))
        }

    def setup(self, stage: str | None = None) -> None:
        if self.val_dataset is None:
            self.val_dataset = VocDetection(
                root=self.root,
                split=self.val_split,
                class_names=self.class_names,
                transforms=self.val_transforms(),
                keep_empty=True,
                **self.bad_image_policy(train=False),
            )
        self.run_preflight()
