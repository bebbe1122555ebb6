"""Write a COCO data set once in Lightning's streaming format (litdata chunks), for
``data=coco_stream`` (see :mod:`ttfnet_lightning.data.stream` for the folder layout).

    python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=/data/coco output=/data/coco-stream
    python -m ttfnet_lightning.train data=coco_stream data.datamodule.input_dir=/data/coco-stream

The overrides are those of ``ttfnet_lightning.training.run`` (composed with the package's
``conf/train.yaml``: ``data=coco`` and its ``data.datamodule.*``), plus this command's own:

* ``output=DIR`` (required): a local folder; put it on an object store afterwards, e.g.
  ``aws s3 sync DIR s3://bucket/coco-stream`` (``data.datamodule.input_dir=s3://bucket/coco-stream``);
* ``chunk_bytes=64MB``: size of each chunk file;
* ``workers=8``: threads reading the image files;
* ``overwrite=false``: replace an existing prepared folder.

``output`` must be a new folder, an empty one, or (with ``overwrite=true``) a stream folder written
by this command: one holding its marker file (``.ttfnet-stream``, written first) or a stream
``metadata.json``, and nothing else than what it writes (see
:mod:`~ttfnet_lightning.data.stream_folder`); anything else is refused, whatever ``overwrite``
says, and so is an output that is, lies inside or contains the source data (symbolic links
resolved). ``overwrite`` never deletes anything else. Beside the chunks, ``checksums.json`` records
the sha256 and size of every chunk and index (checked when the stream is set up, see
:mod:`~ttfnet_lightning.data.stream_verify`).

The images are the data module's own, after its pre-flight check (always run here, cached like
``ttfnet_lightning.data.check``): the folder loader's policy decides, i.e. with ``skip_bad_images``
(the default) missing/undecodable images are left out, counted and named in the log and in
``metadata.json``, otherwise they are fatal; the splits' ``keep_empty`` settings apply as in
``CocoDataModule`` (by default training images without a usable box are left out). Each image's
file is stored as it is on disk (no re-encode). Exit status: 0 written, 1 fatal image problems or
the output exists, 2 the data set cannot be built (annotation problems: the error lists them).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.data.coco import CocoDetection
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.stream import FORMAT_VERSION, METADATA, STREAM_FORMAT, is_url, require_litdata
from ttfnet_lightning.data.stream_folder import check_output, clear_stream_folder, write_marker
from ttfnet_lightning.data.stream_verify import split_checksums, write_checksums

log = logging.getLogger(__name__)

__all__ = ["main", "prepare_coco", "write_split"]

BLOCK = 256  # images read ahead (bounded memory)
OWN_KEYS = {"output": None, "chunk_bytes": "64MB", "workers": "8", "overwrite": "false"}


def _read(path: Path) -> bytes | DataError:
    try:
        return path.read_bytes()
    except OSError as e:
        return DataError(f"cannot read image file {path}: {type(e).__name__}: {e}")


def write_split(
    ds: CocoDetection, out_dir: Path, *, chunk_bytes: str | int = "64MB", workers: int = 8
) -> dict[str, Any]:
    """Write every image of ``ds`` (its index, after any exclusions) as litdata chunks in ``out_dir``.

    Returns the split's metadata: ``num_images``, ``num_boxes`` (non-crowd), ``image_ids`` in
    stored order, ``skipped`` (files unreadable now although the check passed them: path -> why;
    raises instead when ``ds`` does not skip bad images).
    """
    require_litdata()
    from litdata.streaming.writer import BinaryWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(out_dir), chunk_bytes=chunk_bytes)
    image_ids: list[int] = []
    skipped: dict[str, str] = {}
    num_boxes = 0
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for start in range(0, len(ds), BLOCK):
            idx = range(start, min(start + BLOCK, len(ds)))
            for i, data in zip(idx, pool.map(_read, [ds.image_path(i) for i in idx])):
                if isinstance(data, DataError):
                    if not ds.skip_bad_images:
                        raise data
                    skipped[str(ds.image_path(i))] = str(data)
                    log.warning("%s: skipping unreadable image: %s", out_dir.name, data)
                    continue
                ann = ds.annotations(i)
                h, w = ds.orig_sizes[i]
                writer.add_item(
                    len(image_ids),
                    {
                        "image": data,
                        "image_id": int(ds.image_ids[i]),
                        "file_name": ds.file_names[i].encode("utf-8"),  # bytes: litdata would read a str naming a file
                        "height": int(h),
                        "width": int(w),
                        "boxes": np.ascontiguousarray(ann["boxes"], dtype=np.float32).reshape(-1, 4),
                        "labels": np.ascontiguousarray(ann["labels"], dtype=np.int64),
                        "iscrowd": np.ascontiguousarray(ann["iscrowd"], dtype=np.int64),
                        "area": np.ascontiguousarray(ann["area"], dtype=np.float32),
                    },
                )
                image_ids.append(int(ds.image_ids[i]))
                num_boxes += int((ann["iscrowd"] == 0).sum())
    if not image_ids:
        raise DataError(f"no image left to write for {out_dir.name} ({ds.ann_file})")
    writer.done()
    writer.merge()
    return {"num_images": len(image_ids), "num_boxes": num_boxes, "image_ids": image_ids, "skipped": skipped}


def prepare_coco(
    dm: Any, output: str | Path, *, chunk_bytes: str | int = "64MB", workers: int = 8, overwrite: bool = False
) -> dict[str, Any]:
    """Write the train and val sets of a set-up :class:`~ttfnet_lightning.data.CocoDataModule`
    (``dm.setup("fit")`` and its pre-flight check done) into ``output``; returns the metadata
    (also written, last, as ``output/metadata.json``).

    Raises:
        DataError: ``output`` is a URL, is/lies inside/contains the source data, is not a new or empty
            folder nor a stream folder written by ``prepare``, or is one and not ``overwrite``
            (:func:`~ttfnet_lightning.data.stream_folder.check_output`).
    """
    if is_url(output):
        raise DataError(
            f"output={output}: prepare writes a local folder; copy it to the object store afterwards "
            f"(e.g. aws s3 sync DIR {output}) and stream from there"
        )
    sets = {"train": dm.train_dataset, "val": dm.val_dataset}
    out, clear = check_output(output, sources=_sources(dm), overwrite=overwrite)
    if clear:
        clear_stream_folder(out)
    try:
        write_marker(out, source=str(getattr(dm, "root", "")))
    except OSError as e:
        raise DataError(f"output={output}: cannot create the folder {out}: {type(e).__name__}: {e}") from None
    t0 = time.perf_counter()
    splits: dict[str, Any] = {}
    for name, ds in sets.items():
        info = write_split(ds, out / name, chunk_bytes=chunk_bytes, workers=workers)
        splits[name] = _split_record(ds, info)
        excluded = splits[name]["excluded"]
        log.info(
            "%s: %d image(s), %d box(es) written to %s; %d bad image(s) left out%s",
            name,
            info["num_images"],
            info["num_boxes"],
            out / name,
            len(excluded),
            "".join(f"\n  {p}: {r}" for p, r in excluded.items()),
        )
    val_ann = Path("annotations") / dm.val_dataset.ann_file.name
    (out / "annotations").mkdir(exist_ok=True)
    shutil.copyfile(dm.val_dataset.ann_file, out / val_ann)
    write_checksums(out, {name: split_checksums(out / name, name) for name in sets})  # before metadata.json
    litdata = require_litdata()
    meta = {
        "format": STREAM_FORMAT,
        "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "litdata": str(getattr(litdata, "__version__", "?")),
        "source_root": str(getattr(dm, "root", "")),
        "class_names": list(dm.class_names),
        "cat_ids": [int(c) for c in dm.label_to_cat_id],
        "val_annotations": val_ann.as_posix(),
        "chunk_bytes": chunk_bytes,
        "seconds": round(time.perf_counter() - t0, 1),
        "splits": splits,
    }
    tmp = out / f"{METADATA}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / METADATA)  # written last: its presence marks a finished prepare
    return meta


def _split_record(ds: Any, info: dict[str, Any]) -> dict[str, Any]:
    """metadata.json's entry of one split: what :func:`write_split` wrote (``info``) and where it came from;
    ``excluded`` = the data set's bad images and the ones skipped while writing."""
    excluded = dict(ds.excluded_images) | info.pop("skipped")
    return {
        **info,
        "source_split": ds.split,
        "ann_file": str(ds.ann_file),
        "image_dir": str(ds.image_dir),
        "keep_empty": ds.keep_empty,
        "dropped_without_boxes": {k: v for k, v in ds.dropped.items() if v},
        "num_excluded": len(excluded),
        "excluded": excluded,
    }


def _sources(dm: Any) -> list[Path]:
    """The data ``dm`` reads: its root, each split's image folder and annotation file."""
    found = [Path(dm.root)] if getattr(dm, "root", None) else []
    for ds in (dm.train_dataset, dm.val_dataset):
        found += [
            Path(p)
            for p in (getattr(ds, "root", None), getattr(ds, "image_dir", None), getattr(ds, "ann_file", None))
            if p
        ]
    return found


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


USAGE = (
    "usage: python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=/data/coco output=DIR "
    "[chunk_bytes=64MB] [workers=8] [overwrite=false] [other overrides of train]"
)
HELP = f"""Write a COCO data set once in Lightning's streaming format (litdata chunks, with checksums) for
data=coco_stream: the images after the data module's pre-flight check, each file stored as it is on
disk. The output must be a new or empty folder, or one this command wrote (overwrite=true); it may not
lie inside the source data. Needs the stream extra.

Examples:
  python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=/data/coco output=/data/coco-stream
  python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=/data/coco output=/data/coco-stream workers=16
  python -m ttfnet_lightning.train data=coco_stream data.datamodule.input_dir=/data/coco-stream

{USAGE}
More: docs/data.md"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ttfnet_lightning.data.prepare data=coco data.datamodule.root=... output=DIR``;
    returns the exit status (see the module docstring)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(HELP)
        return 0
    own, overrides = _split_args(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not own["output"]:
        print(USAGE, file=sys.stderr)
        return 2
    require_litdata()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    target = str(cfg.data.datamodule.get("_target_", ""))
    if not target.endswith("CocoDataModule"):
        print(
            f"prepare writes COCO data sets (data=coco), not data '{cfg.data.get('name')}' ({target})", file=sys.stderr
        )
        return 2
    try:  # before the (slow) data set build and pre-flight check; prepare_coco checks again with every source path
        if not is_url(own["output"]):
            check_output(
                own["output"], sources=[cfg.data.datamodule.get("root") or "."], overwrite=_bool(own["overwrite"])
            )
    except DataError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 1
    try:
        dm = instantiate(cfg.data.datamodule, preflight=False, _convert_="all")
        dm.setup("fit")
    except (DataError, InstantiationException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, DataError) else e  # hydra wraps the DataError
        if not isinstance(cause, DataError):
            raise
        print(f"prepare: the data set cannot be built:\n{cause}", file=sys.stderr)
        return 2
    try:
        dm.preflight = True  # the folder loader's bad-image policy, always (cached)
        dm.run_preflight()
        meta = prepare_coco(
            dm,
            own["output"],
            chunk_bytes=own["chunk_bytes"],
            workers=int(own["workers"]),
            overwrite=_bool(own["overwrite"]),
        )
    except DataError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 1
    _report(Path(own["output"]), meta)
    return 0


def _split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """prepare's own ``key=value`` arguments (OWN_KEYS, with their defaults) and the Hydra overrides."""
    own, overrides = dict(OWN_KEYS), []
    for a in args:
        key = a.split("=", 1)[0]
        if key in own and "=" in a:
            own[key] = a.split("=", 1)[1]
        else:
            overrides.append(a)
    return own, overrides


def _report(out: Path, meta: dict[str, Any]) -> None:
    print(f"prepared {out} in {meta['seconds']} s (litdata {meta['litdata']}):")
    for name, s in meta["splits"].items():
        print(
            f"  {name}: {s['num_images']} images, {s['num_boxes']} boxes, {s['num_excluded']} bad image(s) left out"
            + "".join(f"\n    {p}: {r}" for p, r in s["excluded"].items())
        )
    print(f"train with: python -m ttfnet_lightning.train data=coco_stream data.datamodule.input_dir={out.resolve()}")


if __name__ == "__main__":
    sys.exit(main())
