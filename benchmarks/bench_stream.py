"""Data-loading throughput of the streaming format (litdata, ``data=coco_stream``) beside the folder
loader (``data=coco``) on the real COCO subset: images/s of the training loader (shuffled, 512 px,
resize + flip, no augmentation, batch 16, the data modules' own loaders and collate), with 1 and 2
dataloader workers. Each measurement is one epoch of a freshly built loader (worker start
included, for both); the settings are interleaved, repeated, and the median is reported (the
spread shows how loaded the machine was).

    python benchmarks/bench_stream.py [--root ../shared/data/coco-mini] [--workers 1 2] [--repeats 5] [--json out.json]

The chunks are written first (``ttfnet_lightning.data.prepare``'s code, into a temporary folder,
or ``--stream DIR`` of an earlier prepare). Both loaders read from the local disk here, with the
files in the page cache: this measures the per-image cost of each path (decode dominates), not the
shared-storage bottleneck (one file open per image) that streaming removes on a cluster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def epoch_rate(make_loader) -> float:
    """Images per second of one epoch of ``make_loader()`` (built inside the timing)."""
    t0 = time.perf_counter()
    n = sum(len(b["meta"]) for b in make_loader())
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini")
    p.add_argument("--stream", type=Path, default=None, help="a prepared stream folder (default: prepare one now)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not (args.root / "annotations").is_dir():
        print(f"no COCO data at {args.root}: nothing measured (pass --root)")
        return
    from ttfnet_lightning.data import CocoDataModule, CocoStreamDataModule
    from ttfnet_lightning.data.prepare import prepare_coco

    size = (args.size, args.size)
    common = {"input_size": size, "batch_size": args.batch_size, "augment": False}
    folder = {w: CocoDataModule(root=args.root, num_workers=w, **common) for w in args.workers}
    for dm in folder.values():
        dm.setup("fit")  # pre-flight check (cached after the first)
    stream_dir, tmp = args.stream, None
    if stream_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
        stream_dir = tmp / "coco"
        t0 = time.perf_counter()
        prepare_coco(next(iter(folder.values())), stream_dir)
        print(f"prepared {stream_dir} in {time.perf_counter() - t0:.1f} s")
    stream = {w: CocoStreamDataModule(input_dir=str(stream_dir), num_workers=w, **common) for w in args.workers}
    for dm in stream.values():
        dm.setup("fit")
    n = len(folder[args.workers[0]].train_dataset)
    print(f"machine: {machine()}")
    print(
        f"training loader, {n} images per epoch, {args.size} px, batch {args.batch_size}, {args.repeats} interleaved "
        "repeats"
    )

    rates: dict[str, list[float]] = {}
    for w in args.workers:  # warm-up: page cache, first worker start
        epoch_rate(folder[w].train_dataloader), epoch_rate(stream[w].train_dataloader)
    for _ in range(args.repeats):
        for w in args.workers:
            for name, dm in (("folder", folder[w]), ("stream", stream[w])):
                rates.setdefault(f"{name}, {w} worker(s)", []).append(epoch_rate(dm.train_dataloader))
    res = {}
    print(f"\n  {'loader':<22} {'median':>8} {'min':>8} {'max':>8}  images/s")
    for k, v in rates.items():
        res[k] = {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        print(f"  {k:<22} {res[k]['median']:8.1f} {min(v):8.1f} {max(v):8.1f}")
    for w in args.workers:
        ratio = res[f"stream, {w} worker(s)"]["median"] / res[f"folder, {w} worker(s)"]["median"]
        print(f"  stream / folder, {w} worker(s): {ratio:.2f}")
    if tmp is not None:
        shutil.rmtree(tmp)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "images_per_epoch": n,
                    "size": args.size,
                    "batch_size": args.batch_size,
                    "images_per_s": res,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
