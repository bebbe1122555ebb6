"""Images shared by two data sets (a validation image also trained on inflates the metric): the same file, or the
same image id with the same file name. Part of the pre-flight check (:mod:`~ttfnet_lightning.data.check`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ttfnet_lightning.data.sample import ImageFileDataset

__all__ = ["shared_images"]


def _plain(ds: ImageFileDataset) -> bool:
    """Whether every file of ``ds`` sits directly in its image folder (plain names, no links)."""
    return ds.image_folder is not None and bool(ds.image_folder.plain_only)


def _file_keys(ds: ImageFileDataset, paths: list[Path], plain: bool) -> list[str]:
    """Per image of ``ds``: a key of its file. ``plain`` (both data sets' files sit directly in one
    folder): the file name; otherwise the file through the image folder's resolved path (two
    spellings of a folder, or a linked folder, give one key)."""
    if plain:
        return [str(p).rpartition(os.sep)[2] for p in paths]
    folder = ds.image_folder
    if folder is None:
        return [os.path.realpath(p) for p in paths]
    prefix = str(folder.folder)
    return [folder.real + t[len(prefix) :] if t.startswith(prefix) else os.path.realpath(t) for t in map(str, paths)]


def _folders_overlap(a: ImageFileDataset, b: ImageFileDataset) -> bool:
    """Whether the two data sets' image folders can hold one file: the same folder (by device and
    inode when every file sits directly in its folder: two system calls), or one inside the other
    (by resolved path); names never leave their folder (see :mod:`~ttfnet_lightning.data.paths`)."""
    if a.image_folder is None or b.image_folder is None:
        return True
    if _plain(a) and _plain(b):
        try:
            return a.image_folder.identity == b.image_folder.identity
        except OSError:  # a folder gone since the index was built: compare paths
            pass
    ra, rb = os.path.join(a.image_folder.real, ""), os.path.join(b.image_folder.real, "")
    return ra.startswith(rb) or rb.startswith(ra)


def _image_ids(ds: ImageFileDataset, n: int) -> list[Any]:
    """The image ids of ``ds`` in index order (its ``image_ids`` list when it keeps one)."""
    ids = getattr(ds, "image_ids", None)
    return ids if isinstance(ids, list) and len(ids) == n else [ds.image_id(i) for i in range(n)]


def _shared_pair(a: ImageFileDataset, b: ImageFileDataset, pa: list[Path], pb: list[Path], name_b: str) -> list[str]:
    """The images of ``a`` also in ``b``: the same file, or the same image id and file name."""
    shared: dict[int, str] = {}
    if _folders_overlap(a, b):  # cheap otherwise: different folders hold different files
        plain = _plain(a) and _plain(b)
        files_b = set(_file_keys(b, pb, plain))
        shared = {i: str(pa[i]) for i, f in enumerate(_file_keys(a, pa, plain)) if f in files_b}
    ids_a, ids_b = _image_ids(a, len(pa)), _image_ids(b, len(pb))
    common = set(ids_a).intersection(ids_b)
    if common:
        named_b = {(iid, pb[i].name) for i, iid in enumerate(ids_b) if iid in common}
        for i, iid in enumerate(ids_a):
            if iid in common and i not in shared and (iid, pa[i].name) in named_b:
                shared[i] = f"{pa[i]} (image id {iid}, also in {name_b} as {pa[i].name})"
    return [shared[i] for i in sorted(shared)]


def shared_images(datasets: dict[str, ImageFileDataset], paths: dict[str, list[Path]] | None = None) -> list[str]:
    """One warning per pair of data sets that share images: the same file, or the same image id
    with the same file name (a copy); e.g. a validation image also trained on inflates the metric.

    Args:
        datasets: name -> data set.
        paths: name -> its image paths in index order (default: asked of the data sets).
    Returns:
        the warnings (count and up to 3 examples each), empty when no image is shared.
    """
    if paths is None:
        paths = {name: [ds.image_path(i) for i in range(len(ds))] for name, ds in datasets.items()}
    names = list(datasets)
    out = []
    for k, a in enumerate(names):
        for b in names[k + 1 :]:
            shared = _shared_pair(datasets[a], datasets[b], paths[a], paths[b], b)
            if shared:
                out.append(
                    f"{a} and {b} share {len(shared)} image(s) (the same file, or the same image id and file "
                    f"name; an image in both inflates the validation metric), e.g. {', '.join(shared[:3])}"
                )
    return out
