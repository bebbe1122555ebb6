"""COCO in Lightning's streaming format (litdata): many nodes read a few large chunk files (from a
local folder or an object store) instead of 118k JPEG files on shared storage.

    python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=/data/coco output=/data/coco-stream
    python -m ttfnet_lightning.train data=coco_stream data.datamodule.input_dir=/data/coco-stream   # or s3://bucket/coco-stream

A prepared folder (written by :mod:`ttfnet_lightning.data.prepare`, once):

* ``train/``, ``val/``: litdata chunks + ``index.json``; one item per image: ``image`` (the file's
  encoded bytes as they are on disk, never re-encoded), ``image_id``, ``file_name`` (UTF-8 bytes),
  ``height``, ``width`` (the annotation's size), and the annotations as
  :class:`~ttfnet_lightning.data.coco.CocoDetection` indexes them: ``boxes`` float32 (N, 4) xyxy
  original pixels (clipped, degenerate boxes dropped), ``labels`` int64 (N,) contiguous,
  ``iscrowd`` int64 (N,), ``area`` float32 (N,);
* ``annotations/``: a copy of the validation annotation file (for COCOeval in ``evaluate``);
* ``metadata.json`` (written last: a folder without it is an unfinished prepare): class names,
  category ids, per split the number of images and boxes, the image ids in stored order, the
  images the pre-flight check excluded (with why), the source annotation files;
* ``checksums.json``: the size and sha256 of each split's ``index.json`` and chunk files, checked
  at setup (:mod:`~ttfnet_lightning.data.stream_verify`; folders prepared without it load with
  sizes checked only and a logged note);
* ``.ttfnet-stream``: the marker ``prepare`` writes first (what ``overwrite=true`` may replace:
  :mod:`~ttfnet_lightning.data.stream_folder`).

:class:`CocoStreamDataModule` streams them with litdata's ``StreamingDataset`` (subclassed in
:mod:`~ttfnet_lightning.data.stream_dataset`): each item decoded with the folder loader's decode
(:func:`~ttfnet_lightning.data.sample.decode_image`, same truncation policy) and turned into the same
``(image, target)`` as ``CocoDetection`` (same transforms, same target keys). litdata shards the
chunks across DDP ranks and dataloader workers itself (every image once per epoch; under DDP the
training set drops the few images that would leave the ranks uneven), shuffles the training set
(the chunks' order and the items within them, differently each epoch) and keeps the validation
order (every image once, also under DDP). ``input_dir`` may be a URL (``s3://``, ``gs://``, ``azure://``,
``hf://``...): chunks are
downloaded into ``cache_dir`` as they are needed; credentials come from the environment (e.g.
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``~/.aws``, instance roles),
``storage_options`` passes extra client options (e.g. ``endpoint_url`` of an S3-compatible store).

litdata is an optional dependency (``pip install 'ttfnet-lightning[stream]'``): nothing here
imports it until a streaming data set is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ttfnet_lightning.data.check import default_cache_dir
from ttfnet_lightning.data.collate import collate_detection
from ttfnet_lightning.data.datamodules import DetectionDataModule
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.fingerprint import combine_digests, file_digest
from ttfnet_lightning.data.stream_verify import (
    CHECKSUMS,
    INDEX,
    is_url,
    read_checksums,
    verify_index,
    verify_local_split,
)

log = logging.getLogger(__name__)

__all__ = ["CocoStreamDataModule", "METADATA", "STREAM_FORMAT", "is_url", "read_metadata", "require_litdata"]

STREAM_FORMAT = "ttfnet-lightning/coco-stream"
FORMAT_VERSION = 1
METADATA = "metadata.json"
SPLITS = ("train", "val")


def require_litdata() -> Any:
    """``import litdata``, or an ImportError that names the extra to install."""
    try:
        import litdata
    except ImportError as e:
        raise ImportError(
            f"the streaming data format (data=coco_stream, ttfnet_lightning.data.prepare) needs litdata, which is not "
            f"installed ({e}): pip install 'ttfnet-lightning[stream]'"
        ) from e
    return litdata


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local folder or a URL (URLs keep their scheme and use ``/``)."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).joinpath(*parts))


def stream_cache_dir() -> Path:
    """Where files of remote stream folders (metadata, val annotations) are kept:
    ``<ttfnet_lightning cache>/stream`` (the cache of :func:`~ttfnet_lightning.data.check.default_cache_dir`)."""

    return default_cache_dir().parent / "stream"


def fetch(input_dir: str, rel: str, dest_dir: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """A local path of the file ``rel`` of a stream folder: itself for a local folder, else a copy
    downloaded with litdata's downloader into ``dest_dir``.

    Raises:
        DataError: the file does not exist or cannot be downloaded (names it).
    """
    if not is_url(input_dir):
        path = Path(input_dir) / rel
        if not path.is_file():
            raise DataError(
                f"{path} not found: {input_dir} is not a prepared stream folder, or its prepare did not finish "
                f"(python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=... output={input_dir})"
            )
        return path.absolute()
    require_litdata()
    from litdata.streaming.downloader import get_downloader

    dest = dest_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    remote = join(input_dir, rel)
    try:
        get_downloader(input_dir, str(dest_dir), [], storage_options or {}).download_file(remote, str(dest))
    except Exception as e:  # botocore / gcs / azure errors have no common base class
        raise DataError(
            f"cannot download {remote} ({type(e).__name__}: {e}); is {input_dir} a prepared stream folder, and are the "
            "object store's credentials in the environment (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE)?"
        ) from None
    if not dest.is_file():
        raise DataError(f"cannot download {remote}: nothing was written to {dest}")
    return dest


def read_metadata(path: Path) -> dict[str, Any]:
    """Read and check a stream folder's ``metadata.json``."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the stream metadata {path}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
        raise DataError(
            f"{path} is not the metadata of a ttfnet-lightning COCO stream folder (format {STREAM_FORMAT!r})"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: stream format version {meta.get('version')}, this ttfnet-lightning reads version "
            f"{FORMAT_VERSION}; "
            f"prepare the folder again with this version"
        )
    return meta


class CocoStreamDataModule(DetectionDataModule):
    """COCO from a prepared stream folder (:mod:`ttfnet_lightning.data.prepare`), read with litdata.

    ``dataset[i]`` and the batches are those of :class:`~ttfnet_lightning.data.CocoDataModule`
    on the data it was prepared from (same images, same targets, same transforms). The metadata
    (classes, category ids, val annotation file) is read at construction; the streaming data sets
    are built in ``setup``, i.e. in each DDP process after the process group exists, so that litdata
    shards them across ranks (and across each rank's dataloader workers).

    Args:
        input_dir: the prepared folder: a local path or a URL (``s3://bucket/prefix``,
            ``gs://...``, ``azure://...``, ``hf://...``); credentials come from the environment.
        cache_dir: where litdata keeps downloaded chunks of a URL (None: litdata's default); a
            local ``input_dir`` is read in place.
        max_cache_size: the chunk cache's size limit (e.g. ``"50GB"``; None: litdata's default).
        storage_options: extra object-store client options (e.g. ``{endpoint_url: ...}``).
        input_size: (H, W), multiples of 32.
        batch_size, num_workers: dataloader settings (per process).
        augment: SSD-style augmentations for training.
        augment_style: ``released`` (the released TTFNet code's) or ``torchvision``.
        shuffle: shuffle the training set (each epoch differently); validation is never shuffled.
        seed: litdata's shuffle seed (the order is a function of seed and epoch).
        skip_bad_images, max_bad_images: an item that does not decode (the prepare already excluded
            the images the pre-flight check found bad, so this means a damaged chunk) is dropped
            from its batch and counted (at most ``max_bad_images``), or raises.
        verify_checksums: at setup, check each local chunk's content against the sha256 ``prepare``
            recorded (digests cached per machine, see :mod:`~ttfnet_lightning.data.stream_verify`);
            False: presence and sizes only. A URL stream's chunks are checked after their download.

    Raises (at setup):
        DataError: a chunk listed in a split's index is missing, of another size than recorded or
            (``verify_checksums``) of other content; the index differs from the one ``prepare``
            wrote. The message names the split and every such chunk file.
    """

    def __init__(
        self,
        *,
        input_dir: str | Path,
        cache_dir: str | Path | None = None,
        max_cache_size: str | None = None,
        storage_options: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = (512, 512),
        batch_size: int = 16,
        num_workers: int = 2,
        augment: bool = False,
        augment_style: str = "released",
        shuffle: bool = True,
        seed: int = 0,
        skip_bad_images: bool = True,
        max_bad_images: int = 10,
        verify_checksums: bool = True,
    ) -> None:
        super().__init__(
            input_size=input_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            augment_style=augment_style,
        )
        require_litdata()
        self.input_dir = str(input_dir)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.max_cache_size = max_cache_size
        self.storage_options = dict(storage_options or {})
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.skip_bad_images, self.max_bad_images = bool(skip_bad_images), int(max_bad_images)
        self.verify_checksums = bool(verify_checksums)
        if is_url(self.input_dir):
            key = hashlib.sha1(self.input_dir.encode()).hexdigest()[:16]
            self._files = (Path(self.cache_dir) / "ttfnet-meta" if self.cache_dir else stream_cache_dir()) / key
        else:
            self._files = Path(self.input_dir)
        self.meta = read_metadata(fetch(self.input_dir, METADATA, self._files, self.storage_options))
        self.class_names = [str(c) for c in self.meta["class_names"]]
        self.num_classes = len(self.class_names)
        self.label_to_cat_id = [int(c) for c in self.meta["cat_ids"]]
        ann = self.meta.get("val_annotations")
        self.val_ann_file = str(fetch(self.input_dir, ann, self._files, self.storage_options)) if ann else None
        self._checksums: dict[str, Any] | None = None
        self._checksums_read = False

    @classmethod
    def data_fingerprint(cls, **options: Any) -> dict[str, str | None]:
        """Per split: the digest of ``metadata.json`` (classes, image ids, box counts) and of the
        split's ``index.json`` (its chunks), fetched like the metadata for a URL ``input_dir``."""
        input_dir, cache_dir = str(options["input_dir"]), options.get("cache_dir")
        key = hashlib.sha1(input_dir.encode()).hexdigest()[:16]
        files = (
            ((Path(cache_dir) / "ttfnet-meta" if cache_dir else stream_cache_dir()) / key)
            if is_url(input_dir)
            else Path(input_dir)
        )
        get = lambda rel: file_digest(fetch(input_dir, rel, files, options.get("storage_options")))  # noqa: E731
        meta = get(METADATA)
        return {
            f"{s} {METADATA} + {s}/index.json": combine_digests(
                [(METADATA, meta), ("index.json", get(f"{s}/index.json"))]
            )
            for s in SPLITS
        }

    def split_dir(self, split: str) -> str:
        return join(self.input_dir, split)

    def _split_checksums(self, split: str) -> dict[str, Any] | None:
        """The split's recorded checksums (``checksums.json``; None for a stream prepared without)."""
        if not self._checksums_read:
            path: Path | None
            try:
                path = fetch(self.input_dir, CHECKSUMS, self._files, self.storage_options)
            except DataError:  # a stream prepared before checksums existed (read_checksums logs it)
                path = None
            self._checksums, self._checksums_read = read_checksums(path, self.input_dir), True
        if self._checksums is None:
            return None
        if not isinstance(self._checksums.get(split), dict):
            raise DataError(
                f"{join(self.input_dir, CHECKSUMS)} records no checksums of split '{split}'; prepare the stream again"
            )
        return self._checksums[split]

    def verify_split(self, split: str) -> dict[str, Any] | None:
        """Check the split's chunks (see ``verify_checksums``); returns its recorded chunk checksums."""
        sums = self._split_checksums(split)
        num_images = len(self.meta["splits"][split]["image_ids"])
        if is_url(self.input_dir):
            index = fetch(self.input_dir, f"{split}/{INDEX}", self._files, self.storage_options)
            verify_index(index, split, sums, num_images)
        else:
            verify_local_split(
                Path(self.input_dir) / split,
                split,
                sums=sums,
                num_images=num_images,
                checksums=self.verify_checksums,
                cache_dir=stream_cache_dir() / "verified",
            )
        return None if sums is None else dict(sums.get("chunks") or {})

    def _dataset(self, split: str, *, train: bool) -> Dataset:
        from ttfnet_lightning.data.stream_dataset import StreamingCocoDetection

        chunk_checksums = self.verify_split(split)
        return StreamingCocoDetection(
            self.split_dir(split),
            image_ids=self.meta["splits"][split]["image_ids"],
            transforms=self.train_transforms() if train else self.val_transforms(),
            shuffle=self.shuffle and train,
            seed=self.seed,
            # validation: every image once, also under DDP (litdata would drop the remainder to even the ranks out)
            drop_last=None if train else False,
            cache_dir=None if self.cache_dir is None else join(self.cache_dir, split),
            max_cache_size=self.max_cache_size,
            storage_options=self.storage_options,
            skip_bad_images=self.skip_bad_images,
            max_bad_images=self.max_bad_images,
            chunk_checksums=chunk_checksums if self.verify_checksums else None,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset("train", train=True)
        if self.val_dataset is None:
            self.val_dataset = self._dataset("val", train=False)

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for dataloaders")
        from litdata import StreamingDataLoader

        # litdata's loader: sets the epoch of the shuffle, and its state_dict lets Lightning resume mid-epoch.
        # No persistent workers: each epoch's workers get the data set with that epoch's shuffle.
        return StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_detection,
        )
