"""Pre-flight check of a data set: every image and annotation read once, every problem in one list,
before the first training step.

    python -m ttfnet_lightning.data.check data=voc data.datamodule.root=/data/voc
    python -m ttfnet_lightning.data.check data=coco data.datamodule.root=/data/coco \
        data.datamodule.check_cache_dir=/tmp/c

(the same overrides as ``ttfnet_lightning.training.run``, composed with the package's ``conf/train.yaml``).
Exit status 0: no fatal problem (warnings, e.g. truncated images, are listed); 1: fatal problems
(listed); 2: the data set could not even be built (annotation problems: the error lists them).

What is checked, per image of the training and validation splits (``CocoDataModule`` /
``VocDataModule`` run the same check in ``setup`` unless ``preflight=false``):

* the file exists and decodes: a JPEG is decoded with DCT scaling at about 1/8 of its size (PIL
  ``draft``; the whole compressed stream is still read, so truncation is detected; ``verify()``
  alone does not detect a truncated JPEG), other formats at full size; strictly first, then with
  truncation allowed (see :func:`~ttfnet_lightning.data.sample.decode_image`):
  **truncated** = decodes only with truncation allowed, missing at most the data set's
  ``max_truncated_fraction`` of its rows (a warning naming how much is missing: it is loaded),
  **bad** = missing or undecodable, truncated beyond that fraction (measured at full size), or
  its size differs from the annotation's (COCO ``width``/``height``, VOC ``<size>``);
* images shared by the two splits (the same file, or the same image id and file name): a warning
  with the count and examples;
* annotations are read and validated when the data set is built (COCO JSON / VOC XML), so they
  are checked once as well: every problem of a file in one list, including duplicate image /
  annotation ids, file names that leave the image folder (absolute, ``..``, a symbolic link
  pointing outside) and files named twice; when the data module cannot be built, the command
  also lists the other split's problems.

Bad images are fatal unless the data module skips bad images (``skip_bad_images``) and there are
at most ``max_bad_images`` of them in a split; then they are removed from the index (named in the
log) so that a bad validation image is excluded from the metric, never replaced. The results of
the image checks are cached as JSON, one file per image folder, keyed by each file's path, size
and modification time, in ``check_cache_dir`` (default ``$TTFNET_LIGHTNING_CACHE`` or
``$XDG_CACHE_HOME/ttfnet_lightning`` or ``~/.cache/ttfnet_lightning``, subfolder ``data-check``;
never the data root unless pointed there), so a rerun only re-reads changed files. An unwritable
cache folder is reported and the check runs uncached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.data.coco import CocoDetection
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.image_decode import Decoded, decode
from ttfnet_lightning.data.sample import ImageFileDataset
from ttfnet_lightning.data.shared_images import shared_images
from ttfnet_lightning.data.voc import VocDetection

log = logging.getLogger(__name__)

__all__ = ["CheckReport", "check_datasets", "check_image", "default_cache_dir", "main", "shared_images"]

CACHE_VERSION = 2  # 2: results hold the truncated images' missing fraction
REDUCE = 8  # JPEG decode scale of the check


def default_cache_dir() -> Path:
    """``$TTFNET_LIGHTNING_CACHE`` or ``$XDG_CACHE_HOME/ttfnet_lightning`` or ``~/.cache/ttfnet_lightning``,
    subfolder ``data-check``."""
    base = os.environ.get("TTFNET_LIGHTNING_CACHE")
    if base is None:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ttfnet_lightning")
    return Path(base) / "data-check"


def _reduced(d: Decoded, hw: list[int]) -> bool:
    """Whether ``d`` was decoded smaller than the file's ``hw`` (a JPEG at 1/``REDUCE``)."""
    return d.image.height != hw[0] or d.image.width != hw[1]


def check_image(path: Path) -> dict[str, Any]:
    """Decode ``path`` once (cheaply, see the module docstring) -> ``{"status": "ok" | "truncated"
    | "bad", "message": str, "hw": [h, w] or None, "missing": fraction of the rows not decoded}``."""
    try:
        d = decode(path, reduce_to=REDUCE)
        with Image.open(path) as im:
            hw = [im.height, im.width]
    except DataError as e:
        return {"status": "bad", "message": str(e), "hw": None, "missing": 1.0}
    except OSError as e:  # decoded a moment ago: the file changed in between
        return {
            "status": "bad",
            "message": f"cannot read image {path}: {type(e).__name__}: {e}",
            "hw": None,
            "missing": 1.0,
        }
    if d.truncated is not None and _reduced(d, hw):
        try:  # rare: measured again at full size, as the data set will when it reads the image
            d = decode(path)
        except DataError as e:
            return {"status": "bad", "message": str(e), "hw": None, "missing": 1.0}
    if d.truncated is not None:
        return {"status": "truncated", "message": d.truncated, "hw": hw, "missing": d.missing}
    return {"status": "ok", "message": "", "hw": hw, "missing": 0.0}


class _Cache:
    """Image check results of one image folder: ``{file name: {size, mtime_ns, result}}``."""

    def __init__(self, cache_dir: Path | None, folder: Path) -> None:
        self.path = None
        self.entries: dict[str, Any] = {}
        self.dirty = False
        if cache_dir is None:
            return
        key = hashlib.sha1(f"{CACHE_VERSION}:{folder.resolve()}".encode()).hexdigest()[:16]
        self.path = cache_dir / f"{folder.name}-{key}.json"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == CACHE_VERSION and data.get("folder") == str(folder.resolve()):
                self.entries = data["files"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no cache yet, or an unreadable one: it is rebuilt

    def lookup(self, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        e = self.entries.get(path.name)
        if e and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns:
            return e["result"]
        return None

    def store(self, path: Path, result: dict[str, Any]) -> None:
        try:
            st = path.stat()
        except OSError:
            return  # a missing file is not cached: it is checked again next time
        self.entries[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "result": result}
        self.dirty = True

    def save(self, folder: Path) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps({"version": CACHE_VERSION, "folder": str(folder.resolve()), "files": self.entries})
            )
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning(
                "data check: cannot write the cache %s (%s); the next check reads every image again", self.path, e
            )


@dataclass
class CheckReport:
    """Outcome of :func:`check_datasets`: ``problems`` every problem found (one line each),
    ``fatal`` the ones that stop training, ``notes`` how to change that, ``bad`` per data set name the image indices to
    exclude
    (index -> reason), counts."""

    problems: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bad: dict[str, dict[int, str]] = field(default_factory=dict)
    num_images: int = 0
    num_cached: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        head = (
            f"data check: {self.num_images} image(s) checked ({self.num_cached} from the cache) in "
            f"{self.seconds:.1f} s: {len(self.problems)} problem(s), {len(self.fatal)} fatal"
        )
        lines = [head] + [f"  {'FATAL' if p in self.fatal else 'warning'}: {p}" for p in self.problems]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def check_datasets(
    datasets: dict[str, ImageFileDataset], *, cache_dir: Path | None = None, workers: int = 8
) -> CheckReport:
    """Check every image of ``datasets`` (name -> data set) once, in a thread pool.

    Each data set's policy decides what is fatal: a bad image (missing, undecodable, a size other
    than the annotation's, truncated beyond its ``max_truncated_fraction``) when it does not skip
    bad images, or more than its ``max_bad_images`` bad images; a data set left without images.
    Truncated images within the limit and images shared by two data sets are warnings. Nothing is
    changed: apply ``report.bad`` with ``dataset.exclude``.
    """
    t0 = time.perf_counter()
    paths = {name: [ds.image_path(i) for i in range(len(ds))] for name, ds in datasets.items()}
    results, num_cached = _image_results(sorted({p for ps in paths.values() for p in ps}), cache_dir, workers)
    report = CheckReport(num_images=len(results), num_cached=num_cached)
    truncated_seen: set[Path] = set()
    for name, ds in datasets.items():
        bad = _classify(ds, paths[name], results, report, truncated_seen)
        _apply_policy(name, ds, bad, report)
        report.bad[name] = bad
    report.problems += shared_images(datasets, paths)
    report.seconds = time.perf_counter() - t0
    return report


def _image_results(paths: list[Path], cache_dir: Path | None, workers: int) -> tuple[dict[Path, dict[str, Any]], int]:
    """Check result per path (cached ones looked up, the others decoded in a thread pool, then
    cached), and how many came from the cache."""
    caches = {folder: _Cache(cache_dir, folder) for folder in {p.parent for p in paths}}
    results: dict[Path, dict[str, Any]] = {}
    todo = []
    for p in paths:
        hit = caches[p.parent].lookup(p)
        if hit is None:
            todo.append(p)
        else:
            results[p] = hit
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            for p, res in zip(todo, pool.map(check_image, todo)):
                results[p] = res
                caches[p.parent].store(p, res)
    for folder, cache in caches.items():
        cache.save(folder)
    return results, len(paths) - len(todo)


def _classify(
    ds: ImageFileDataset,
    paths: list[Path],
    results: dict[Path, dict[str, Any]],
    report: CheckReport,
    truncated_seen: set[Path],
) -> dict[int, str]:
    """The bad images of ``ds`` (index -> reason); truncated images it may load become warnings."""
    bad: dict[int, str] = {}
    for i, path in enumerate(paths):
        res = results[path]
        expected = ds.expected_size(i)
        if res["status"] == "bad":
            bad[i] = res["message"]
        elif expected is not None and tuple(res["hw"]) != tuple(expected):
            h, w = res["hw"]
            bad[i] = f"image {path} is {w}x{h} (WxH) but its annotation says {expected[1]}x{expected[0]}"
        elif res["status"] == "truncated":
            problem = ds.truncation_problem(path, res["message"], float(res.get("missing", 1.0)))
            if problem is not None:
                bad[i] = problem
            elif path not in truncated_seen:
                truncated_seen.add(path)
                report.problems.append(
                    f"truncated/damaged image {path}: loads only with truncation allowed ({res['message']})"
                )
    return bad


def _apply_policy(name: str, ds: ImageFileDataset, bad: dict[int, str], report: CheckReport) -> None:
    """Report the bad images of data set ``name``; fatal as its bad-image policy says."""
    for reason in bad.values():
        report.problems.append(f"{name}: {reason}")
        if not ds.skip_bad_images:
            report.fatal.append(report.problems[-1])
    if bad and ds.skip_bad_images and len(bad) > ds.max_bad_images:
        report.problems.append(
            f"{name}: {len(bad)} bad images, more than max_bad_images={ds.max_bad_images}; "
            f"fix the data or raise max_bad_images"
        )
        report.fatal.append(report.problems[-1])
    if bad and len(bad) == len(ds):
        report.problems.append(f"{name}: no readable image left (all {len(ds)} are bad)")
        report.fatal.append(report.problems[-1])
    if bad and not ds.skip_bad_images:
        report.notes.append(
            f"{name}: bad images are fatal because skip_bad_images is false "
            f"(data.datamodule.skip_bad_images=true excludes them, counted and named)"
        )


# ------------------------------------------------------------------------------------ command
def _other_split_errors(dm_cfg: Any, first: str) -> list[str]:
    """When the data module cannot be built, the annotation errors of its other split(s) too, so one
    run lists every problem (each split's data set built alone; classes are not checked here)."""

    target = str(dm_cfg.get("_target_", ""))
    kinds = {"CocoDataModule": (CocoDetection, {}), "VocDataModule": (VocDetection, {"min_boxes_per_class": 0})}
    kind = next((v for k, v in kinds.items() if target.endswith(k)), None)
    if kind is None or "root" not in dm_cfg:
        return []
    errors = []
    for key in ("train_split", "val_split"):
        try:
            kind[0](root=dm_cfg.root, split=str(dm_cfg.get(key)), **kind[1])
        except DataError as e:
            if str(e) != first and str(e) not in errors:
                errors.append(str(e))
    return errors


HELP = """Check a data set before training: every image and annotation of the training and validation
splits read once, every problem listed with its file (missing, undecodable or truncated images, sizes
that differ from the annotation, images shared by the splits, duplicate ids, file names that leave the
image folder). Exit status 0: no fatal problem; 1: fatal problems; 2: the data set cannot be built.

Examples:
  python -m ttfnet_lightning.data.check data=voc data.datamodule.root=/data/VOCdevkit/VOC2007
  python -m ttfnet_lightning.data.check data=coco data.datamodule.root=/data/coco data.datamodule.check_cache_dir=/tmp/c
  ttfnet-check-data data=coco data.datamodule.root=/data/coco

Takes train's overrides (data=..., data.datamodule.*). More: docs/data.md"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ttfnet_lightning.data.check [overrides...]``: build the data module of the
    composed train config (no pre-flight in setup), check it, print every problem; returns the
    exit status (0 ok, 1 fatal problems, 2 the data set cannot be built)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    overrides = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(overrides):
        print(HELP)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if "preflight" not in cfg.data.datamodule:
        print(f"data '{cfg.data.get('name')}' reads no image files: nothing to check")
        return 0
    try:
        dm = instantiate(cfg.data.datamodule, preflight=False, _convert_="all")
        dm.setup("fit")
        report = dm.check_data()
    except (DataError, InstantiationException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, DataError) else e  # hydra wraps the DataError
        if not isinstance(cause, DataError):
            raise
        others = _other_split_errors(cfg.data.datamodule, str(cause))
        print("data check: the data set cannot be built:\n" + "\n".join([str(cause), *others]))
        return 2
    print(report.summary())
    return 1 if report.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
