"""GPU benchmark of the paper's TTFNet-R18 fast recipe at 512 px (issues 10 and 25); writes a report.

On a CUDA machine it measures:

* training images/s of the ``fast`` recipe (TTFNet-R18, 512 x 512, stem + stage 1 frozen, the released kernel, SGD
  with momentum 0.9, weight decay 4e-4, bias LR x2, gradient clipping 35; batch 16 per GPU, the paper's 8 x 16):
  uint8 images on the GPU normalised and their targets encoded there (``TTFNetModule.on_after_batch_transfer``),
  forward and loss (under autocast for bf16, as Lightning's ``bf16-mixed``), backward, clipping, SGD step; in fp32
  (``trainer=gpu``'s default), bf16, each with channels_last and with ``torch.compile`` (``--variants``), with the peak
  GPU memory of each;
* data loading with GPU JPEG decoding: ``torchvision.io.decode_jpeg(..., device="cuda")`` of a batch of COCO-sized
  JPEGs (``--images DIR``, or 640 x 480 ones made here), alone and with the resize to 512 x 512 on the GPU, beside
  decoding on the CPU (one process);
* the target encoder (``encode_targets`` of a batch's boxes on the GPU) and the decoder (``decode_detections`` of
  80-class 128 x 128 maps): ms per batch and peak memory;
* model-only images/s of the inference path (``optimize_for_inference``) at batch 1, fp32 / bf16 / fp16;
* the projected wall-clock of the paper's schedules at the measured training rates (epochs x 118,287 COCO train2017
  images; data loading and validation assumed hidden/excluded: a projection, not a measured run).

It prints a Markdown report and writes it to ``--report``, the figures to ``--json`` (``benchmarks/report.py``).
Without CUDA it prints one line and exits 0; ``--device cpu`` runs the same code on the CPU (a check of this script
with small ``--size``/``--batch``, not a GPU figure).

    python benchmarks/bench_gpu.py [--batch 16] [--steps 20] [--variants fp32,bf16-cl] [--report gpu.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

COCO_TRAIN_IMAGES = 118_287
COCO_BOXES_PER_IMAGE = 7  # COCO train2017: 860k boxes over 118k images, ~7.3 per image
SCHEDULES = {"1x (12 epochs)": 12, "2x (24 epochs)": 24, "10x (120 epochs)": 120}
# name: (autocast dtype or None, channels_last, torch.compile)
VARIANTS = {
    "fp32": (None, False, False),
    "fp32-cl": (None, True, False),
    "fp32-cl-compiled": (None, True, True),
    "bf16": (torch.bfloat16, False, False),
    "bf16-cl": (torch.bfloat16, True, False),
    "bf16-cl-compiled": (torch.bfloat16, True, True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def seconds_per_call(fn: Callable[[], object], device: torch.device, *, warmup: int, iters: int) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``iters`` calls in a row, after ``warmup`` calls, synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def random_batch(batch: int, size: int, device: torch.device, *, seed: int = 0) -> dict:
    """A collated batch as the loader gives it (uint8 images, COCO-like boxes: log-uniform sides 8 px .. the image)."""
    g = torch.Generator().manual_seed(seed)
    m = COCO_BOXES_PER_IMAGE
    side = torch.exp(torch.empty(batch, m, 2).uniform_(math.log(8.0), math.log(size), generator=g))
    xy = torch.rand(batch, m, 2, generator=g) * (size - side)
    return {
        "images": torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8).to(device),
        "boxes": torch.cat((xy, xy + side), -1).to(device),
        "labels": torch.randint(0, 80, (batch, m), generator=g).to(device),
    }


def recipe(backbone: str, size: int, batch: int, device: torch.device):
    """The fast recipe's module (random weights: ImageNet weights change no timing) and its SGD."""
    from ttfnet_lightning.training.lit_module import TTFNetModule
    from ttfnet_lightning.training.optim import build_optimizer

    module = TTFNetModule(
        net={"backbone": backbone, "pretrained": False, "frozen_stages": 1},
        data_info={"num_classes": 80, "input_size": [size, size], "batch_size": batch},
    )
    module = module.to(device).train()
    opt, _ = build_optimizer(
        module.named_parameters(), module.hparams.optim, total_batch=batch, steps_per_epoch=COCO_TRAIN_IMAGES // batch
    )
    return module, opt


def train_variant(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Images/s and peak memory of training steps of one variant (see ``VARIANTS``)."""
    dtype, channels_last, compiled = VARIANTS[name]
    reset_peak(device)
    module, opt = recipe(args.backbone, args.size, args.batch, device)
    if channels_last:
        module.use_channels_last()
    if compiled:
        module.net.compile()  # as speed.compile: in place
    batch = random_batch(args.batch, args.size, device)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        images = module.normalize(batch["images"])  # on_after_batch_transfer: normalise and encode on the device
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = module.encode(batch)
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            loss = module.loss_fn(*module.net(images), *targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        opt.step()

    warmup = args.warmup + (10 if compiled else 0)  # compiling happens in the first calls
    seconds = seconds_per_call(step, device, warmup=warmup, iters=args.steps)
    result = {"images_per_s": args.batch / seconds, "step_ms": 1000 * seconds, "peak_memory_gib": peak_gib(device)}
    return result


def jpeg_files(args: argparse.Namespace) -> list[torch.Tensor]:
    """``--jpegs`` encoded JPEGs: from ``--images`` when given, else smooth 640 x 480 images encoded here."""
    from torchvision.io import encode_jpeg, read_file

    if args.images is not None:
        paths = sorted(Path(args.images).glob("*.jpg"))[: args.jpegs]
        if not paths:
            raise SystemExit(f"bench_gpu: no *.jpg in {args.images}")
        return [read_file(str(p)) for p in paths]
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.jpegs):
        coarse = torch.rand(1, 3, 15, 20, generator=g) * 255
        image = torch.nn.functional.interpolate(coarse, size=(480, 640), mode="bicubic", align_corners=False)
        out.append(encode_jpeg(image[0].clamp(0, 255).to(torch.uint8), quality=90))
    return out


def data_rates(args: argparse.Namespace, device: torch.device) -> dict:
    """Images/s of JPEG decoding on the CPU and on ``device`` (batched), and of device decoding + resize to 512."""
    from torchvision.io import decode_jpeg

    data = jpeg_files(args)
    chunks = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]

    def on_device() -> list[torch.Tensor]:
        return [img for chunk in chunks for img in decode_jpeg(chunk, device=device)]

    def with_resize() -> None:
        for chunk in chunks:
            images = decode_jpeg(chunk, device=device)
            resized = [
                torch.nn.functional.interpolate(i[None].float(), size=(args.size, args.size), mode="bilinear")
                for i in images
            ]
            torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8)

    n = len(data)
    reset_peak(device)
    result = {
        "jpegs": n,
        "source": str(args.images) if args.images else "640 x 480 JPEGs made by the benchmark (quality 90)",
        "cpu_decode_images_per_s": n
        / seconds_per_call(lambda: [decode_jpeg(d) for d in data], device, warmup=1, iters=3),
        "device_decode_images_per_s": n / seconds_per_call(on_device, device, warmup=2, iters=5),
        "device_decode_resize_images_per_s": n / seconds_per_call(with_resize, device, warmup=2, iters=5),
    }
    result["peak_memory_gib"] = peak_gib(device)
    return result


def encoder_decoder(args: argparse.Namespace, device: torch.device) -> dict:
    """Milliseconds per batch and peak memory of the target encoder and of the decoder on ``device``."""
    from ttfnet_lightning.core.decode import decode_detections
    from ttfnet_lightning.core.targets import encode_targets

    batch = random_batch(args.batch, args.size, device)
    h = args.size // 4
    out = {}
    reset_peak(device)
    encode = lambda: encode_targets(batch["boxes"], batch["labels"], num_classes=80, output_size=(h, h))  # noqa: E731
    out["encoder_ms"] = 1000 * seconds_per_call(encode, device, warmup=3, iters=20)
    out["encoder_peak_memory_gib"] = peak_gib(device)
    g = torch.Generator().manual_seed(1)
    heat = (torch.randn(args.batch, 80, h, h, generator=g) - 4).to(device)
    wh = (torch.rand(args.batch, 4, h, h, generator=g) * 100).to(device)
    reset_peak(device)
    decode = lambda: decode_detections(heat, wh, input_size=(args.size, args.size))  # noqa: E731
    out["decoder_ms"] = 1000 * seconds_per_call(decode, device, warmup=3, iters=20)
    out["decoder_peak_memory_gib"] = peak_gib(device)
    return out


def infer_rates(args: argparse.Namespace, device: torch.device) -> dict:
    """Model-only images/s of the inference path at batch 1, per precision (fp16 autocast: GPUs)."""
    from ttfnet_lightning.core.inference import optimize_for_inference
    from ttfnet_lightning.core.models import TTFNet

    net = TTFNet(num_classes=80, backbone=args.backbone).to(device).eval()
    x = torch.randn(1, 3, args.size, args.size, device=device)
    rates = {}
    for precision in ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16"):
        fast = optimize_for_inference(net, precision=precision)
        rates[precision] = 1 / seconds_per_call(lambda: fast(x), device, warmup=10, iters=50)  # noqa: B023
    return rates


def gib(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(report: dict, args: argparse.Namespace) -> str:
    """The report as Markdown: one table per part."""
    lines = [f"# GPU benchmark: TTFNet-{args.backbone.upper()} fast recipe at {args.size} px", ""]
    lines += [f"{report['machine']}; device {report['device']}; batch {args.batch}; {report['started']}", ""]
    lines += ["| training variant | images/s | ms/step | peak memory (GiB) |", "|---|---:|---:|---:|"]
    for name, r in report["training"].items():
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | {gib(r['peak_memory_gib'])} |")
    d = report.get("data")
    if d:
        lines += ["", f"Data loading, {d['jpegs']} JPEGs ({d['source']}), images/s:", ""]
        lines += ["| CPU decode (1 process) | device decode | device decode + resize | peak memory (GiB) |"]
        lines += ["|---:|---:|---:|---:|"]
        lines.append(
            f"| {d['cpu_decode_images_per_s']:.0f} | {d['device_decode_images_per_s']:.0f} "
            f"| {d['device_decode_resize_images_per_s']:.0f} | {gib(d['peak_memory_gib'])} |"
        )
    e = report["encoder_decoder"]
    lines += ["", f"Per batch of {args.batch} images:", "", "| part | ms | peak memory (GiB) |", "|---|---:|---:|"]
    enc = f"target encoder ({COCO_BOXES_PER_IMAGE} boxes per image)"
    lines.append(f"| {enc} | {e['encoder_ms']:.2f} | {gib(e['encoder_peak_memory_gib'])} |")
    lines.append(f"| decoder (80 classes, top 100) | {e['decoder_ms']:.2f} | {gib(e['decoder_peak_memory_gib'])} |")
    if report.get("inference"):
        lines += [
            "",
            "Inference path, batch 1, model-only images/s: "
            + ", ".join(f"{p} {v:.0f}" for p, v in report["inference"].items()),
        ]
    lines += [
        "",
        "Projected training time on COCO train2017 (one device at the measured rate; data loading and "
        "validation not included):",
        "",
        "| variant | " + " | ".join(SCHEDULES) + " |",
        "|---|" + "---:|" * len(SCHEDULES),
    ]
    for name, minutes in report["projected_minutes"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m / 60:.1f} h" for m in minutes.values()) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="r18", help="r18 (the paper's fast recipe), r34, d53")
    p.add_argument("--batch", type=int, default=16, help="images per step (the paper: 16 per GPU)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compiled variants: 10 more)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--images", type=Path, default=None, help="a folder of JPEGs to decode (default: made here)")
    p.add_argument("--jpegs", type=int, default=64, help="JPEGs decoded per pass")
    p.add_argument("--no-data", action="store_true", help="skip the JPEG decoding part")
    p.add_argument("--no-inference", action="store_true", help="skip the inference-path part")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check of the script)")
    p.add_argument(
        "--report", type=Path, default=Path(__file__).resolve().parent / "gpu_report.md", help="Markdown report"
    )
    p.add_argument("--json", type=Path, default=None, help="the figures as JSON (benchmarks/report.py)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine, nothing measured (run it on a GPU machine, or --device cpu)")
        return 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer=gpu
    report: dict = {"machine": machine(), "device": str(device), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report["training"] = {name: train_variant(name, args, device) for name in args.variants.split(",")}
    if not args.no_data:
        report["data"] = data_rates(args, device)
    report["encoder_decoder"] = encoder_decoder(args, device)
    if not args.no_inference:
        report["inference"] = infer_rates(args, device)
    report["projected_minutes"] = {
        name: {s: epochs * COCO_TRAIN_IMAGES / r["images_per_s"] / 60 for s, epochs in SCHEDULES.items()}
        for name, r in report["training"].items()
    }
    text = markdown(report, args)
    print(text)
    args.report.write_text(text)
    print(f"wrote {args.report}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
