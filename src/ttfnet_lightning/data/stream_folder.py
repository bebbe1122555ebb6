"""Where :mod:`ttfnet_lightning.data.prepare` may write, and what its ``overwrite=true`` may delete.

The rule: ``prepare`` writes into a new folder, an empty one, or (with ``overwrite=true`` only) a
folder that is recognisably a stream folder it wrote itself; it never writes into, deletes or
replaces anything else. A stream folder is recognisable when it holds the marker file
:data:`MARKER` (written by ``prepare`` first, before any chunk) or a stream ``metadata.json``
(folders prepared before the marker existed), and nothing else than what ``prepare`` writes:
``metadata.json``, ``checksums.json``, ``annotations/*.json`` and ``train/`` / ``val/`` holding
litdata chunks and index files only, all plain files and folders (no symbolic link). Whatever the
``overwrite`` flag, the output may not be the source data, lie inside it or contain it (symbolic
links resolved), nor lie inside another stream folder.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.stream import FORMAT_VERSION, METADATA, SPLITS, STREAM_FORMAT
from ttfnet_lightning.data.stream_verify import CHECKSUMS

__all__ = ["MARKER", "check_output", "clear_stream_folder", "stream_folder_problem", "write_marker"]

MARKER = ".ttfnet-stream"
ANNOTATIONS = "annotations"
_TOP_FILES = {MARKER, METADATA, f"{METADATA}.tmp", CHECKSUMS, f"{CHECKSUMS}.tmp"}
# litdata's chunk files and index files (merged, per worker ``0.index.json``, per node ``0-index.json``, temporary)
_SPLIT_FILE = re.compile(r"chunk-\d+-\d+(\.[A-Za-z0-9]+)?\.bin|index\.json(\.tmp)?|\d+[.-]index\.json")
_ANNOTATION_FILE = re.compile(r"[^/\\]+\.json")


def _within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def _resolve(path: str | Path) -> Path:
    """Absolute, ``~`` expanded, symbolic links and ``..`` resolved as the file system does."""
    return Path(path).expanduser().resolve()


def _is_ours(path: Path) -> bool:
    """``path`` holds a stream marker or a stream metadata file (not yet: only what else it holds)."""
    for name in (MARKER, METADATA):
        f = path / name
        if f.is_file() and not f.is_symlink():
            try:
                if json.loads(f.read_text(encoding="utf-8")).get("format") == STREAM_FORMAT:
                    return True
            except (OSError, ValueError, AttributeError):
                continue
    return False


def _unexpected(folder: Path, allowed: re.Pattern[str], *, prefix: str) -> list[str]:
    return [
        f"{prefix}{p.name}" + ("" if p.is_file() and not p.is_symlink() else " (not a plain file)")
        for p in sorted(folder.iterdir())
        if p.is_symlink() or not p.is_file() or not allowed.fullmatch(p.name)
    ]


def stream_folder_problem(path: Path) -> str | None:
    """None when ``path`` is recognisably a stream folder written by ``prepare`` (see the module
    docstring), else why not (names the first unexpected entries)."""
    if not path.is_dir() or path.is_symlink():
        return f"{path} is not a folder"
    if not _is_ours(path):
        return f"{path} holds no {MARKER} nor stream {METADATA}: it was not written by prepare"
    bad: list[str] = []
    for p in sorted(path.iterdir()):
        if p.is_symlink():
            bad.append(f"{p.name} (a symbolic link)")
        elif p.is_file() and p.name in _TOP_FILES:
            continue
        elif p.is_dir() and p.name in SPLITS:
            bad += _unexpected(p, _SPLIT_FILE, prefix=f"{p.name}/")
        elif p.is_dir() and p.name == ANNOTATIONS:
            bad += _unexpected(p, _ANNOTATION_FILE, prefix=f"{p.name}/")
        else:
            bad.append(p.name)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return f"{path} holds entries prepare does not write: {', '.join(bad[:5])}{more}"
    return None


def _check_sources(out: Path, output: str | Path, sources: Iterable[str | Path]) -> None:
    for src in sources:
        s = _resolve(src)
        if _within(out, s):
            where = "is" if out == s else "lies inside"
            raise DataError(
                f"output={output} ({out}) {where} the source data {s}: prepare never writes into its source; "
                f"choose a new folder outside it (overwrite=true does not change this)"
            )
        if _within(s, out):
            raise DataError(
                f"output={output} ({out}) contains the source data {s}: prepare never writes over its "
                f"source; choose a new folder outside it (overwrite=true does not change this)"
            )


def check_output(
    output: str | Path, *, sources: Iterable[str | Path] = (), overwrite: bool = False
) -> tuple[Path, bool]:
    """Check that ``prepare`` may write into ``output``; deletes nothing.

    Returns:
        (the resolved output folder, whether it holds a stream folder that must be cleared first,
        i.e. ``overwrite`` was given for an existing stream folder).

    Raises:
        DataError: ``output`` is, lies inside or contains one of ``sources`` (files or folders),
            lies inside a stream folder, is a file, is a non-empty folder that is not a stream
            folder written by ``prepare``, or is a stream folder and not ``overwrite``. The
            message names the folder and why.
    """
    out = _resolve(output)
    _check_sources(out, output, sources)
    for parent in out.parents:
        if _is_ours(parent):
            raise DataError(
                f"output={output} ({out}) lies inside the stream folder {parent}: choose a folder outside it"
            )
    if out.exists() and not out.is_dir():
        raise DataError(f"output={output} ({out}) is a file, not a folder: choose a new or empty folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out, False
    problem = stream_folder_problem(out)
    if problem is not None:
        raise DataError(
            f"output={output} ({out}) is a folder that is not empty and not a stream folder written by "
            f"prepare ({problem}); prepare writes only into a new or empty folder, and overwrite=true only "
            f"ever replaces a stream folder: choose another output"
        )
    if not overwrite:
        state = "a prepared stream folder" if (out / METADATA).is_file() else "an unfinished prepare (no metadata.json)"
        raise DataError(f"output={output} ({out}) already holds {state}; overwrite=true replaces it")
    return out, True


def clear_stream_folder(path: Path) -> None:
    """Delete the contents of the stream folder ``path`` (the folder itself stays).

    Raises:
        DataError: ``path`` is not (or no longer) recognisably a stream folder; nothing is deleted.
    """
    problem = stream_folder_problem(path)
    if problem is not None:
        raise DataError(f"refusing to delete the contents of {path}: {problem}")
    for p in sorted(path.iterdir(), key=lambda q: q.name == MARKER):  # the marker last: an interrupted clear stays ours
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def write_marker(path: Path, *, source: str) -> None:
    """Mark ``path`` as a stream folder written by ``prepare`` (first thing written into it)."""
    path.mkdir(parents=True, exist_ok=True)
    info = {
        "format": STREAM_FORMAT,
        "version": FORMAT_VERSION,
        "written_by": "ttfnet_lightning.data.prepare",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": source,
    }
    (path / MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")
