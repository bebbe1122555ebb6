"""Cost of ``trainer.deterministic=true`` (``torch.use_deterministic_algorithms(True)``) on a
TTFNet training step: target encoding, forward, loss, backward and SGD step, timed with the flag
off and on in alternation (so machine noise hits both alike).

Default: the ``make train`` setting (R18, deformable neck, 128 px, batch 16, 6 classes).

    python benchmarks/bench_deterministic.py [--size 128] [--batch 16] [--classes 6] [--repeats 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from ttfnet_lightning.core.losses import TTFNetLoss  # noqa: E402
from ttfnet_lightning.core.models import TTFNet  # noqa: E402
from ttfnet_lightning.core.targets import encode_targets  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--backbone", default="r18")
    p.add_argument("--repeats", type=int, default=6, help="timed steps per setting (after 2 warm-up steps each)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Lightning sets for deterministic CUDA
    print(f"machine: {machine()}")
    print(
        f"TTFNet-{args.backbone.upper()} training step, batch {args.batch} x {args.size} px, C={args.classes}, {device}"
    )

    torch.manual_seed(0)
    net = TTFNet(num_classes=args.classes, backbone=args.backbone).to(device).train()
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)
    loss_fn = TTFNetLoss(stride=4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    s = args.size
    boxes = torch.tensor([[0.1 * s, 0.15 * s, 0.6 * s, 0.8 * s], [0.4 * s, 0.2 * s, 0.5 * s, 0.35 * s]], device=device)
    boxes = boxes.expand(args.batch, 2, 4).contiguous()
    labels = torch.tensor([1, 3], device=device).expand(args.batch, 2).contiguous()

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        targets = encode_targets(boxes, labels, num_classes=args.classes, output_size=(s // 4, s // 4))
        loss = loss_fn(*net(images), *targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[bool, list[float]] = {False: [], True: []}
    for flag in (False, True):  # warm-up
        torch.use_deterministic_algorithms(flag)
        step(), step()
    for _ in range(args.repeats):
        for flag in (False, True):
            torch.use_deterministic_algorithms(flag)
            times[flag].append(step())
    torch.use_deterministic_algorithms(False)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"  deterministic=false  median {1000 * off:7.1f} ms/step  (min {1000 * min(times[False]):.1f})")
    print(f"  deterministic=true   median {1000 * on:7.1f} ms/step  (min {1000 * min(times[True]):.1f})")
    print(f"  ratio true/false: {on / off:.3f}")


if __name__ == "__main__":
    main()
