"""The files of ``predict``: which inputs it reads (:func:`list_images`: an image, a folder of images
or a glob pattern) and where its outputs go (:func:`output_names`, :func:`check_output_folder`:
never onto an input)."""

from __future__ import annotations

import glob
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttfnet_lightning.deploy.output_files import OutputPathError, same_file
from ttfnet_lightning.training.error_analysis import best_score_threshold
from ttfnet_lightning.training.records import run_folder

__all__ = ["IMAGE_SUFFIXES", "RESULT_FILES", "list_images", "output_names", "check_output_folder", "draw_threshold"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
RESULT_FILES = ("detections.json", "images.json")  # written beside the drawn images
GLOB_CHARS = "*?["
DEFAULT_DRAW_THRESHOLD = 0.3  # when the checkpoint's run has no error analysis


def draw_threshold(cfg: Any) -> float:
    """``cfg.draw_threshold``; when null (the default), the F1-best score threshold of the error
    analysis in the checkpoint's run folder (``<run>/analysis/summary.json``, written at the end of
    training), else :data:`DEFAULT_DRAW_THRESHOLD`; which one is used is printed."""
    if cfg.get("draw_threshold") is not None:
        return float(cfg.draw_threshold)
    run = run_folder(str(cfg.ckpt))
    best = None if str(cfg.ckpt).lower().endswith(".onnx") else best_score_threshold(run)
    if best is None:
        print(f"draw_threshold {DEFAULT_DRAW_THRESHOLD} (no error analysis with a best threshold in {run})")
        return DEFAULT_DRAW_THRESHOLD
    print(f"draw_threshold {best:.3f}: the F1-best score threshold of the run's error analysis ({run}/analysis)")
    return best


def list_images(path: str | Path) -> list[Path]:
    """An image file, the image files of a directory (sorted, not recursive; an entry with an
    image suffix that cannot be read -- a broken link, say -- is listed, to be skipped and named),
    or the image files a glob pattern matches (``imgs/*.jpg``, ``frames/**/*.png``: sorted; quote a
    pattern with ``[`` on Hydra's command line: ``input='imgs/[ab]*.jpg'``).

    Raises:
        FileNotFoundError: ``path`` does not exist, is a directory with no image file, or a pattern
            that matches no image file.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists() and any(c in str(path) for c in GLOB_CHARS):
        matched = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matched if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()]
        if not files:
            raise FileNotFoundError(
                f"no image file ({', '.join(sorted(IMAGE_SUFFIXES))}) matches the pattern {path} "
                f"({len(matched)} other path(s) do)"
            )
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in directory {path}")
        return files
    raise FileNotFoundError(f"input not found: {path} (an image or video file, a directory of images or a pattern)")


def output_names(files: Sequence[Path]) -> list[str]:
    """The drawn image's file name of each input: ``<stem>.jpg``; inputs that would share one
    (ignoring letter case: ``a.jpg``/``a.png``/``A.gif``) get ``<stem>_<suffix>.jpg`` instead
    (``a_jpg.jpg``, ``a_png.jpg``), and ``_2``, ``_3``... where that still collides. The names are
    unique ignoring case (also on case-insensitive file systems) and never a :data:`RESULT_FILES` name."""
    key = str.casefold
    wanted = [f.stem + ".jpg" for f in files]
    counts = Counter(key(n) for n in wanted)
    taken = {key(n) for n in wanted if counts[key(n)] == 1} | {key(n) for n in RESULT_FILES}
    names = []
    for f, name in zip(files, wanted):
        if counts[key(name)] > 1:
            base = f"{f.stem}_{f.suffix.lstrip('.')}" if f.suffix else f.stem
            name, n = f"{base}.jpg", 2
            while key(name) in taken:
                name, n = f"{base}_{n}.jpg", n + 1
            taken.add(key(name))
        names.append(name)
    return names


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def _inode(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file (a hard link or another spelling of it has the same), else None."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_output_folder(output: str | Path, source: str | Path, files: Sequence[Path], names: Sequence[str]) -> Path:
    """``output`` (created) once writing ``names`` and :data:`RESULT_FILES` there can overwrite no
    input: checked before the model is loaded.

    Raises:
        OutputPathError: ``output`` is a file, is the input folder (``source``, or a single input
            image's folder: outputs would be mixed with, and on the next run read as, the inputs),
            or one of its outputs is one of ``files`` (by path, symlink or hard link).
    """
    out, source = Path(output), Path(source)
    if out.exists() and not out.is_dir():
        raise OutputPathError(
            f"output {out} is a file; predict writes a folder (drawn images, {', '.join(RESULT_FILES)})"
        )
    folder = source if source.is_dir() else source.parent
    while any(c in folder.name for c in GLOB_CHARS):  # a pattern: the folder it starts from
        folder = folder.parent
    if same_file(out, folder):
        raise OutputPathError(
            f"output folder {out} is the input folder {folder}: predictions would be written among the "
            "input images (and read as inputs by the next run); choose another output folder"
        )
    by_path = {_resolved(f): f for f in files}
    by_inode = {key: f for f in files if (key := _inode(f)) is not None}
    for name in [*names, *RESULT_FILES]:
        target = out / name
        hit = by_path.get(_resolved(target)) or by_inode.get(_inode(target))
        if hit is not None:
            raise OutputPathError(
                f"output {target} would overwrite the input image {hit}: predict never overwrites its inputs; "
                "choose another output folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"output folder {out} cannot be created ({exc.strerror or exc})") from exc
    return out
