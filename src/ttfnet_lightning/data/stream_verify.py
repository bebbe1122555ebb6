"""Checksums of a prepared stream's chunks: written by :mod:`~ttfnet_lightning.data.prepare`,
checked when a :class:`~ttfnet_lightning.data.stream.CocoStreamDataModule` is set up.

``checksums.json`` (beside ``metadata.json``) holds, per split, the sha256 and size of the split's
litdata ``index.json`` and of every chunk file it lists. sha256 (hashlib): about 1.7 GB/s on one
core of a machine with SHA instructions, faster than blake2b (0.9 GB/s) or md5 (0.7 GB/s) there.

At setup, for a local stream: every chunk the index lists must exist with the size the index
records (a stat per chunk), and with ``checksums`` its content must match the recorded sha256.
Hashing reads the whole stream once (coco-mini: well under a second; COCO train2017, about
18 GB: ~10 s of CPU plus the disk read), so digests are cached per machine in
``<cache>/stream/verified`` keyed by (path, size, mtime, ctime, inode), trusted only for files
last modified well before they were hashed (so a file changed within the same clock tick is
hashed again). For a URL stream, the chunks are not on this machine at setup: its downloaded
``index.json`` is checked against ``checksums.json`` (same chunks, same sizes, same digest) and
each chunk's size and sha256 are checked by the data set when the chunk is first read after its
download (:class:`~ttfnet_lightning.data.stream_dataset.StreamingCocoDetection`). A stream
prepared before checksums existed (no ``checksums.json``) is checked for sizes only, with a
logged note.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from ttfnet_lightning.core.atomic import atomic_write
from ttfnet_lightning.data.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["CHECKSUMS", "file_sha256", "read_index", "split_checksums", "verify_index", "verify_local_split"]

CHECKSUMS = "checksums.json"
CHECKSUMS_FORMAT = "ttfnet-lightning/coco-stream-checksums"
INDEX = "index.json"
RACY_NS = 2_000_000_000  # a digest of a file modified less than this before it was hashed is not reused
_PREPARE_AGAIN = "prepare the stream again (python -m ttfnet_lightning.data.prepare ... overwrite=true)"


def is_url(path: str | Path) -> bool:
    """An object-store or other remote location litdata reads (``s3://``, ``gs://``, ``local:``...)."""
    s = str(path)
    return "://" in s or s.startswith("local:")


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file's content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_index(path: Path, split: str) -> list[dict[str, Any]]:
    """The chunks a litdata ``index.json`` lists: dicts with ``filename``, ``chunk_bytes``, ``chunk_size``.

    Raises:
        DataError: unreadable, not JSON, or without a well-formed chunk list (names the file and split).
    """
    try:
        chunks = json.loads(path.read_text(encoding="utf-8"))["chunks"]
        ok = isinstance(chunks, list) and all(
            isinstance(c["filename"], str)
            and "/" not in c["filename"]
            and "\\" not in c["filename"]
            and c["filename"] not in ("", ".", "..")
            and isinstance(c["chunk_bytes"], int)
            and isinstance(c["chunk_size"], int)
            for c in chunks
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"split '{split}': cannot read the chunk index {path} ({type(e).__name__}: {e}); {_PREPARE_AGAIN}"
        ) from None
    if not ok:
        raise DataError(
            f"split '{split}': the chunk index {path} does not list its chunks as litdata writes them; {_PREPARE_AGAIN}"
        )
    return chunks


def split_checksums(split_dir: Path, split: str) -> dict[str, Any]:
    """``{"index": {bytes, sha256}, "chunks": {filename: {bytes, sha256}}}`` of a freshly written split."""
    chunks = read_index(split_dir / INDEX, split)
    index = split_dir / INDEX
    return {
        "index": {"bytes": index.stat().st_size, "sha256": file_sha256(index)},
        "chunks": {
            c["filename"]: {
                "bytes": (split_dir / c["filename"]).stat().st_size,
                "sha256": file_sha256(split_dir / c["filename"]),
            }
            for c in chunks
        },
    }


def write_checksums(out: Path, splits: dict[str, dict[str, Any]]) -> None:
    """Write ``out/checksums.json`` (atomically)."""
    atomic_write(
        out / CHECKSUMS, json.dumps({"format": CHECKSUMS_FORMAT, "algorithm": "sha256", "splits": splits}, indent=1)
    )


def read_checksums(path: Path | None, where: str) -> dict[str, Any] | None:
    """The ``splits`` of a ``checksums.json``; None (with a logged note) when ``path`` is None or missing.

    Raises:
        DataError: the file exists but is not a checksum file of this format.
    """
    if path is None or not path.is_file():
        log.warning(
            "%s has no %s (prepared before chunk checksums existed): the content of its chunks cannot be "
            "verified, only their presence and sizes; prepare it again to add them",
            where,
            CHECKSUMS,
        )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if (
            data.get("format") != CHECKSUMS_FORMAT
            or data.get("algorithm") != "sha256"
            or not isinstance(data["splits"], dict)
        ):
            raise ValueError(f"not a {CHECKSUMS_FORMAT} file")
        return data["splits"]
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise DataError(f"cannot read the chunk checksums {path}: {type(e).__name__}: {e}; {_PREPARE_AGAIN}") from None


def verify_index(index_path: Path, split: str, sums: dict[str, Any] | None, num_images: int) -> list[dict[str, Any]]:
    """Check a split's ``index.json`` against its recorded checksums and the metadata's image count;
    returns its chunks (see :func:`read_index`).

    Raises:
        DataError: the index is unreadable, differs from the one ``prepare`` wrote, or lists
            another number of images than ``metadata.json`` (names the file and split).
    """
    chunks = read_index(index_path, split)
    problems = []
    if sums is not None:
        rec = sums.get("index", {})
        if file_sha256(index_path) != rec.get("sha256"):
            problems.append(f"{INDEX}: differs from the index prepare wrote (checksum)")
        listed = {c["filename"]: c["chunk_bytes"] for c in chunks}
        recorded = {
            k: v.get("bytes") if isinstance(v, dict) else None for k, v in dict(sums.get("chunks") or {}).items()
        }
        if listed != recorded:
            diff = sorted(set(listed) ^ set(recorded)) or sorted(k for k in listed if listed[k] != recorded[k])
            problems.append(f"{INDEX}: its chunk list differs from the recorded one ({', '.join(diff[:5])})")
    if sum(c["chunk_size"] for c in chunks) != num_images:
        problems.append(
            f"{INDEX}: lists {sum(c['chunk_size'] for c in chunks)} items, metadata.json {num_images} images"
        )
    if problems:
        raise DataError(
            f"stream split '{split}' ({index_path.parent}) does not match what prepare wrote:\n  "
            + "\n  ".join(problems)
            + f"\n{_PREPARE_AGAIN}"
        )
    return chunks


def _load_cache(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _digest(path: Path, st: Any, cache: dict[str, Any], fresh: dict[str, Any]) -> str:
    """sha256 of ``path`` (stat ``st``), from ``cache`` when the file is unchanged since a hash
    taken well after its last change; new digests go into ``fresh``."""
    key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    hit = cache.get(path.name)
    if (
        isinstance(hit, dict)
        and hit.get("key") == key
        and isinstance(hit.get("sha256"), str)
        and st.st_mtime_ns < int(hit.get("hashed_ns", 0)) - RACY_NS
    ):
        fresh[path.name] = hit
        return hit["sha256"]
    hashed_ns = time.time_ns()
    digest = file_sha256(path)
    fresh[path.name] = {"key": key, "sha256": digest, "hashed_ns": hashed_ns}
    return digest


def _chunk_problem(
    path: Path, chunk: dict[str, Any], sums: dict[str, Any] | None, cache: dict[str, Any], fresh: dict[str, Any]
) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    if not path.is_file():
        return "not a file"
    if st.st_size != chunk["chunk_bytes"]:
        return f"{st.st_size} bytes, the index says {chunk['chunk_bytes']} (truncated or damaged)"
    if sums is not None and _digest(path, st, cache, fresh) != sums["chunks"][path.name]["sha256"]:
        return "same size, but its content differs from the sha256 prepare recorded (damaged)"
    return None


def verify_local_split(
    split_dir: Path,
    split: str,
    *,
    sums: dict[str, Any] | None,
    num_images: int,
    checksums: bool = True,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Check a local split folder: its index (:func:`verify_index`), then every chunk it lists:
    present, of the recorded size and (``checksums`` and ``sums`` given) of the recorded sha256,
    with digests cached in ``cache_dir`` (None: no cache). Returns the index's chunks.

    Raises:
        DataError: one message naming the split and every missing, truncated or damaged chunk file.
    """
    chunks = verify_index(split_dir / INDEX, split, sums, num_images)
    cache_file = (
        None if cache_dir is None else cache_dir / f"{hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()}.json"
    )
    cache, fresh = _load_cache(cache_file), {}
    t0 = time.perf_counter()
    problems = [
        (c["filename"], why)
        for c in chunks
        if (why := _chunk_problem(split_dir / c["filename"], c, sums if checksums else None, cache, fresh))
    ]
    merged = {c["filename"]: e for c in chunks if (e := fresh.get(c["filename"], cache.get(c["filename"])))}
    if merged != cache and cache_file is not None:
        try:
            atomic_write(cache_file, json.dumps(merged))
        except OSError as e:  # a read-only cache only costs time
            log.debug("cannot cache chunk digests in %s: %s", cache_file, e)
    log.debug("verified %d chunk(s) of %s in %.2f s", len(chunks), split_dir, time.perf_counter() - t0)
    if problems:
        raise DataError(
            f"stream split '{split}' ({split_dir}): {len(problems)} of its {len(chunks)} chunk file(s) "
            f"are missing or damaged:\n"
            + "\n".join(f"  {split_dir / name}: {why}" for name, why in problems)
            + f"\n{_PREPARE_AGAIN}"
        )
    return chunks
