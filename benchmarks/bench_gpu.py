"""GPU throughput and the projected time of each schedule (issue 10, part 4).

On a CUDA machine: training images/s (forward + loss + backward + SGD step, bf16-mixed autocast,
channels_last, device-side target encoding) and model-only FPS (inference path, batch 1 and 16)
for TTFNet R18/R34/D53 at 512 px, and the projected wall-clock of the paper's schedules at the
measured rate (images per schedule = epochs x 118,287 COCO train2017 images; data loading and
validation assumed hidden/excluded: a projection, not a measurement of a full run).
On a machine without CUDA it says so and exits 0.

    python benchmarks/bench_gpu.py [--batch 32] [--steps 20] [--compile] [--json out.json]
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

COCO_TRAIN_IMAGES = 118_287
SCHEDULES = {"1x (12 epochs)": 12, "2x (24 epochs)": 24, "10x (120 epochs)": 120}


def train_rate(backbone: str, *, batch: int, steps: int, size: int, compile_: bool) -> float:
    from ttfnet_lightning.core.losses import TTFNetLoss
    from ttfnet_lightning.core.models import TTFNet
    from ttfnet_lightning.core.targets import encode_targets

    dev = torch.device("cuda")
    net = TTFNet(num_classes=80, backbone=backbone).to(dev).to(memory_format=torch.channels_last).train()
    step_net = torch.compile(net) if compile_ else net
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn = TTFNetLoss(stride=4)
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(dev).contiguous(memory_format=torch.channels_last)
    xy = torch.rand(batch, 7, 2, generator=gen) * size * 0.7
    boxes = torch.cat([xy, xy + 8 + torch.rand(batch, 7, 2, generator=gen) * size * 0.3], -1).clamp(max=size).to(dev)
    labels = torch.randint(0, 80, (batch, 7), generator=gen).to(dev)

    def step() -> None:
        targets = encode_targets(boxes, labels, num_classes=80, output_size=(size // 4, size // 4))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = step_net(images)
        loss = loss_fn(*(o.float() for o in out), *targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5 if not compile_ else 15):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def infer_rate(backbone: str, *, batch: int, size: int, precision: str) -> float:
    from ttfnet_lightning.core.decode import decode_detections
    from ttfnet_lightning.core.inference import optimize_for_inference
    from ttfnet_lightning.core.models import TTFNet

    net = optimize_for_inference(TTFNet(num_classes=80, backbone=backbone).cuda().eval(), precision=precision)
    x = torch.randn(batch, 3, size, size, device="cuda")
    for _ in range(10):
        decode_detections(*net(x), input_size=(size, size))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 50
    for _ in range(n):
        decode_detections(*net(x), input_size=(size, size))
    torch.cuda.synchronize()
    return batch * n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    print(f"machine: {machine()}")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        return 0
    torch.backends.cudnn.benchmark = True
    report = {}
    for backbone in ("r18", "r34", "d53"):
        train = train_rate(backbone, batch=args.batch, steps=args.steps, size=args.size, compile_=args.compile)
        fps1 = infer_rate(backbone, batch=1, size=args.size, precision="fp16")
        fps16 = infer_rate(backbone, batch=16, size=args.size, precision="fp16")
        proj = {name: epochs * COCO_TRAIN_IMAGES / train / 60 for name, epochs in SCHEDULES.items()}
        report[backbone] = {
            "train_images_per_s": train,
            "fps_batch1_fp16": fps1,
            "fps_batch16_fp16": fps16,
            "projected_minutes": proj,
        }
        print(
            f"\nTTFNet-{backbone.upper()}@{args.size}: training {train:.0f} images/s (batch {args.batch}, bf16-mixed, "
            "channels_last"
            f"{', compiled' if args.compile else ''}); inference fp16 {fps1:.0f} FPS at batch 1, {fps16:.0f} images/s "
            "at batch 16"
        )
        for name, minutes in proj.items():
            print(f"  projected {name}: {minutes:.0f} min (COCO train2017, data loading and validation not included)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "gpu": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
