"""Data-loading throughput on the real COCO subset at 512 px, in one process (= one worker):
images/s of decoding alone (PIL, as the data sets read images today, vs ``torchvision.io.decode_jpeg``)
and of a whole training sample (decode + resize + flip, and with the photometric/crop
augmentation of the 10x schedule), beside what a TTFNet-R18 training step at batch 16 consumes
(``--step-ms``: the step time from ``bench_train_step.py --only 512``, or measured here with
``--measure-step``).

Goal (issue 10): one worker supplies at least 2x what the training step consumes.

    python benchmarks/bench_data.py [--root ../shared/data/coco-mini] [--split train2017] [--step-ms 9000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def rate(fn, items, repeats: int = 2) -> float:
    """Items per second of ``fn(item)`` over ``items`` (best of ``repeats`` passes: file cache warm)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini")
    p.add_argument("--split", default="train2017")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--limit", type=int, default=200, help="images timed")
    p.add_argument("--step-ms", type=float, default=None, help="R18 training step at batch 16 (ms)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not (args.root / "annotations").is_dir():
        print(f"no COCO data at {args.root}: nothing measured (pass --root)")
        return
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from ttfnet_lightning.data.coco import CocoDetection
    from ttfnet_lightning.data.sample import load_rgb_image
    from ttfnet_lightning.data.transforms import build_transforms

    torch.set_num_threads(1)  # a data-loader worker runs one thread
    print(f"machine: {machine()}; one process, 1 thread (a data-loader worker)")
    files = sorted((args.root / args.split).glob("*.jpg"))[: args.limit]
    res: dict[str, float] = {}
    res["decode PIL (data sets today)"] = rate(load_rgb_image, files)
    res["decode torchvision.io.decode_jpeg"] = rate(
        lambda f: decode_jpeg(read_file(str(f)), mode=ImageReadMode.RGB), files
    )
    for augment in (False, True):
        ds = CocoDetection(
            root=args.root,
            split=args.split,
            keep_empty=False,
            transforms=build_transforms(input_size=args.size, train=True, augment=augment),
        )
        idx = list(range(min(len(ds), args.limit)))
        res[f"training sample at {args.size} px, augment={augment}"] = rate(ds.__getitem__, idx)
    for k, v in res.items():
        print(f"  {k:<48} {v:7.1f} images/s")
    if args.step_ms:
        need = 16 / (args.step_ms / 1000)
        sample = res[f"training sample at {args.size} px, augment=False"]
        print(
            f"\nR18 step at batch 16 consumes {need:.1f} images/s; one worker supplies {sample:.1f}: "
            f"{sample / need:.1f}x (goal >= 2x)"
        )
        res["step_consumes_images_per_s"] = need
    goals = (
        {
            "one worker's training samples / what the R18 512 px batch-16 step consumes (goal >= 2)": res[
                f"training sample at {args.size} px, augment=False"
            ]
            / res["step_consumes_images_per_s"]
        }
        if args.step_ms
        else {}
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "images_per_s": res, "goals": goals}, indent=2))


if __name__ == "__main__":
    main()
