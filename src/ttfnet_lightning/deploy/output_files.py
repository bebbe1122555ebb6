"""Where the deployment commands (``export``, ``predict``) write: checks made before any work that
an output path is usable and never names a file the command was given (an input image, the source
checkpoint), and temporary files that never outlive a failure.

* :func:`check_output_file` -- a file to be written (``export output=...``): refuses an existing
  folder, a parent that is a file, a location that cannot be written and a protected file, each
  with an :class:`OutputPathError` naming the path; creates missing parent folders.
* :func:`temporary_path` -- a unique temporary name beside the output, removed when the block ends
  however it ends (any exception, ``KeyboardInterrupt`` included) unless it was published with
  :func:`publish` (an atomic rename onto the output).
* :func:`same_file` -- two paths naming one file (symlinks, hard links, letter case on
  case-insensitive file systems).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ttfnet_lightning.core.atomic import atomic_write, fsync_dir

__all__ = [
    "OutputPathError",
    "check_output_file",
    "temporary_path",
    "publish",
    "write_text_atomic",
    "write_with_sidecar",
    "same_file",
]


class OutputPathError(ValueError):
    """An output path that cannot or must not be written (the message names it and why)."""


def same_file(a: str | Path, b: str | Path) -> bool:
    """``True`` when ``a`` and ``b`` name the same file: equal once symlinks and ``..`` are resolved,
    or (both existing) the same inode -- a hard link, or another spelling on a case-insensitive file
    system. Never raises."""
    a, b = Path(a), Path(b)
    with contextlib.suppress(OSError, RuntimeError):
        if a.resolve() == b.resolve():
            return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path with none)."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(".")


def check_output_file(path: str | Path, *, what: str = "output", protected: Sequence[str | Path] = ()) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known to be writable as a file; its parent
    folders are created. Call it before the work whose result goes there.

    Raises:
        OutputPathError: ``path`` names a folder (an existing one, or a name ending in a slash),
            a parent on the way is a file, the folder cannot be created or written, or ``path`` is
            one of ``protected`` (files the command reads and must not overwrite).
    """
    raw = str(path)
    path = Path(path)
    if not raw or raw.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise OutputPathError(f"{what} {raw!r} names a folder; give a file path (e.g. {path / 'model.onnx'})")
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is an existing directory; give a file path (e.g. {path / 'model.onnx'})")
    for p in protected:
        if same_file(path, p):
            raise OutputPathError(
                f"{what} {path} is {p}, which this command reads: it would be overwritten; choose another path"
            )
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise OutputPathError(f"{what} {path}: {ancestor} is a file, not a folder, so {path.parent} cannot be created")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary_path(path) as probe:
            probe.touch(exist_ok=False)
    except OSError as exc:
        raise OutputPathError(f"{what} {path}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
    return path


@contextlib.contextmanager
def temporary_path(path: str | Path) -> Iterator[Path]:
    """A fresh, unused temporary name in ``path``'s folder (``.<name>.<random>.tmp``: the final
    rename stays on one file system), not created; whatever exists under it when the block ends
    -- normally or by any exception, ``KeyboardInterrupt`` included -- is removed, unless
    :func:`publish` moved it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: str | Path) -> None:
    """Moves the finished ``tmp`` onto ``path`` in one atomic rename: a reader sees the old file or
    the new one, never half of one; an existing ``path`` (or a symlink there) is replaced, not
    written through. The data is flushed to disk first."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)  # the rename itself survives a crash (as :func:`atomic_write` does)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path.write_text(text)`` atomically and durably: the package's one writer of whole files,
    :func:`ttfnet_lightning.core.atomic.atomic_write` (no partial file, no temporary left on any failure)."""
    atomic_write(path, text)


def write_with_sidecar(
    path: Path,
    write: Callable[[Path], None],
    *,
    sidecar: Path,
    sidecar_text: Callable[[], str],
    check: Callable[[Path], None] | None = None,
) -> None:
    """A file and its text sidecar (an exported model and its metadata), published together:
    ``write(tmp)`` writes the file to a temporary name beside ``path``, ``check(tmp)`` may verify it,
    then ``sidecar_text()`` is written and both are renamed into place (the file first). On any
    failure (``KeyboardInterrupt`` included) both temporary files are removed and ``path`` and
    ``sidecar`` are left as they were."""
    with temporary_path(path) as tmp, temporary_path(sidecar) as tmp_side:
        write(tmp)
        if check is not None:
            check(tmp)
        tmp_side.write_text(sidecar_text())
        publish(tmp, path)
        publish(tmp_side, sidecar)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
