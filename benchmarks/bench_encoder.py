"""Target-encoder speed: batched ``encode_targets`` vs its memory floor and the per-box oracle.

Batch 16 x 512 px (128 x 128 output map), C = 80, with ~7 boxes per image (COCO's mean) and ~50
(crowded images). Box sizes are drawn log-uniformly from 4 px to the full image, like COCO's
small/medium/large mix.

* Memory floor: the time to allocate and fill the three tensors the encoder returns (heatmap,
  box_target, reg_weight: same shapes, dtypes and fill values), timed in the same run, each
  repeat right after an encoder call, so that the machine's load hits both alike (medians). The
  encoder can not be faster than it; the ratio encoder / floor is what issue 10 bounds. On the
  CPU both are mostly page faults of the fresh 84 MB heatmap (see ``steady_allocator``).
* Oracle: the plain per-box reference of the tests, run once per setting on the first
  ``--oracle-images`` images (it is slow on purpose); the encoder's result on those images is
  checked against it in the same run.

Goals (issue 10): encoder / memory floor <= 1.5 at 50 boxes per image, <= 1.1 at 7.

    python benchmarks/bench_encoder.py [--device cuda] [--repeats 10] \
        [--oracle-images 2 | --skip-oracle] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle lives with the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_targets import reference_encode  # noqa: E402

from _common import machine, timeit  # noqa: E402
from ttfnet_lightning.core.targets import encode_targets  # noqa: E402

GOALS = {50: 1.5, 7: 1.1}  # boxes per image -> bound on encoder / memory floor


def random_boxes(B: int, M: int, size: int, C: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, 4) xyxy boxes with log-uniform sizes in [4, size] px and aspect 1/3..3; labels (B, M)."""
    side = torch.exp(
        torch.empty(B, M).uniform_(torch.log(torch.tensor(4.0)), torch.log(torch.tensor(float(size))), generator=gen)
    )
    aspect = torch.exp(torch.empty(B, M).uniform_(-1.1, 1.1, generator=gen))
    w = (side * aspect.sqrt()).clamp(2, size)
    h = (side / aspect.sqrt()).clamp(2, size)
    x1 = torch.rand(B, M, generator=gen) * (size - w)
    y1 = torch.rand(B, M, generator=gen) * (size - h)
    boxes = torch.stack((x1, y1, x1 + w, y1 + h), dim=-1)
    labels = torch.randint(0, C, (B, M), generator=gen)
    return boxes, labels


def memory_floor(outputs: tuple[torch.Tensor, ...]) -> Callable[[], list[torch.Tensor]]:
    """A function that allocates and fills tensors like the encoder's outputs: zeros for the
    heatmap and the weights, -1 for the box targets (its value where no box owns a pixel)."""
    specs = [(t.shape, t.dtype, t.device, fill) for t, fill in zip(outputs, (0.0, -1.0, 0.0))]

    def run() -> list[torch.Tensor]:
        return [torch.full(shape, fill, dtype=dtype, device=device) for shape, dtype, device, fill in specs]

    return run


def steady_allocator() -> None:
    """Put the CPU allocator in the steady state of a training process before timing.

    glibc serves a request above its mmap threshold with fresh pages (a page fault each), and
    raises that threshold (up to 32 MB) whenever it frees such a block; until then, which of the
    few-MB tensors of either side get fresh pages depends on what this process allocated before,
    and the ratio swings by several percent between runs. Freeing one 24 MB block settles it, as
    a training step's activations do; the 84 MB heatmap of either side still gets fresh pages
    every time."""
    torch.empty(6 << 20).fill_(0.0)


def interleaved(fns: list, *, repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each function, timed in turn within every repeat (same machine load)."""
    for fn in fns:
        timeit(fn, repeats=warmup, warmup=0)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t.append(timeit(fn, repeats=1, warmup=0)[0])
    return [statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--boxes", type=int, nargs="+", default=[7, 50])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--oracle-images", type=int, default=2, help="images of the batch checked against the per-box oracle"
    )
    p.add_argument("--skip-oracle", action="store_true", help="timing only")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = p.parse_args()

    print(f"machine: {machine()}")
    print(
        f"batch {args.batch} x {args.size} px, C={args.classes}, output map {args.size // 4}x{args.size // 4}, device "
        f"{args.device}"
    )
    n_ref = 0 if args.skip_oracle else min(args.oracle_images, args.batch)
    oracle_head = f"per-box oracle ({n_ref} img)" if n_ref else "oracle skipped"
    print(
        f"{'boxes/img':>9} | {'encoder (median)':>16} | {'memory floor':>12} | {'enc / floor':>11} | "
        f"{oracle_head:>24} | max |diff| heatmap / box / weight"
    )
    steady_allocator()
    gen = torch.Generator().manual_seed(0)
    out = (args.size // 4, args.size // 4)
    rows, goals, checks = {}, {}, {}
    for M in args.boxes:
        boxes, labels = random_boxes(args.batch, M, args.size, args.classes, gen)
        kw = dict(num_classes=args.classes, output_size=out, stride=4)
        b, l = boxes.to(args.device), labels.to(args.device)
        encode = lambda: encode_targets(b, l, **kw)  # noqa: E731, B023  (called at once)
        floor = memory_floor(encode())
        t_enc, t_floor = interleaved([encode, floor], repeats=args.repeats)
        rows |= {f"encoder, {M} boxes": t_enc * 1e3, f"memory floor, {M} boxes": t_floor * 1e3}
        if M in GOALS:
            goals[f"encoder / memory floor, {M} boxes (goal <= {GOALS[M]})"] = t_enc / t_floor
        oracle = ""
        if n_ref:
            t0 = time.perf_counter()
            ref = reference_encode(boxes[:n_ref], labels[:n_ref], **kw)
            t_ref = time.perf_counter() - t0
            got = [t.cpu() for t in encode_targets(b[:n_ref], l[:n_ref], **kw)]
            heat_d = (got[0].double() - ref[0].double()).abs().max().item()
            mask = ref[2] > 0
            box_d = (got[1] - ref[1]).abs()[mask.expand_as(ref[1])].max().item() if mask.any() else 0.0
            w_d = (got[2].double() - ref[2].double()).abs().max().item()
            checks[f"{M} boxes"] = {
                "images": n_ref,
                "oracle s": t_ref,
                "max |diff| heatmap / box / weight": [heat_d, box_d, w_d],
            }
            oracle = f"{t_ref:>22.1f} s | {heat_d:.1e} / {box_d:.1e} / {w_d:.1e}"
        else:
            oracle = f"{'-':>24} |"
        print(f"{M:>9} | {t_enc * 1e3:>13.1f} ms | {t_floor * 1e3:>9.1f} ms | {t_enc / t_floor:>10.2f}x | {oracle}")
    if goals:
        print("\ngoals:")
        for k, v in goals.items():
            print(f"  {k:<52} {v:6.3f}")
    if args.json:
        report = {
            "machine": machine(),
            "goals": goals,
            "ms": rows,
            "oracle": checks,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
