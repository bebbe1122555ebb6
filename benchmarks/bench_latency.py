"""Inference latency of TTFNet beside torchvision's detectors, in one process (batch 1, random
weights, eval mode), printed as ms and as the ratio to TTFNet-R18 on the same machine.

* TTFNet R18 / R34 / D53 at 512 px: network + decoder, as trained (fp32) and on the inference
  path (``optimize_for_inference``: BN folded, channels_last; fp32 and bf16);
* its parts: the bare ResNet-18 classifier at 512 px (torchvision's model as it is, and with the
  inference path's treatment: BN folded into the convs, channels_last weights and input), and the
  decoder alone (share of the forward);
* torchvision: SSD300-VGG16 (300 px), SSDlite320-MobileNetV3 (320 px), FCOS-R50 and
  RetinaNet-R50 (512 px; their own resize is set to the input size), postprocessing included.

Goals (issue 10, ratios measured in this one run): TTFNet-R18@512 fp32 >= 2.5x faster than SSD300,
<= 1.6x its own backbone, decoding <= 5 % of the forward pass. The backbone goal is computed
against both backbone rows: TTFNet as trained vs the classifier as it is, and TTFNet's inference
path vs the classifier as it is and vs the classifier with the same treatment (the like-for-like
ratio).

    python benchmarks/bench_latency.py [--repeats 10] [--json out.json] [--quick]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timeit  # noqa: E402
from ttfnet_lightning.core.decode import decode_detections  # noqa: E402
from ttfnet_lightning.core.inference import fold_batchnorm, optimize_for_inference  # noqa: E402
from ttfnet_lightning.core.models import TTFNet  # noqa: E402

BACKBONE_TREATED = "ResNet-18 classifier@512, BN folded + channels_last"


def ttfnet_fn(net: torch.nn.Module, size: int) -> Callable[[], object]:
    x = torch.randn(1, 3, size, size)

    def run() -> object:
        with torch.inference_mode():
            hm, wh = net(x)
            return decode_detections(hm, wh, input_size=(size, size))

    return run


def resnet18_fn(size: int, *, inference_path: bool) -> Callable[[], object]:
    """torchvision's ResNet-18 classifier as it is, or treated like TTFNet's inference path (BN
    folded into the convs, channels_last weights, input converted to channels_last in each call)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None).eval()
    if inference_path:
        fold_batchnorm(model)
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, size, size)

    def run() -> object:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last) if inference_path else x)

    return run


def torchvision_fn(name: str, size: int) -> Callable[[], object]:
    from torchvision.models import detection

    if name == "resnet18":
        return resnet18_fn(size, inference_path=False)
    kw = {"weights": None, "weights_backbone": None}
    if name in ("fcos_resnet50_fpn", "retinanet_resnet50_fpn"):
        kw |= {"min_size": size, "max_size": size}
    model = getattr(detection, name)(**kw).eval()
    x = torch.rand(3, size, size)

    def run() -> object:
        with torch.inference_mode():
            return model([x])

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--quick", action="store_true", help="TTFNet-R18, its backbone and SSD300 only")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    print(
        f"batch 1, random weights; every model built first, then timed in {args.repeats} interleaved rounds of one "
        "call each "
        "after 2 warm-up calls (a slow moment of this shared machine hits every model alike); medians\n"
    )
    rows: dict[str, float] = {}
    models: dict[str, Callable[[], object]] = {}

    def measure(name: str, fn: Callable[[], object]) -> None:
        timeit(fn, repeats=2, warmup=0)  # warm-up (and a check that it runs)
        models[name] = fn

    backbones = ("r18",) if args.quick else ("r18", "r34", "d53")
    for backbone in backbones:
        net = TTFNet(num_classes=80, backbone=backbone).eval()
        measure(f"TTFNet-{backbone.upper()}@512 fp32 (as trained)", ttfnet_fn(net, 512))
        measure(f"TTFNet-{backbone.upper()}@512 fp32 (inference path)", ttfnet_fn(optimize_for_inference(net), 512))
        measure(
            f"TTFNet-{backbone.upper()}@512 bf16 (inference path)",
            ttfnet_fn(optimize_for_inference(net, precision="bf16"), 512),
        )
    # the decoder alone, on the R18 outputs
    net = TTFNet(num_classes=80, backbone="r18").eval()
    with torch.inference_mode():
        hm, wh = net(torch.randn(1, 3, 512, 512))
    measure("decoder alone (80 classes, 128x128 map)", lambda: decode_detections(hm, wh, input_size=(512, 512)))
    measure("ResNet-18 classifier@512 (TTFNet-R18's backbone)", torchvision_fn("resnet18", 512))
    measure(BACKBONE_TREATED, resnet18_fn(512, inference_path=True))
    others = (
        [("ssd300_vgg16", 300)]
        if args.quick
        else [
            ("ssd300_vgg16", 300),
            ("ssdlite320_mobilenet_v3_large", 320),
            ("fcos_resnet50_fpn", 512),
            ("retinanet_resnet50_fpn", 512),
        ]
    )
    for name, size in others:
        measure(f"torchvision {name}@{size}", torchvision_fn(name, size))

    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, fn in models.items():
            times[name].append(timeit(fn, repeats=1, warmup=0)[0])
    for name, t in times.items():
        rows[name] = statistics.median(t) * 1000
        print(f"  {name:<52} {rows[name]:8.1f} ms  (min {min(t) * 1000:.1f}, max {max(t) * 1000:.1f})", flush=True)

    ref = rows["TTFNet-R18@512 fp32 (as trained)"]
    print("\nratio to TTFNet-R18@512 fp32 (as trained), > 1 = slower than it:")
    for name, ms in rows.items():
        print(f"  {name:<52} {ms / ref:6.2f}x")
    ssd = rows["torchvision ssd300_vgg16@300"]
    fast = rows["TTFNet-R18@512 fp32 (inference path)"]
    backbone = rows["ResNet-18 classifier@512 (TTFNet-R18's backbone)"]
    decoder = rows["decoder alone (80 classes, 128x128 map)"]
    goals = {
        "SSD300 / TTFNet-R18 fp32 (goal >= 2.5)": ssd / ref,
        "SSD300 / TTFNet-R18 fp32 inference path (goal >= 2.5)": ssd / fast,
        "TTFNet-R18 fp32 / ResNet-18 backbone (goal <= 1.6)": ref / backbone,
        "TTFNet-R18 inference path / ResNet-18 backbone (goal <= 1.6)": fast / backbone,
        # like for like: the backbone with the inference path's treatment (BN folded, channels_last)
        "TTFNet-R18 inference path / ResNet-18 backbone BN-folded channels_last (goal <= 1.6)": fast
        / rows[BACKBONE_TREATED],
        "decoder share of TTFNet-R18 fp32 (goal <= 0.05)": decoder / ref,
        "decoder share of TTFNet-R18 fp32 inference path (goal <= 0.05)": decoder / fast,
    }
    print("\ngoals:")
    for k, v in goals.items():
        print(f"  {k:<86} {v:6.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "ms": rows, "goals": goals, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2
            )
        )


if __name__ == "__main__":
    main()
