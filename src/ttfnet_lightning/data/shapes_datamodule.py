"""The LightningDataModule of the built-in procedural shapes (:class:`ShapesDataset`), with the
attributes every data module exposes (:mod:`ttfnet_lightning.data.datamodules`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttfnet_lightning.data.datamodules import STRIDE, DetectionDataModule
from ttfnet_lightning.data.fingerprint import params_digest, with_defaults
from ttfnet_lightning.data.shapes import DEFAULT_SHAPE_CLASSES, ShapesDataset
from ttfnet_lightning.data.transforms import as_size

__all__ = ["ShapesDataModule"]


class ShapesDataModule(DetectionDataModule):
    """Procedural shapes (:class:`ShapesDataset`) generated at ``input_size``.

    Args:
        input_size: (H, W), multiples of 32; also the generated image size.
        num_train, num_val: data set sizes.
        seed, val_seed: seeds of the train and val streams (different: no shared images).
        min_objects, max_objects: objects per image.
        batch_size, num_workers: dataloader settings.
        augment: SSD-style augmentations for training (see ``build_transforms``).
        augment_style: ``released`` (the released TTFNet code's) or ``torchvision``.
        classes: shape class names.
        cache_mb: rendered samples kept in memory per process (:class:`ShapesDataset`), so that only the
            first epoch renders; 0: none.
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
        augment_style: str = "released",
        classes: Sequence[str] = DEFAULT_SHAPE_CLASSES,
        cache_mb: float = 0.0,
    ) -> None:
        super().__init__(
            input_size=input_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            augment_style=augment_style,
        )
        self.num_train, self.num_val = int(num_train), int(num_val)
        self.seed, self.val_seed = int(seed), int(val_seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.classes = tuple(str(c) for c in classes)
        self.cache_mb = float(cache_mb)
        # validates the shape options now, and fixes class names before setup
        probe = self._dataset(num_images=0, seed=self.seed, train=False)
        self.class_names = probe.class_names
        self.num_classes = probe.num_classes

    @classmethod
    def data_fingerprint(cls, **options: Any) -> dict[str, str | None]:
        """The generating parameters of each split (the images are rendered from them)."""
        o = with_defaults(cls, options)
        common = {
            "input_size": list(as_size(o["input_size"], name="input_size", multiple=STRIDE)),
            "classes": list(o["classes"]),
            "min_objects": int(o["min_objects"]),
            "max_objects": int(o["max_objects"]),
        }
        return {
            "train (generated shapes)": params_digest(
                dict(common, num_images=int(o["num_train"]), seed=int(o["seed"]))
            ),
            "val (generated shapes)": params_digest(
                dict(common, num_images=int(o["num_val"]), seed=int(o["val_seed"]))
            ),
        }

    def _dataset(self, *, num_images: int, seed: int, train: bool) -> ShapesDataset:
        return ShapesDataset(
            num_images=num_images,
            image_size=self.input_size,
            seed=seed,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            classes=self.classes,
            transforms=self.train_transforms() if train else self.val_transforms(),
            cache_mb=self.cache_mb,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = self._dataset(num_images=self.num_train, seed=self.seed, train=True)
        if self.val_dataset is None:
            self.val_dataset = self._dataset(num_images=self.num_val, seed=self.val_seed, train=False)
