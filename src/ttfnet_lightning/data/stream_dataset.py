"""The litdata ``StreamingDataset`` of a prepared COCO split (imports litdata: import this module
only where a streaming data set is built; see :mod:`ttfnet_lightning.data.stream`)."""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataset
from torchvision import tv_tensors

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.sample import BadImage, BadImageCounts, decode_image, detection_sample, to_image_tensor
from ttfnet_lightning.data.stream_verify import INDEX, file_sha256, is_url

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
        chunk_checksums: for a URL ``input_dir``, the split's recorded chunks (``checksums.json``:
            ``{filename: {"bytes", "sha256"}}``): each chunk is checked (size, sha256) when first
            read after its download, in each process (None: not checked).

    Reads fail by name: a chunk that is missing or of another size than its index says when an
    item of it is first read, an item litdata cannot read or that does not form a sample, raise a
    :class:`DataError` naming the chunk file, the item's index and image id (and the cause).
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
        chunk_checksums: dict[str, Any] | None = None,
    ) -> None:
        if max_cache_size is None and not is_url(input_dir):
            # a local folder is read in place (no cache): any value does; an explicit one keeps litdata
            # from logging its default size in every worker of every epoch
            max_cache_size = 0.75
        extra: dict[str, Any] = {} if max_cache_size is None else {"max_cache_size": max_cache_size}
        super().__init__(
            input_dir,
            cache_dir=cache_dir,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
            storage_options=dict(storage_options or {}),
            **extra,
        )
        self.source = str(input_dir)
        self.image_ids = [int(i) for i in image_ids]
        self.transforms = transforms
        self.skip_bad_images = bool(skip_bad_images)
        self.max_bad_images = int(max_bad_images)
        self.bad_images: dict[str, str] = {}  # name -> reason, met by this process
        self.truncated_images: dict[str, str] = {}  # name -> strict decoder error, met by this process
        self.chunk_checksums = dict(chunk_checksums) if chunk_checksums is not None and is_url(input_dir) else None
        self.chunks = self._chunk_table()
        self._chunk_starts = [0]
        for _, _, count in self.chunks:
            self._chunk_starts.append(self._chunk_starts[-1] + count)
        self._checked_chunks: set[int] = set()  # chunks whose file this process has checked
        self._where = ""  # the item being turned into a sample (for messages)

    def _chunk_table(self) -> list[tuple[str, int, int]]:
        """(file name, bytes, items) of each chunk, from the index litdata read (local, or downloaded)."""
        try:
            chunks = json.loads((Path(self.input_dir.path or "") / INDEX).read_text(encoding="utf-8"))["chunks"]
            return [(str(c["filename"]), int(c["chunk_bytes"]), int(c["chunk_size"])) for c in chunks]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # litdata read it; without it, messages name the item only

    def _chunk_of(self, index: int) -> int | None:
        if not self.chunks or not 0 <= index < self._chunk_starts[-1]:
            return None
        return bisect.bisect_right(self._chunk_starts, index) - 1

    def _chunk_path(self, chunk: int) -> Path:
        return Path(self.input_dir.path or "") / self.chunks[chunk][0]

    def _chunk_state(self, chunk: int | None) -> str:
        """Where an item's chunk is and what state its file is in (for messages)."""
        if chunk is None:
            return "chunk unknown"
        path, name, size = self._chunk_path(chunk), self.chunks[chunk][0], self.chunks[chunk][1]
        where = f"chunk {self.source}/{name}" + (f" (downloaded to {path})" if is_url(self.source) else "")
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{where}: missing"
        return where + (f": {actual} bytes, the index says {size}" if actual != size else "")

    def _read_error(self, index: int, chunk: int | None, exc: BaseException | None = None) -> DataError:
        image_id = self.image_ids[index] if 0 <= index < len(self.image_ids) else "?"
        cause = "" if exc is None else f" ({type(exc).__name__}: {exc})"
        return DataError(
            f"split '{Path(self.source).name}': cannot read item {index} (image id {image_id}) from "
            f"{self._chunk_state(chunk)}{cause}; the stream is damaged: prepare it again"
        )

    def _check_chunk(self, index: int, chunk: int | None, *, downloaded: bool) -> None:
        """Local: the chunk exists with its index's size (before litdata waits for it). URL: after
        its download, its size and sha256 are the recorded ones."""
        if chunk is None or chunk in self._checked_chunks or is_url(self.source) != downloaded:
            return
        name, size, _ = self.chunks[chunk]
        path = self._chunk_path(chunk)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            if downloaded:  # already evicted from the cache: nothing to check
                return
            raise self._read_error(index, chunk) from None
        rec = (self.chunk_checksums or {}).get(name) if downloaded else None
        if actual != size or (
            rec is not None and (actual != rec.get("bytes") or file_sha256(path) != rec.get("sha256"))
        ):
            raise self._read_error(
                index,
                chunk,
                None if actual != size else ValueError("its content differs from the sha256 prepare recorded"),
            )
        self._checked_chunks.add(chunk)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.to_sample(it) for it in super().__getitem__(index)]
        pos = int(getattr(index, "index", index))
        chunk = self._chunk_of(pos)
        if chunk is not None and 0 <= getattr(index, "chunk_index", -1) < len(self.chunks):
            chunk = int(index.chunk_index)  # litdata's own (they agree: chunks hold consecutive items)
        if chunk is None and self.chunks:  # out of range: litdata's own error
            return self.to_sample(super().__getitem__(index))
        self._check_chunk(pos, chunk, downloaded=False)
        try:
            item = super().__getitem__(index)
        except DataError:
            raise
        except Exception as e:  # litdata's ChunkWaitTimeoutError, RuntimeError, reshape/decode errors of a bad chunk
            raise self._read_error(pos, chunk, e) from e
        self._check_chunk(pos, chunk, downloaded=True)
        self._where = f"item {pos}" + (f", chunk {self.source}/{self.chunks[chunk][0]}" if chunk is not None else "")
        try:
            return self.to_sample(item)
        except DataError:
            raise
        except Exception as e:  # fields that do not form a sample (e.g. boxes of a wrong shape)
            raise self._read_error(pos, chunk, e) from e

    def decode(self, item: dict[str, Any]) -> tv_tensors.Image:
        """The item's image as uint8 (3, H, W), with the folder loader's decode and checks.

        Raises:
            DataError: undecodable, or of another size than its annotation says (names the image).
        """
        where = f", {self._where}" if self._where else f", {self.source}"
        name = f"{bytes(item['file_name']).decode('utf-8')} (image id {int(item['image_id'])}{where})"
        rgb, truncated = decode_image(item["image"], name=name)
        if truncated is not None and name not in self.truncated_images:
            self.truncated_images[name] = truncated
            log.warning(
                "loaded truncated/damaged image %s with truncation allowed (%d such image(s) so far in this "
                "process; strict decoder said: %s)",
                name,
                self.num_truncated,
                truncated,
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
                    f"more than max_bad_images={self.max_bad_images} bad images (last: {e}); fix the data or raise "
                    "max_bad_images"
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
