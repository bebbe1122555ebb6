"""Fingerprints of the data a run is trained on: a content digest of each split's annotations.

A run stores the fingerprint of its data beside its config; a rerun that would resume or skip it
compares them (:func:`ttfnet_lightning.training.runs.check_same_data`), so that pointing a run at other
data is refused even where the data's location may change (``data.datamodule.root``).

Each data module class computes its own from its constructor options, without reading the data
set (``cls.data_fingerprint(**options)``: COCO: the annotation json of each split; VOC: the split
list and each listed XML file; the built-in shapes: their generating parameters; a prepared
stream: its metadata and chunk index). Only annotation files are read (never images); digests of
large files are cached by (path, size, mtime, ctime, inode), in memory and on disk.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_class

from ttfnet_lightning.core.atomic import atomic_write
from ttfnet_lightning.data.check import default_cache_dir
from ttfnet_lightning.data.paths import ImageFolder

log = logging.getLogger(__name__)

__all__ = [
    "file_digest",
    "params_digest",
    "combine_digests",
    "with_defaults",
    "voc_split_digest",
    "datamodule_fingerprint",
    "describe_data",
]

# files at least this large get their digest cached on disk too (small files hash faster than a cache look-up)
DISK_CACHE_MIN_BYTES = 8 << 20
_memo: dict[tuple[Any, ...], str] = {}


def _cache_base(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    # .check is imported when used: `python -m ttfnet_lightning.data.check` must not find it imported

    return default_cache_dir()


def file_digest(path: str | Path, *, cache_dir: str | Path | None = None) -> str | None:
    """``"sha256:<hex>"`` of the file's content; None when it does not exist (or is not a file).
    Cached by (resolved path, size, mtime, ctime, inode, device); files of at least
    ``DISK_CACHE_MIN_BYTES`` also in ``<cache_dir>/fingerprints`` (default: the pre-flight
    check's cache)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    if key in _memo:
        return _memo[key]
    entry = None
    if st.st_size >= DISK_CACHE_MIN_BYTES:
        entry = _cache_base(cache_dir) / "fingerprints" / hashlib.sha1(repr(key).encode()).hexdigest()
        try:
            cached = entry.read_text().strip()
            if cached.startswith("sha256:") and len(cached) == 71:
                _memo[key] = cached
                return cached
        except OSError:
            pass
    with open(path, "rb") as f:
        digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    _memo[key] = digest
    if entry is not None:
        try:
            atomic_write(entry, digest)
        except OSError as exc:  # a read-only cache only costs time
            log.debug("cannot cache the digest of %s in %s: %s", path, entry, exc)
    return digest


def params_digest(params: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of ``params`` as canonical JSON (sorted keys; tuples as lists)."""
    return "sha256:" + hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def combine_digests(parts: Sequence[tuple[str, str | None]]) -> str:
    """One digest of named parts (a missing part, None, counts as ``missing``)."""
    text = "\n".join(f"{name}\t{digest or 'missing'}" for name, digest in parts)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def with_defaults(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` restricted to ``cls.__init__``'s keyword arguments, with its defaults filled in.

    Raises:
        TypeError: a required argument is missing (named)."""
    params = inspect.signature(cls.__init__).parameters
    known = {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    missing = sorted(k for k, d in known.items() if d is inspect.Parameter.empty and k not in options)
    if missing:
        raise TypeError(f"{cls.__name__}.data_fingerprint: missing option(s) {missing}")
    return {k: options.get(k, d) for k, d in known.items()}


def voc_split_digest(root: Path, split: str, *, cache_dir: str | Path | None = None) -> str | None:
    """Digest of a VOC split: ``ImageSets/Main/{split}.txt`` and every ``Annotations/{name}.xml`` it
    lists (a listed file that is missing counts as ``missing``); None when the split file is missing."""
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    listed = file_digest(split_file, cache_dir=cache_dir)
    if listed is None:
        return None
    names = [
        line.split()[0]
        for line in split_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip()
    ]
    annotations = ImageFolder(root / "Annotations")
    parts: list[tuple[str, str | None]] = [(f"ImageSets/Main/{split}.txt", listed)]
    for n in names:
        # a name that leaves Annotations/ is never read (the data set refuses it by name when built)
        _, problem = annotations.resolve(f"{n}.xml")
        digest = None if problem else file_digest(root / "Annotations" / f"{n}.xml", cache_dir=cache_dir)
        parts.append((f"Annotations/{n}.xml", digest))
    return combine_digests(parts)


def _datamodule_class(options: Mapping[str, Any]) -> type | None:
    target = options.get("_target_")
    if not target:
        return None
    try:
        return get_class(str(target))
    except Exception as exc:  # the instantiation reports a bad _target_ itself
        log.debug("no data fingerprint: cannot import %s (%s)", target, exc)
        return None


def datamodule_fingerprint(options: Mapping[str, Any]) -> dict[str, str | None] | None:
    """Fingerprint ``{part: "sha256:..." | None}`` of the data that the data module config
    ``options`` (``data.datamodule``, resolved: ``_target_`` and its arguments) reads, computed by the
    class's ``data_fingerprint`` classmethod; None when the class has none. A part is None when its
    file is missing (the data module reports that when it is built)."""
    cls = _datamodule_class(options)
    compute = getattr(cls, "data_fingerprint", None)
    if compute is None:
        return None
    found = compute(**{k: v for k, v in options.items() if not str(k).startswith("_")})
    return dict(found) if found else None


def describe_data(options: Mapping[str, Any]) -> str:
    """``"<class> at <root>"`` of a data module config, for messages."""
    where = next((str(options[k]) for k in ("root", "input_dir") if options.get(k)), None)
    name = str(options.get("_target_", "data")).rsplit(".", 1)[-1]
    return f"{name} at {where}" if where else name
