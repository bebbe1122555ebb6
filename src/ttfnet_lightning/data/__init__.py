"""Data: the procedural shapes set, COCO and VOC readers, transforms, collation, data modules.

Sample format (every data set): ``dataset[i]`` -> ``(image, target)``; image ``tv_tensors.Image``
uint8 (3, H, W) RGB after the transforms; target dict with ``boxes`` (``BoundingBoxes`` xyxy
float32 (M, 4), transformed-image pixels), ``labels`` int64 (M,) in [0, C), ``image_id`` int,
``orig_size`` (h, w), and for evaluation ``gt_boxes`` float32 (N, 4) xyxy original-image pixels,
``gt_labels`` int64 (N,), ``gt_iscrowd`` int64 (N,) (crowd / difficult objects are 1).
Batches: see :func:`collate_detection`.
"""

from .coco import CocoDetection
from .collate import collate_detection
from .datamodules import CocoDataModule, DetectionDataModule, ShapesDataModule, VocDataModule
from .errors import DataError
from .shapes import DEFAULT_SHAPE_CLASSES, SHAPE_KINDS, ShapesDataset, render_shapes
from .transforms import build_transforms
from .voc import VocDetection

__all__ = [
    "DataError",
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
]
