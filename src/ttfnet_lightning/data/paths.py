"""A path read from an annotation file never leaves its folder.

A COCO ``file_name``, a VOC ``<filename>`` or a VOC split-file name is joined to a folder the user
chose (the image folder, ``Annotations/``). It is refused when it

* is absolute, in any platform's spelling: POSIX ``/etc/x``, Windows ``C:\\x``, ``C:x``, ``\\x``,
  UNC ``\\\\server\\x`` (refused on every platform, so a data set means the same everywhere);
* climbs above the folder with ``..`` (``/`` and ``\\`` both count as separators; ``a/../b.jpg``
  stays inside and is allowed), names the folder itself (``.``, ``a/..``), is empty or holds NUL;
* resolves, symbolic links included (a linked file or a linked sub-folder inside the folder),
  to a place outside the folder's resolved path. The folder itself may be a link (e.g.
  ``train2017 -> /mnt/disk/train2017``): containment is judged against where it points.

Cost (see ``benchmarks/bench_data_checks.py``): the folder is listed once (``os.scandir``, no
``stat`` per file); a plain name (no separator) that is not a link in that listing is inside by
construction and needs no further system call (all names of a folder without links are judged at
once, in two regular-expression scans); only links and names with sub-folders are resolved
(``os.path.realpath``, ~20 us each), and the folder itself only when one is. Matching against the listing ignores case
and Unicode
normalization, so a case-insensitive file system cannot slip a link past it (a false match costs
one ``realpath``, never a wrong answer).
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

from ttfnet_lightning.data.errors import DataError

__all__ = ["ImageFolder", "lexical_problem", "raise_problems"]

MAX_LISTED = 50  # problems named in one DataError (the rest are counted)
_ABSOLUTE = re.compile(r"^(?:[/\\]|[A-Za-z]:)")  # /x, \x, \\server\x, C:\x, C:x
_SEPARATORS = re.compile(r"[/\\]")
# a plain file name: no separator, drive colon or NUL, and not only dots / spaces (all lexically safe)
_PLAIN = re.compile(r"[^/\\:\x00]*[^/\\:\x00\s.][^/\\:\x00]*")


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def lexical_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a path relative to a folder, judged on the text alone
    (None: nothing). See the module docstring for the rules."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a file name"
    if not name.strip():
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if _ABSOLUTE.match(name):
        return "is an absolute path (a file name relative to the image folder is expected)"
    depth = 0
    for part in _SEPARATORS.split(name):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return "climbs out of its folder with '..'"
    if depth == 0:
        return "names the folder itself, not a file"
    return None


_BAD_CHAR = re.compile(r"[/\\:\x00]")
_BLANK = re.compile(r"\x01[\s.]*\x01")  # an empty / dots-only / blank name among \x01-joined names


def _all_plain(names: Sequence[object]) -> bool:
    """Whether every name is a plain file name (see ``_PLAIN``), judged on all names at once (two
    regular-expression scans of the joined names: C speed). False may be wrong (a name holding
    ``\x01``), never True: the caller then judges name by name."""
    try:
        joined = "\x01" + "\x01".join(names) + "\x01"  # type: ignore[arg-type]
    except TypeError:  # a name that is no string
        return False
    return _BAD_CHAR.search(joined) is None and _BLANK.search(joined) is None


def _is_flat(name: str) -> bool:
    return "/" not in name and "\\" not in name and name not in (".", "..")


class ImageFolder:
    """A folder whose files annotation entries name; judges and resolves those names.

    Args:
        folder: the folder (it may itself be a symbolic link).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._links: set[str] | None = None
        # set by problems(): every name judged was a plain entry (no sub-folder, no link), so each
        # file of the index sits directly in this folder
        self.plain_only: bool | None = None

    @functools.cached_property
    def real(self) -> str:
        """The folder's resolved path (resolved when first needed: never for plain names)."""
        return os.path.realpath(self.folder)

    @functools.cached_property
    def _prefix(self) -> str:
        return os.path.join(self.real, "")  # real path + separator

    @functools.cached_property
    def identity(self) -> tuple[int, int]:
        """(device, inode) of the folder (links followed): equal for two spellings of one folder."""
        st = os.stat(self.folder)
        return st.st_dev, st.st_ino

    def _linked_names(self) -> set[str]:
        """Folded names of the folder's top-level entries that are symbolic links (listed once)."""
        if self._links is None:
            links: set[str] = set()
            try:
                with os.scandir(self.folder) as entries:
                    for e in entries:
                        if e.is_symlink():
                            links.add(_fold(e.name))
            except OSError:
                pass  # a missing / unreadable folder: its files fail to open later, by name
            self._links = links
        return self._links

    def inside(self, real: str) -> bool:
        """Whether the resolved path ``real`` lies inside the folder."""
        return real.startswith(self._prefix) or real == self.real

    def resolve(self, name: object) -> tuple[str | None, str | None]:
        """``(key, None)`` when ``name`` (a path relative to the folder) stays inside, ``key`` naming
        the file it reaches (equal keys: the same file); ``(None, problem)`` when it does not. Judged
        when the index is built; a missing file is no problem here (it fails when read)."""
        lexical = lexical_problem(name)
        if lexical is not None:
            return None, lexical
        assert isinstance(name, str)
        if _is_flat(name) and _fold(name) not in self._linked_names():
            return name, None  # a plain entry of the folder (or a missing one): inside by construction
        real = os.path.realpath(os.path.join(self.real, name))
        if not self.inside(real):
            return None, f"resolves to {real}, outside the image folder {self.real} (through a symbolic link)"
        return os.path.relpath(real, self.real), None

    def problems(self, names: Sequence[object], label: Callable[[int], str]) -> list[str]:
        """Every name that leaves the folder (``"<label(k)>: file name '<name>' <problem>"``), then
        every file that two or more entries name (each entry is one image: a file listed twice is
        scored twice, each time with part of its boxes). ``label(k)`` names entry k (e.g. its id)."""
        out: list[str] = []
        links = self._linked_names()
        keys: list[str | None] = []
        self.plain_only = not links and _all_plain(names)
        if self.plain_only:
            keys = names  # type: ignore[assignment]  # the fast path: plain names of a folder without links
        else:
            for k, name in enumerate(names):
                if type(name) is str and _PLAIN.fullmatch(name) and (not links or _fold(name) not in links):
                    keys.append(name)  # a plain entry of the folder (or a missing one)
                    continue
                key, problem = self.resolve(name)
                keys.append(key)
                if problem is not None:
                    out.append(f"{label(k)}: file name {name!r} {problem}")
        found = keys if not out else [key for key in keys if key is not None]
        if len(set(found)) < len(found):
            by_key: dict[str, list[str]] = {}
            for k, key in enumerate(keys):
                if key is not None:
                    by_key.setdefault(key, []).append(label(k))
            for key, named in by_key.items():
                if len(named) > 1:
                    out.append(
                        f"file {key!r} is named by {len(named)} entries ({', '.join(named[:5])}"
                        f"{', ...' if len(named) > 5 else ''}): each file may be listed once"
                    )
        return out

    def verify(self, path: str | Path, *, entry: str = "") -> None:
        """Check a path just before it is read (the files may have changed since the index was built).

        Raises:
            DataError: ``path`` resolves outside the folder (names it and ``entry``).
        """
        real = os.path.realpath(path)
        if not self.inside(real):
            raise DataError(
                f"refusing to read {path}{f' ({entry})' if entry else ''}: it resolves to {real}, "
                f"outside the image folder {self.real}"
            )


def raise_problems(problems: Sequence[str], *, where: str) -> None:
    """Raise one :class:`DataError` listing ``problems`` (the first ``MAX_LISTED``, the rest counted).

    Raises:
        DataError: ``"<where>: N problem(s):"`` and the list, when there is any problem.
    """
    if not problems:
        return
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DataError(f"{where}: {len(problems)} problem(s):\n  {shown}{more}")
