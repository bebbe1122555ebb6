"""Data: the procedural shapes set, COCO and VOC readers, transforms, collation, data modules.

Sample format (every data set): ``dataset[i]`` -> ``(image, target)``; image ``tv_tensors.Image``
uint8 (3, H, W) RGB after the transforms; target dict with ``boxes`` (``BoundingBoxes`` xyxy
float32 (M, 4), transformed-image pixels), ``labels`` int64 (M,) in [0, C), ``image_id`` int,
``orig_size`` (h, w), and for evaluation ``gt_boxes`` float32 (N, 4) xyxy original-image pixels,
``gt_labels`` int64 (N,), ``gt_iscrowd`` int64 (N,) (crowd / difficult objects are 1), ``gt_area``
float32 (N,) (the area COCO's APs/APm/APl bucket by: COCO's annotation ``area``, else box area).
An evaluation set that skips a bad image returns a :class:`BadImage` instead (dropped by the collate).
Batches: see :func:`collate_detection`. Image reading policy and pre-flight check: see
:mod:`~ttfnet_lightning.data.sample` and :mod:`~ttfnet_lightning.data.check`. COCO in Lightning's
streaming format (litdata, the ``stream`` extra): :mod:`~ttfnet_lightning.data.prepare` writes it,
:class:`CocoStreamDataModule` (:mod:`~ttfnet_lightning.data.stream`) reads it.
"""

from ttfnet_lightning.data.coco import CocoDetection
from ttfnet_lightning.data.collate import collate_detection
from ttfnet_lightning.data.datamodules import (
    CocoDataModule,
    DetectionDataModule,
    ImageFileDataModule,
    VocDataModule,
)
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.sample import BadImage, ImageFileDataset
from ttfnet_lightning.data.shapes import DEFAULT_SHAPE_CLASSES, SHAPE_KINDS, ShapesDataset, render_shapes
from ttfnet_lightning.data.shapes_datamodule import ShapesDataModule
from ttfnet_lightning.data.stream import CocoStreamDataModule  # litdata is imported only when a stream is built
from ttfnet_lightning.data.transforms import build_transforms
from ttfnet_lightning.data.voc import VocDetection

__all__ = [
    "DataError",
    "BadImage",
    "ImageFileDataset",
    "ImageFileDataModule",
    "ShapesDataset",
    "render_shapes",
    "SHAPE_KINDS",
    "DEFAULT_SHAPE_CLASSES",
    "CocoDetection",
    "VocDetection",
    "build_transforms",
    "collate_detection",
    "DetectionDataModule",
    "ShapesDataModule",
    "CocoDataModule",
    "VocDataModule",
    "CocoStreamDataModule",
]
