"""What the data boundary checks (issue 21: file names stay in their folder, unique ids and files,
splits sharing images) add to a coco-mini data module setup: ``CocoDataModule(...)`` +
``setup("fit")`` with the pre-flight check cached, as every training run starts.

Two measurements: (1) each check alone, called on the same inputs as in the setup, median of many
calls, beside the setup's median; (2) the whole setup with those checks switched off (patched to
no-ops) and on, interleaved (noisier: it shows the same order of magnitude). Also the per-read
check (a file resolved again just before it is read) beside the decode it precedes. Under a minute.

Goal: the checks add under 1 % to the setup.

    python benchmarks/bench_data_checks.py [--root ../shared/data/coco-mini] [--repeats 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@contextlib.contextmanager
def checks_off() -> Iterator[None]:
    """The boundary checks patched to no-ops (what the setup costs without them)."""
    from ttfnet_lightning.data import check, coco, paths

    saved = (paths.ImageFolder.problems, coco.duplicate_ids, check.shared_images)
    paths.ImageFolder.problems = lambda self, names, label: []  # type: ignore[method-assign]
    coco.duplicate_ids = lambda *a, **k: []  # type: ignore[assignment]
    check.shared_images = lambda *a, **k: []  # type: ignore[assignment]
    try:
        yield
    finally:
        paths.ImageFolder.problems, coco.duplicate_ids, check.shared_images = saved  # type: ignore[method-assign]


def component_times(root: Path, dm: Any, splits: dict[str, str], repeats: int) -> dict[str, float]:
    """Median ms of each check, called alone on the inputs the setup gives it (both splits)."""
    from ttfnet_lightning.data.check import shared_images
    from ttfnet_lightning.data.coco import duplicate_ids
    from ttfnet_lightning.data.paths import ImageFolder

    data = {s: json.loads((root / "annotations" / f"instances_{s}.json").read_text()) for s in splits.values()}

    def file_names() -> None:
        for s, d in data.items():
            images = d["images"]
            ImageFolder(root / s).problems([img["file_name"] for img in images], lambda k, images=images: f"image id {images[k]['id']}")

    def collect_ids() -> None:  # the ids gathered in load_coco_json's entry loops (upper bound: a loop of its own)
        for d in data.values():
            ids, aids = [], []
            for img in d["images"]:
                if type(img["id"]) is int:
                    ids.append(img["id"])
            for ann in d["annotations"]:
                aids.append(ann["id"])

    lists = {s: ([i["id"] for i in d["images"]], [a["id"] for a in d["annotations"]]) for s, d in data.items()}

    def unique_ids() -> None:
        for (ids, aids), d in zip(lists.values(), data.values()):
            duplicate_ids(ids, d["images"], "file_name", what="image id", of="file names", why="")
            duplicate_ids(aids, d["annotations"], "image_id", what="annotation id", of="image ids", why="")

    sets = {"train": dm.train_dataset, "val": dm.val_dataset}
    paths = {k: [ds.image_path(i) for i in range(len(ds))] for k, ds in sets.items()}
    return {
        "file names stay in the image folder, each named once (paths.ImageFolder.problems)": median_ms(file_names, repeats),
        "unique image / annotation ids: collecting the ids (entry loops)": median_ms(collect_ids, repeats),
        "unique image / annotation ids: the check (coco.duplicate_ids)": median_ms(unique_ids, repeats),
        "splits sharing images (check.shared_images, in the pre-flight check)": median_ms(
            lambda: shared_images(sets, paths), repeats),
    }


def read_check(dm: Any, limit: int) -> tuple[float, float]:
    """Median ms per image of the per-read check (ImageFolder.verify) and of the decode it precedes."""
    from ttfnet_lightning.data.image_decode import decode

    ds = dm.val_dataset
    paths = [ds.image_path(i) for i in range(min(limit, len(ds)))]
    verify = median_ms(lambda: [ds.image_folder.verify(p) for p in paths], 20) / len(paths)
    dec = median_ms(lambda: [decode(p) for p in paths], 2) / len(paths)
    return verify, dec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini")
    p.add_argument("--repeats", type=int, default=40, help="setups timed per variant")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not (args.root / "annotations").is_dir():
        print(f"no COCO data at {args.root}: nothing measured (pass --root)")
        return
    import logging

    from ttfnet_lightning.data import CocoDataModule

    logging.disable(logging.WARNING)  # the setup's summaries are not what is measured
    cache = tempfile.mkdtemp(prefix="bench-data-checks-")
    splits = {"train_split": "train2017", "val_split": "val2017"}

    def setup() -> Any:
        dm = CocoDataModule(root=args.root, input_size=(512, 512), batch_size=2, num_workers=0, check_cache_dir=cache, **splits)
        dm.setup("fit")
        return dm

    dm = setup()  # fills the pre-flight cache: every later setup is the cached one a rerun gets
    on, off = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        for times, ctx in ((on, contextlib.nullcontext()), (off, checks_off())):
            with ctx:
                t0 = time.perf_counter()
                setup()
                times.append(1e3 * (time.perf_counter() - t0))
    setup_on, setup_off = statistics.median(on), statistics.median(off)
    parts = component_times(args.root, dm, splits, repeats=max(200, 5 * args.repeats))
    added = sum(parts.values())
    verify_ms, decode_ms = read_check(dm, limit=40)

    print(f"machine: {machine()}")
    print(f"coco-mini setup (CocoDataModule + setup('fit'), pre-flight cached): {len(dm.train_dataset)} train / "
          f"{len(dm.val_dataset)} val images, median of {args.repeats}\n")
    print(f"| {'check (both splits)':<84} | ms per setup | % of setup |")
    print(f"|{'-' * 86}|-------------:|-----------:|")
    for name, ms in parts.items():
        print(f"| {name:<84} | {ms:12.3f} | {100 * ms / setup_on:9.2f}% |")
    print(f"| {'all checks (sum)':<84} | {added:12.3f} | {100 * added / setup_on:9.2f}% |")
    print(f"\nsetup with the checks: {setup_on:.2f} ms; with them patched out: {setup_off:.2f} ms "
          f"(ratio {setup_on / setup_off:.3f}; difference within this machine's noise when under ~1 %)")
    print(f"per read: the file resolved again {1e3 * verify_ms:.1f} us vs its decode {decode_ms:.2f} ms "
          f"({100 * verify_ms / decode_ms:.2f} %)")
    share = added / setup_on
    print(f"\ngoal: the checks add under 1 % to the setup: {100 * share:.2f} % -> {'yes' if share < 0.01 else 'no'}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "setup_ms": setup_on, "setup_without_checks_ms": setup_off, "checks_ms": parts,
            "read_verify_us": 1e3 * verify_ms, "decode_ms": decode_ms,
            "goals": {"boundary checks / coco-mini setup (goal <= 0.01)": share},
        }, indent=2))


if __name__ == "__main__":
    main()
