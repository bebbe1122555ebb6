"""TTFNet forward + backward time, split into backbone / neck / head.

Each unit is run on detached inputs so its forward and backward time are measured separately
(the sum equals a normal training step's network time up to autograd bookkeeping). Loss = the
real TTFNet loss on encoded targets. Deformable (paper) up-sampling convs with each deformable-conv
implementation (``deform_impl``: native grid_sample + matmul, torchvision.ops.deform_conv2d) and plain
up-sampling convs.

    python benchmarks/bench_model.py [--size 512] [--batch 2] [--backbone r18] [--deform-impl both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from ttfnet_lightning.losses import TTFNetLoss  # noqa: E402
from ttfnet_lightning.models import TTFNet  # noqa: E402
from ttfnet_lightning.targets import encode_targets  # noqa: E402


def detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(x.requires_grad or x.is_floating_point())
    return type(x)(detach(t) for t in x)


def flat(x):
    return [x] if isinstance(x, torch.Tensor) else [t for t in x]


def step_times(net: TTFNet, images, targets, loss_fn) -> dict[str, float]:
    t = {}
    t0 = time.perf_counter()
    feats = net.backbone(images)
    t["backbone fwd"] = time.perf_counter() - t0
    feats_in = detach(feats)
    t0 = time.perf_counter()
    up = net.neck(feats_in)
    t["neck fwd"] = time.perf_counter() - t0
    up_in = detach(up)
    t0 = time.perf_counter()
    out = net.head(up_in)
    loss = loss_fn(*out, *targets)["loss"]
    t["head+loss fwd"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss.backward()
    t["head+loss bwd"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.autograd.backward(flat(up), [u.grad for u in flat(up_in)])
    t["neck bwd"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs, grads = zip(*[(f, g.grad) for f, g in zip(flat(feats), flat(feats_in)) if g.grad is not None and f.requires_grad])
    torch.autograd.backward(list(outs), list(grads))
    t["backbone bwd"] = time.perf_counter() - t0
    net.zero_grad(set_to_none=True)
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--backbone", default="r18")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--deform-impl", choices=("native", "torchvision", "both"), default="both",
        help="deformable-conv implementation(s) to time (plus the plain-conv neck)",
    )
    args = p.parse_args()
    impls = ("native", "torchvision") if args.deform_impl == "both" else (args.deform_impl,)
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    print("backbone stem + stage 1 frozen (paper default), BN in train mode")
    print(f"TTFNet-{args.backbone.upper()} train step (fwd+bwd), batch {args.batch} x {args.size} px, C={args.classes}, "
          f"median of {args.repeats} after 1 warm-up")
    images = torch.randn(args.batch, 3, args.size, args.size)
    boxes = torch.tensor([[40.0, 60.0, 300.0, 400.0], [200.0, 100.0, 260.0, 180.0]]).expand(args.batch, 2, 4).contiguous()
    labels = torch.tensor([1, 5]).expand(args.batch, 2).contiguous()
    o = args.size // 4
    targets = encode_targets(boxes, labels, num_classes=args.classes, output_size=(o, o))
    loss_fn = TTFNetLoss(stride=4)
    configs = [(True, impl) for impl in impls] + [(False, "native")]
    for deformable, impl in configs:
        torch.manual_seed(0)
        net = TTFNet(num_classes=args.classes, backbone=args.backbone, deformable=deformable, deform_impl=impl).train()
        runs = [step_times(net, images, targets, loss_fn) for _ in range(args.repeats + 1)][1:]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(med.values())
        name = f"deformable (paper), deform_impl={impl}" if deformable else "plain conv"
        print(f"\nneck: {name}   total {total:.2f} s")
        for unit in ("backbone", "neck", "head+loss"):
            f, b = med[f"{unit} fwd"], med[f"{unit} bwd"]
            print(f"  {unit:<10} fwd {f:6.3f} s  bwd {b:6.3f} s  sum {f + b:6.3f} s  ({100 * (f + b) / total:4.1f} %)")


if __name__ == "__main__":
    main()
