"""What the data boundary checks (issue 21: file names stay in their folder, unique ids and files,
splits sharing images) add to a coco-mini data module setup: ``CocoDataModule(...)`` +
``setup("fit")`` with the pre-flight check cached, as every training run starts.

Measured: each check timed inside real setups (wrapped with a timer: cold, in context; the id
checks are inline in the JSON check's entry loops and in the index it builds anyway, so they are
timed alone, a loop of their own: an upper bound), the same checks alone in a warm loop, and the whole setup with the
checks
on and patched out, interleaved (an A/B whose spread is wider than the checks themselves). Also
the per-read check (a file resolved again just before it is read) beside the decode it precedes.
Takes about 25 s.

Goal: the checks add under 1 % to the setup.

    python benchmarks/bench_data_checks.py [--root ../shared/data/coco-mini] [--repeats 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
    """Median wall-clock milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call;
    garbage collection off while timing, as timeit does)."""
    fn()
    times = []
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return 1e3 * statistics.median(times)


NAMES = {
    "folder": "image folder (paths.ImageFolder; resolved only when needed)",
    "names": "file names stay in the image folder, each named once (ImageFolder.problems)",
    "ids": "unique image / annotation ids (inline; timed alone: an upper bound)",
    "shared": "splits sharing images (check.shared_images, pre-flight check)",
}


@contextlib.contextmanager
def checks_off() -> Iterator[None]:
    """The boundary checks patched to no-ops (what the setup costs without them)."""
    from ttfnet_lightning.data import check, paths

    def light_init(self: Any, folder: Any) -> None:  # the attributes, nothing listed
        self.folder = Path(folder)
        self._links = None
        self.plain_only = None

    saved = (paths.ImageFolder.__init__, paths.ImageFolder.problems, check.shared_images)
    paths.ImageFolder.__init__ = light_init  # type: ignore[method-assign]
    paths.ImageFolder.problems = lambda self, names, label: []  # type: ignore[method-assign]
    check.shared_images = lambda *a, **k: []  # type: ignore[assignment]
    try:
        yield
    finally:
        paths.ImageFolder.__init__, paths.ImageFolder.problems, check.shared_images = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def timed_checks(acc: dict[str, list[float]]) -> Iterator[None]:
    """The boundary checks wrapped with timers: the ms each spends inside a real setup (cold, in
    context) are added to ``acc[name]`` (a variant of its own: the A/B compares unwrapped setups)."""
    from ttfnet_lightning.data import check, paths

    def timer(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc.setdefault(name, []).append(1e3 * (time.perf_counter() - t0))

        return wrapped

    saved = (paths.ImageFolder.__init__, paths.ImageFolder.problems, check.shared_images)
    paths.ImageFolder.__init__ = timer("folder", saved[0])  # type: ignore[method-assign]
    paths.ImageFolder.problems = timer("names", saved[1])  # type: ignore[method-assign]
    check.shared_images = timer("shared", saved[2])  # type: ignore[assignment]
    try:
        yield
    finally:
        paths.ImageFolder.__init__, paths.ImageFolder.problems, check.shared_images = saved  # type: ignore[method-assign]


def component_times(root: Path, dm: Any, splits: dict[str, str], repeats: int) -> dict[str, float]:
    """Median ms of each check called alone, in a warm loop, on the inputs the setup gives it (both
    splits): keys of ``NAMES``."""
    from ttfnet_lightning.data.check import shared_images
    from ttfnet_lightning.data.paths import ImageFolder

    data = {s: json.loads((root / "annotations" / f"instances_{s}.json").read_text()) for s in splits.values()}
    folders: list[ImageFolder] = []

    def new_folders() -> None:
        folders.extend(ImageFolder(root / s) for s in data)

    def file_names() -> None:  # on fresh folders (each lists its entries once), made outside the timing
        for d in reversed(data.values()):  # the last folder stocked is the last split's
            images = d["images"]
            folders.pop().problems(
                [img["file_name"] for img in images], lambda k, images=images: f"image id {images[k]['id']}"
            )

    indexed = {"train": dm.train_dataset.coco, "val": dm.val_dataset.coco}

    def unique_ids() -> None:  # what the checks add to the entry loops: an integer test and a count per
        for d, coco in zip(data.values(), indexed.values()):  # image, one comparison per index
            valid = 0
            for img in d["images"]:
                if type(img["id"]) is not int:
                    continue
                valid += 1
            assert len(coco.anns) == len(d["annotations"]) and valid >= len(coco.imgs)

    sets = {"train": dm.train_dataset, "val": dm.val_dataset}
    paths = {k: [ds.image_path(i) for i in range(len(ds))] for k, ds in sets.items()}
    folder_ms = median_ms(new_folders, repeats)  # also stocks the fresh folders file_names() uses
    return {
        "folder": folder_ms,
        "names": median_ms(file_names, min(repeats, len(folders) // len(data) - 1)),
        "ids": median_ms(unique_ids, repeats),
        "shared": median_ms(lambda: shared_images(sets, paths), repeats),
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
    p.add_argument("--repeats", type=int, default=100, help="setups timed per variant")
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
        dm = CocoDataModule(
            root=args.root, input_size=(512, 512), batch_size=2, num_workers=0, check_cache_dir=cache, **splits
        )
        dm.setup("fit")
        return dm

    dm = setup()  # fills the pre-flight cache: every later setup is the cached one a rerun gets
    on: list[float] = []
    off: list[float] = []
    timed: list[float] = []
    inside: dict[str, list[float]] = {}
    gc.collect()
    gc.disable()  # as timeit does: no collection lands inside one variant's timing
    try:
        for r in range(args.repeats):  # interleaved (order rotating), so drift on a shared machine hits all alike
            variants = [(on, contextlib.nullcontext), (off, checks_off), (timed, lambda: timed_checks(inside))]
            for times, ctx in variants[r % 3 :] + variants[: r % 3]:
                with ctx():
                    t0 = time.perf_counter()
                    setup()
                    times.append(1e3 * (time.perf_counter() - t0))
    finally:
        gc.enable()
    setup_on, setup_off = statistics.median(on), statistics.median(off)
    in_setup = {name: sum(ms) / args.repeats for name, ms in inside.items()}
    alone = component_times(args.root, dm, splits, repeats=max(200, 2 * args.repeats))
    in_setup["ids"] = alone["ids"]  # inline in the entry loops: only measurable alone (an upper bound)
    added = sum(in_setup.values())
    verify_ms, decode_ms = read_check(dm, limit=40)
    report(machine(), dm, args.repeats, alone, in_setup, (setup_on, setup_off, on, off), (verify_ms, decode_ms))
    share = added / setup_on
    print(f"\ngoal: the checks add under 1 % to the setup: {100 * share:.2f} % -> {'yes' if share < 0.01 else 'no'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "setup_ms": setup_on,
                    "setup_without_checks_ms": setup_off,
                    "checks_ms_in_setup": {NAMES[k]: v for k, v in in_setup.items()},
                    "checks_ms_alone": {NAMES[k]: v for k, v in alone.items()},
                    "read_verify_us": 1e3 * verify_ms,
                    "decode_ms": decode_ms,
                    "goals": {"boundary checks / coco-mini setup (goal <= 0.01)": share},
                },
                indent=2,
            )
        )


def report(
    mach: str,
    dm: Any,
    repeats: int,
    alone: dict[str, float],
    in_setup: dict[str, float],
    setups: tuple[float, float, list[float], list[float]],
    read: tuple[float, float],
) -> None:
    """Print the table and the A/B and per-read lines."""
    setup_on, setup_off, on, off = setups
    print(f"machine: {mach}")
    print(
        f"coco-mini setup (CocoDataModule + setup('fit'), pre-flight cached): {len(dm.train_dataset)} train / "
        f"{len(dm.val_dataset)} val images; {repeats} setups per variant, median {setup_on:.2f} ms\n"
    )
    print(f"| {'check (both splits)':<76} | alone, ms | in setup, ms | % of setup |")
    print(f"|{'-' * 78}|----------:|-------------:|-----------:|")
    for key, name in NAMES.items():
        print(
            f"| {name:<76} | {alone[key]:9.3f} | {in_setup.get(key, 0.0):12.3f} | "
            f"{100 * in_setup.get(key, 0.0) / setup_on:9.2f}% |"
        )
    total = sum(in_setup.values())
    print(f"| {'all checks':<76} | {sum(alone.values()):9.3f} | {total:12.3f} | {100 * total / setup_on:9.2f}% |")
    q = statistics.quantiles
    print(
        f"\nA/B, whole setups: with the checks {setup_on:.2f} ms (quartiles {q(on, n=4)[0]:.1f}-{q(on, n=4)[2]:.1f}), "
        f"patched out {setup_off:.2f} ms ({q(off, n=4)[0]:.1f}-{q(off, n=4)[2]:.1f}): ratio "
        f"{setup_on / setup_off:.3f}\n"
        "(the spread of one setup is wider than the checks, so this ratio moves by about +-0.5 % from run to run: "
        "the timed-in-setup column is the figure)"
    )
    verify_ms, decode_ms = read
    print(
        f"per read: the file resolved again (ImageFolder.verify) {1e3 * verify_ms:.1f} us vs its decode "
        f"{decode_ms:.2f} ms ({100 * verify_ms / decode_ms:.2f} %)"
    )


if __name__ == "__main__":
    main()
