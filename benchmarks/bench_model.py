"""TTFNet forward + backward time, split into backbone / neck / head, and the neck's peak training memory.

Time: each unit is run on detached inputs so its forward and backward time are measured separately
(the sum equals a normal training step's network time up to autograd bookkeeping). Loss = the
real TTFNet loss on encoded targets. Necks: deformable (paper) up-sampling convs with each
deformable-conv implementation (``deform_impl``: native grid_sample + matmul, torchvision.ops.deform_conv2d),
the native one also as it was before its recomputing backward (``deform._RECOMPUTE = False``: one
``grid_sample`` over all taps whose result autograd keeps for the backward), and plain up-sampling
convs. The variants are interleaved (one step of each in turn), medians of ``--repeats`` steps.

Memory (CPU): one forward + backward of the neck alone (random backbone maps of the right shapes
that require grad, a fixed output gradient) in a fresh subprocess per neck, at ``--memory-batch``
(default 16, the setting of issue 10) x ``--size``. ``tensor peak``: the peak of the bytes of
tensors allocated during the step and not yet freed (torch.profiler's memory events of the CPU
allocator; the step's own allocations only, not the maps, the output gradient or the weights);
``RSS rise``: the process's peak resident memory during its first two such steps minus its
resident memory before them (Linux VmHWM, reset before the steps; includes what the allocator
keeps, the libraries' one-time initialisations and workspaces: noisier).

Goals (issue 10): peak training memory of the deformable neck <= 1.2x the plain-conv neck's;
its step time (neck forward + backward) <= 1.2x the time before the recomputing backward.

    python benchmarks/bench_model.py [--size 512] [--batch 2] [--backbone r18] [--deform-impl both]
        [--memory-batch 16] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from ttfnet_lightning.core.losses import TTFNetLoss  # noqa: E402
from ttfnet_lightning.core.models import TTFNet, deform  # noqa: E402
from ttfnet_lightning.core.targets import encode_targets  # noqa: E402

# variant -> (deformable, deform_impl, recomputing backward of the native deformable conv)
VARIANTS = {
    "native": (True, "native", True),
    "native-before": (True, "native", False),
    "torchvision": (True, "torchvision", True),
    "plain": (False, "native", True),
}
TITLES = {
    "native": "deformable (paper), deform_impl=native",
    "native-before": "deformable (paper), deform_impl=native before the recomputing backward",
    "torchvision": "deformable (paper), deform_impl=torchvision",
    "plain": "plain conv",
}
MEMORY_VARIANTS = ("plain", "native", "native-before")  # torchvision's CPU backward is too slow at batch 16


@contextmanager
def recompute(on: bool):
    old, deform._RECOMPUTE = deform._RECOMPUTE, on
    try:
        yield
    finally:
        deform._RECOMPUTE = old


def build(variant: str, args: argparse.Namespace) -> TTFNet:
    deformable, impl, _ = VARIANTS[variant]
    torch.manual_seed(0)
    return TTFNet(num_classes=args.classes, backbone=args.backbone, deformable=deformable, deform_impl=impl).train()


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
    outs, grads = zip(
        *[(f, g.grad) for f, g in zip(flat(feats), flat(feats_in)) if g.grad is not None and f.requires_grad]
    )
    torch.autograd.backward(list(outs), list(grads))
    t["backbone bwd"] = time.perf_counter() - t0
    net.zero_grad(set_to_none=True)
    return t


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _profiled_peak(fn) -> int:
    """Peak of the running sum of the CPU allocator's allocations and frees during ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def memory_probe(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Run in a fresh process: peak memory of one neck forward + backward (see the module docstring)."""
    net = build(variant, args)
    with torch.no_grad():
        shapes = [f.shape[1] for f in net.backbone(torch.zeros(1, 3, 64, 64))]
    b, s = args.memory_batch, args.size
    feats = [torch.randn(b, c, s // 2 ** (i + 2), s // 2 ** (i + 2), requires_grad=True) for i, c in enumerate(shapes)]
    grad = torch.randn(b, net.neck.out_channels, s // 4, s // 4)

    def step() -> None:
        torch.autograd.backward(net.neck(feats), grad)
        net.zero_grad(set_to_none=True)
        for f in feats:
            f.grad = None

    with recompute(VARIANTS[variant][2]):
        rss0 = _status_kib("VmRSS")
        reset = _reset_peak_rss()
        max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        step()  # the second step may need more than the allocator kept from the first
        # without a reset, the lifetime peak (imports, ...) may hide the steps': a lower bound then
        max1 = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = _profiled_peak(step)
    return {
        "tensor_peak_mib": peak / 2**20,
        "rss_rise_mib": (max1 - rss0) / 1024,
        "rss_rise_is_lower_bound": not reset and max1 <= max0,
    }


def measure_memory(variant: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--memory-probe",
        variant,
        "--memory-batch",
        str(args.memory_batch),
        "--size",
        str(args.size),
        "--backbone",
        args.backbone,
        "--classes",
        str(args.classes),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory probe {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2, help="batch of the timed steps")
    p.add_argument("--backbone", default="r18")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--deform-impl",
        choices=("native", "torchvision", "both"),
        default="both",
        help="deformable-conv implementation(s) to time "
        "(plus the plain-conv neck; native also before its recomputing backward)",
    )
    p.add_argument("--memory-batch", type=int, default=16, help="batch of the neck memory measurement (0: skip it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the timed steps (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--memory-probe", choices=sorted(VARIANTS), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = ("native", "torchvision") if args.deform_impl == "both" else (args.deform_impl,)
    variants = [v for v in ("native", "native-before", "torchvision") if VARIANTS[v][1] in impls] + ["plain"]
    print(f"machine: {machine()}")
    print("backbone stem + stage 1 frozen (paper default), BN in train mode")
    print(
        f"TTFNet-{args.backbone.upper()} train step (fwd+bwd), batch {args.batch} x {args.size} px, C={args.classes}, "
        f"median of {args.repeats} after 1 warm-up, variants interleaved"
    )
    images = torch.randn(args.batch, 3, args.size, args.size)
    boxes = (
        torch.tensor([[40.0, 60.0, 300.0, 400.0], [200.0, 100.0, 260.0, 180.0]]).expand(args.batch, 2, 4).contiguous()
    )
    labels = torch.tensor([1, 5]).expand(args.batch, 2).contiguous()
    o = args.size // 4
    targets = encode_targets(boxes, labels, num_classes=args.classes, output_size=(o, o))
    loss_fn = TTFNetLoss(stride=4)
    nets = {v: build(v, args) for v in variants}
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.repeats + 1):
        for v in variants:
            with recompute(VARIANTS[v][2]):
                t = step_times(nets[v], images, targets, loss_fn)
            if r:  # the first round is the warm-up
                runs[v].append(t)
    medians = {}
    for v in variants:
        med = {k: statistics.median(r[k] for r in runs[v]) for k in runs[v][0]}
        medians[v] = med
        total = sum(med.values())
        print(f"\nneck: {TITLES[v]}   total {total:.2f} s")
        for unit in ("backbone", "neck", "head+loss"):
            f, b = med[f"{unit} fwd"], med[f"{unit} bwd"]
            print(f"  {unit:<10} fwd {f:6.3f} s  bwd {b:6.3f} s  sum {f + b:6.3f} s  ({100 * (f + b) / total:4.1f} %)")
    goals = {}
    neck = {v: medians[v]["neck fwd"] + medians[v]["neck bwd"] for v in variants}
    if "native" in neck:
        print(
            "\nneck fwd+bwd, native / native before the recomputing backward: "
            f"{neck['native'] / neck['native-before']:.3f}"
        )
        goals["deformable neck step time / before recompute (goal <= 1.2)"] = neck["native"] / neck["native-before"]
    memory = {}
    if args.memory_batch > 0:
        print(
            f"\nneck peak training memory (fwd+bwd of the neck alone), batch {args.memory_batch} x {args.size} px, "
            "fresh process per neck:"
        )
        for v in MEMORY_VARIANTS:
            if v in variants:
                memory[v] = m = measure_memory(v, args)
                bound = " (lower bound)" if m["rss_rise_is_lower_bound"] else ""
                print(
                    f"  {TITLES[v]:<72} tensor peak {m['tensor_peak_mib']:8.1f} MiB   RSS rise "
                    f"{m['rss_rise_mib']:8.1f} MiB{bound}"
                )
        if "native" in memory:
            for v in ("native", "native-before"):
                ratio = memory[v]["tensor_peak_mib"] / memory["plain"]["tensor_peak_mib"]
                rss = memory[v]["rss_rise_mib"] / memory["plain"]["rss_rise_mib"]
                print(f"  {v} / plain: tensor peak {ratio:.3f}, RSS rise {rss:.3f}")
            goals["deformable neck peak memory / plain neck (goal <= 1.2)"] = (
                memory["native"]["tensor_peak_mib"] / memory["plain"]["tensor_peak_mib"]
            )
    if goals:
        print("\ngoals:")
        for k, v in goals.items():
            print(f"  {k:<62} {v:6.3f}")
    if args.json:
        settings = {k: getattr(args, k) for k in ("size", "batch", "backbone", "classes", "repeats", "memory_batch")}
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "settings": settings | {"threads": torch.get_num_threads()},
                    "step_s": medians,
                    "neck_memory_mib": memory,
                    "goals": goals,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
