"""LightningDataModules for the shapes, COCO and VOC data, all producing the batch format of
:func:`~ttfnet_lightning.data.collate.collate_detection`.

Every module exposes, right after construction (the LightningModule is built from them):
``num_classes``, ``class_names``, ``batch_size``, ``input_size`` (H, W), ``label_to_cat_id``
(COCO category id per label, None otherwise) and ``val_ann_file`` (the COCO val json, None
otherwise). Dataloaders: train shuffled (``drop_last`` only when the data set is larger than a
batch); val/test/predict = the validation set in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .coco import CocoDetection
from .collate import collate_detection
from .errors import DataError
from .shapes import DEFAULT_SHAPE_CLASSES, ShapesDataset
from .transforms import as_size, build_transforms
from .voc import VocDetection

__all__ = ["DetectionDataModule", "ShapesDataModule", "CocoDataModule", "VocDataModule"]

STRIDE = 32  # input sizes must be multiples of the backbone's total stride


class DetectionDataModule(pl.LightningDataModule):
    """Shared dataloader logic; subclasses set the attributes and build the data sets."""

    num_classes: int
    class_names: list[str]
    label_to_cat_id: list[int] | None = None
    val_ann_file: str | None = None

    def __init__(self, *, input_size: int | Sequence[int], batch_size: int, num_workers: int, augment: bool) -> None:
        super().__init__()
        self.input_size = as_size(input_size, name="input_size", multiple=STRIDE)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.augment = bool(augment)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    def train_transforms(self):
        return build_transforms(input_size=self.input_size, train=True, augment=self.augment)

    def val_transforms(self):
        return build_transforms(input_size=self.input_size, train=False)

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for dataloaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
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


class ShapesDataModule(DetectionDataModule):
    """Procedural shapes (:class:`ShapesDataset`) generated at ``input_size``.

    Args:
        input_size: (H, W), multiples of 32; also the generated image size.
        num_train, num_val: data set sizes.
        seed, val_seed: seeds of the train and val streams (different: no shared images).
        min_objects, max_objects: objects per image.
        batch_size, num_workers: dataloader settings.
        augment: SSD-style augmentations for training (see ``build_transforms``).
        classes: shape class names.
    """

    def __init__(
        self,
        *,
        input_size: int | Sequence[int] = (128, 128),
        num_train: int = 2000,
        num_val: int = 200,
        seed: int = 0,
        val_seed: int = 10_000,
        min_objects: int = 1,
        max_objects: int = 10,
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = False,
        classes: Sequence[str] = DEFAULT_SHAPE_CLASSES,
    ) -> None:
        super().__init__(input_size=input_size, batch_size=batch_size, num_workers=num_workers, augment=augment)
        self.num_train, self.num_val = int(num_train), int(num_val)
        self.seed, self.val_seed = int(seed), int(val_seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.classes = tuple(str(c) for c in classes)
        # validates the shape options now, and fixes class names before setup
        probe = self._dataset(num_images=0, seed=self.seed, train=False)
        self.class_names = probe.class_names
        self.num_classes = probe.num_classes

    def _dataset(self, *, num_images: int, seed: int, train: bool) -> ShapesDataset:
        return ShapesDataset(
            num_images=num_images,
            image_size=self.input_size,
            seed=seed,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            classes=self.classes,
            transforms=self.train_transforms() if train else self.val_transforms(),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = self._dataset(num_images=self.num_train, seed=self.seed, train=True)
        if self.val_dataset is None:
            self.val_dataset = self._dataset(num_images=self.num_val, seed=self.val_seed, train=False)


class CocoDataModule(DetectionDataModule):
    """COCO (:class:`CocoDetection`). The val annotation file is read at construction (it fixes
    the classes and ``label_to_cat_id``); the train file in ``setup`` (its categories must match).

    Args:
        root: COCO root (``annotations/instances_{split}.json``, ``{split}/``).
        train_split, val_split: split names.
        input_size: (H, W), multiples of 32.
        batch_size, num_workers: dataloader settings.
        augment: SSD-style augmentations for training.
        train_keep_empty, val_keep_empty: keep images without non-crowd boxes.
        skip_bad_images, max_bad_images: bad-image policy (see :class:`CocoDetection`).
    """

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
        train_keep_empty: bool = False,
        val_keep_empty: bool = True,
        skip_bad_images: bool = True,
        max_bad_images: int = 10,
    ) -> None:
        super().__init__(input_size=input_size, batch_size=batch_size, num_workers=num_workers, augment=augment)
        self.root = Path(root)
        self.train_split, self.val_split = train_split, val_split
        self.train_keep_empty, self.val_keep_empty = bool(train_keep_empty), bool(val_keep_empty)
        self.skip_bad_images, self.max_bad_images = bool(skip_bad_images), int(max_bad_images)
        self.val_dataset = CocoDetection(
            root=self.root,
            split=val_split,
            transforms=self.val_transforms(),
            keep_empty=self.val_keep_empty,
            skip_bad_images=self.skip_bad_images,
            max_bad_images=self.max_bad_images,
        )
        self.class_names = list(self.val_dataset.class_names)
        self.num_classes = self.val_dataset.num_classes
        self.label_to_cat_id = self.val_dataset.label_to_cat_id
        self.val_ann_file = str(self.val_dataset.ann_file)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            train = CocoDetection(
                root=self.root,
                split=self.train_split,
                transforms=self.train_transforms(),
                keep_empty=self.train_keep_empty,
                skip_bad_images=self.skip_bad_images,
                max_bad_images=self.max_bad_images,
            )
            if train.cat_ids != self.label_to_cat_id:
                raise DataError(
                    f"categories of {train.ann_file} ({len(train.cat_ids)}) differ from those of "
                    f"{self.val_ann_file} ({len(self.label_to_cat_id or [])}): both splits must list the same categories"
                )
            self.train_dataset = train


class VocDataModule(DetectionDataModule):
    """Pascal VOC layout (:class:`VocDetection`). The train split is read at construction (it
    fixes the classes when ``class_names`` is None); the val split uses the same classes.

    Args:
        root: VOC root.
        train_split, val_split: split file names (``ImageSets/Main/{split}.txt``).
        class_names: the classes (None: discovered from the train split's XML files).
        input_size: (H, W), multiples of 32.
        batch_size, num_workers: dataloader settings.
        augment: SSD-style augmentations for training.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        train_split: str = "train",
        val_split: str = "val",
        class_names: Sequence[str] | None = None,
        input_size: int | Sequence[int] = (512, 512),
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = False,
    ) -> None:
        super().__init__(input_size=input_size, batch_size=batch_size, num_workers=num_workers, augment=augment)
        self.root = Path(root)
        self.train_split, self.val_split = train_split, val_split
        self.train_dataset = VocDetection(
            root=self.root,
            split=train_split,
            class_names=None if class_names is None else [str(c) for c in class_names],
            transforms=self.train_transforms(),
            keep_empty=False,
        )
        self.class_names = list(self.train_dataset.class_names)
        self.num_classes = self.train_dataset.num_classes

    def setup(self, stage: str | None = None) -> None:
        if self.val_dataset is None:
            self.val_dataset = VocDetection(
                root=self.root,
                split=self.val_split,
                class_names=self.class_names,
                transforms=self.val_transforms(),
                keep_empty=True,
            )
