"""Target-encoder speed: batched ``encode_targets`` vs the plain per-box oracle of the tests.

Batch 16 x 512 px (128 x 128 output map), C = 80, with ~7 boxes per image (COCO's mean) and ~50
(crowded images). Box sizes are drawn log-uniformly from 4 px to the full image, like COCO's
small/medium/large mix. The oracle runs once per setting (it is slow on purpose); the batched
encoder's result is checked against it in the same run.

    python benchmarks/bench_encoder.py [--device cuda] [--oracle-images 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the oracle lives with the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_targets import reference_encode  # noqa: E402

from _common import machine, timeit  # noqa: E402
from ttfnet_lightning.targets import encode_targets  # noqa: E402


def random_boxes(B: int, M: int, size: int, C: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, 4) xyxy boxes with log-uniform sizes in [4, size] px and aspect 1/3..3; labels (B, M)."""
    side = torch.exp(torch.empty(B, M).uniform_(torch.log(torch.tensor(4.0)), torch.log(torch.tensor(float(size))), generator=gen))
    aspect = torch.exp(torch.empty(B, M).uniform_(-1.1, 1.1, generator=gen))
    w = (side * aspect.sqrt()).clamp(2, size)
    h = (side / aspect.sqrt()).clamp(2, size)
    x1 = torch.rand(B, M, generator=gen) * (size - w)
    y1 = torch.rand(B, M, generator=gen) * (size - h)
    boxes = torch.stack((x1, y1, x1 + w, y1 + h), dim=-1)
    labels = torch.randint(0, C, (B, M), generator=gen)
    return boxes, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--boxes", type=int, nargs="+", default=[7, 50])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()

    print(f"machine: {machine()}")
    print(f"batch {args.batch} x {args.size} px, C={args.classes}, output map {args.size // 4}x{args.size // 4}, device {args.device}")
    print(f"{'boxes/img':>9} | {'batched encoder (median)':>24} | {'per-box oracle':>15} | {'speed-up':>8} | max |diff| heatmap / box / weight")
    gen = torch.Generator().manual_seed(0)
    out = (args.size // 4, args.size // 4)
    for M in args.boxes:
        boxes, labels = random_boxes(args.batch, M, args.size, args.classes, gen)
        kw = dict(num_classes=args.classes, output_size=out, stride=4)
        b, l = boxes.to(args.device), labels.to(args.device)
        med, _ = timeit(lambda: encode_targets(b, l, **kw), repeats=args.repeats, warmup=2)  # noqa: B023  (called at once)
        t0 = time.perf_counter()
        ref = reference_encode(boxes, labels, **kw)
        t_ref = time.perf_counter() - t0
        got = [t.cpu() for t in encode_targets(b, l, **kw)]
        heat_d = (got[0].double() - ref[0].double()).abs().max().item()
        mask = ref[2] > 0
        box_d = (got[1] - ref[1]).abs()[mask.expand_as(ref[1])].max().item() if mask.any() else 0.0
        w_d = (got[2].double() - ref[2].double()).abs().max().item()
        print(
            f"{M:>9} | {med * 1e3:>21.1f} ms | {t_ref:>13.1f} s | {t_ref / med:>7.0f}x | "
            f"{heat_d:.1e} / {box_d:.1e} / {w_d:.1e}"
        )


if __name__ == "__main__":
    main()
