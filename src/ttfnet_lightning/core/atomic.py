"""Atomic, durable file writes: the one way this package writes a run's records (checkpoints,
``results.json``, ``detections_val.json``, ``config_resolved.yaml``, exported weights).

A reader (a rerun, the table builder, another machine after a power loss) sees either the old
file or the complete new one, never half a file: the bytes go to a temporary file in the same
folder, are flushed and fsync'ed, the file is renamed over the target (``os.replace``, atomic on
one file system), and the folder is fsync'ed so that the rename itself survives a crash. The
temporary file is removed on every failure.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path: str | Path) -> None:
    """fsync the directory ``path`` (makes a rename or a new file in it durable); a no-op where
    directories cannot be opened (Windows) or synced (some network file systems)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | bytearray | memoryview | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text encoded with ``encoding``) to ``path`` atomically and durably
    (``<name>.tmp`` in the same folder, flush + fsync, ``os.replace``, fsync of the folder). The
    folder is created if needed. Returns ``path``.

    Raises:
        IsADirectoryError: ``path`` is an existing directory (nothing is written).
        OSError: the write failed (disk full, no permission, ...); the temporary file is removed
            and an existing ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    payload = data.encode(encoding) if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
