"""The litdata ``StreamingDataset`` of a prepared COCO split (imports litdata: import this module
only where a streaming data set is built; see :mod:`ttfnet_lightning.data.stream`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataset
from torchvision import tv_tensors

from .errors import DataError
from .sample import BadImage, BadImageCounts, decode_image, detection_sample, to_image_tensor
from .stream import is_url

log = logging.getLogger(__name__)

__all__ = ["StreamingCocoDetection"]


class StreamingCocoDetection(BadImageCounts, StreamingDataset):
    """One prepared COCO split, streamed: each item is what
    :class:`~ttfnet_lightning.data.coco.CocoDetection` returns for the same image (``(image,
    target)``, same decode, same transforms, same target keys), or a :class:`BadImage` for an item
    that does not decode when ``skip_bad_images`` (the collate drops it).

    litdata does the rest: chunks are assigned to DDP ranks and dataloader workers (each item once
    per epoch), ``shuffle`` permutes chunks and the items within them (differently each epoch,
    from ``seed``), a URL ``input_dir`` is downloaded chunk by chunk into ``cache_dir``.

    Args:
        input_dir: the split's folder (``<prepared>/train`` or ``<prepared>/val``), local or URL.
        image_ids: the split's image ids in stored order (``metadata.json``), as ``image_ids``; the
            order of an unshuffled loader with at most one worker on one process (more workers
            interleave their batches, deterministically).
        transforms: ``(image, target) -> (image, target)`` (see ``build_transforms``).
        shuffle, seed, drop_last, cache_dir, max_cache_size, storage_options: litdata's.
        skip_bad_images, max_bad_images: see :class:`~ttfnet_lightning.data.stream.CocoStreamDataModule`.
    """

    def __init__(
        self,
        input_dir: str,
        *,
        image_ids: Sequence[int] = (),
        transforms: Callable[..., Any] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | float | None = None,
        storage_options: dict[str, Any] | None = None,
        skip_bad_images: bool = True,
        max_bad_images: int = 10,
    ) -> None:
        if max_cache_size is None and not is_url(input_dir):
            # a local folder is read in place (no cache): any value does; an explicit one keeps litdata
            # from logging its default size in every worker of every epoch
            max_cache_size = 0.75
        extra: dict[str, Any] = {} if max_cache_size is None else {"max_cache_size": max_cache_size}
        super().__init__(
            input_dir, cache_dir=cache_dir, shuffle=shuffle, seed=int(seed), drop_last=drop_last,
            storage_options=dict(storage_options or {}), **extra,
        )
        self.source = str(input_dir)
        self.image_ids = [int(i) for i in image_ids]
        self.transforms = transforms
        self.skip_bad_images = bool(skip_bad_images)
        self.max_bad_images = int(max_bad_images)
        self.bad_images: dict[str, str] = {}  # name -> reason, met by this process
        self.truncated_images: dict[str, str] = {}  # name -> strict decoder error, met by this process

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        if isinstance(item, list):  # a slice
            return [self.to_sample(it) for it in item]
        return self.to_sample(item)

    def decode(self, item: dict[str, Any]) -> tv_tensors.Image:
        """The item's image as uint8 (3, H, W), with the folder loader's decode and checks.

        Raises:
            DataError: undecodable, or of another size than its annotation says (names the image).
        """
        name = f"{bytes(item['file_name']).decode('utf-8')} (image id {int(item['image_id'])}, {self.source})"
        rgb, truncated = decode_image(item["image"], name=name)
        if truncated is not None and name not in self.truncated_images:
            self.truncated_images[name] = truncated
            log.warning(
                "loaded truncated/damaged image %s with truncation allowed (%d such image(s) so far in this "
                "process; strict decoder said: %s)", name, self.num_truncated, truncated,
            )
        h, w = int(item["height"]), int(item["width"])
        if (rgb.height, rgb.width) != (h, w):
            raise DataError(f"image {name} is {rgb.width}x{rgb.height} (WxH) but its annotation says {w}x{h}")
        return to_image_tensor(rgb)

    def to_sample(self, item: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]] | BadImage:
        """A stored item -> ``(image, target)`` as :class:`CocoDetection` makes it."""
        try:
            image = self.decode(item)
        except DataError as e:
            if not self.skip_bad_images:
                raise
            name = bytes(item["file_name"]).decode("utf-8")
            self.bad_images[name] = str(e)
            log.warning("bad image (%d so far in this process), excluding it from its batch: %s", self.num_skipped, e)
            if self.num_skipped > self.max_bad_images:
                raise DataError(
                    f"more than max_bad_images={self.max_bad_images} bad images (last: {e}); fix the data or raise max_bad_images"
                ) from None
            return BadImage(image_id=int(item["image_id"]), path=name, reason=str(e))
        # np.array copies: litdata's arrays may be read-only views of a memory-mapped chunk
        return detection_sample(
            image,
            gt_boxes=torch.from_numpy(np.array(item["boxes"], dtype=np.float32).reshape(-1, 4)),
            gt_labels=torch.from_numpy(np.array(item["labels"], dtype=np.int64).reshape(-1)),
            gt_iscrowd=torch.from_numpy(np.array(item["iscrowd"], dtype=np.int64).reshape(-1)),
            gt_area=torch.from_numpy(np.array(item["area"], dtype=np.float32).reshape(-1)),
            image_id=int(item["image_id"]),
            transforms=self.transforms,
        )
