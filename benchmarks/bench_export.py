"""Deployment and backbones (issue 12), in one process on this CPU:

1. **ONNX parity**: the exported model (normalisation + network + fixed-K decoder) in onnxruntime
   vs the same graph in PyTorch, on real COCO-mini images resized to 512 px (random images when
   ``../shared/data/coco-mini`` is absent): max box difference (px, over the detections above the
   score threshold whose score is not a near-tie) and label agreement, deformable and plain necks.
2. **Latency** at batch 1, 512 px, C = 80, image -> decoded top-100: onnxruntime (CPU provider,
   as many threads as torch) vs PyTorch eager (fp32, ``torch.inference_mode``), both necks; median
   of interleaved rounds.
3. **Backbones**: parameter count and PyTorch latency (same setting, deformable neck) of TTFNet with
   R18 (reference), DLA-34 and timm backbones (built without weights).

Weights are random but "trained-looking" (BN statistics, deformable offsets of about a pixel,
heatmap logits spread over a few units, so that the top-K order is not a sea of ties); latency does
not depend on them.

    python benchmarks/bench_export.py [--repeats 10] [--images 8] [--timm resnet18d,mobilenetv3_large_100,resnet50d]
                                     [--threads N] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from ttfnet_lightning.deploy.export import export_onnx  # noqa: E402
from ttfnet_lightning.deploy.graph import DetectionExport, exportable_net  # noqa: E402
from ttfnet_lightning.deploy.onnx_runtime import OnnxDetector, compare_detections  # noqa: E402
from ttfnet_lightning.training.lit_module import TTFNetModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def trained_looking(module: TTFNetModule, seed: int = 0) -> TTFNetModule:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if hasattr(m, "offset_mask"):
                m.offset_mask.weight.normal_(0, 0.02, generator=gen)
        head = module.net.head
        head.heatmap[-1].weight.normal_(0, 1.0, generator=gen)
        head.heatmap[-1].bias.fill_(-1.0)
        head.box[-1].weight.normal_(0, 0.5, generator=gen)
        head.box[-1].bias.fill_(1.0)
    return module.eval()


def build(
    size: int, classes: int, *, deformable: bool = True, backbone: str = "r18", model: str | None = None
) -> TTFNetModule:
    torch.manual_seed(0)
    net = {"backbone": backbone, "backbone_model": model, "deformable": deformable, "frozen_stages": -1}
    return trained_looking(TTFNetModule(net=net, data_info={"num_classes": classes, "input_size": [size, size]}))


def images(size: int, n: int) -> tuple[torch.Tensor, str]:
    root = REPO.parent / "shared" / "data" / "coco-mini" / "val2017"
    if root.is_dir():
        from ttfnet_lightning.deploy.predict import ImageFolder, list_images

        files = list_images(root)[:n]
        folder = ImageFolder(files, (size, size))
        return torch.stack([folder[i]["input"] for i in range(len(files))]), f"{len(files)} COCO-mini val images"
    g = torch.Generator().manual_seed(0)
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g
    ), f"{n} random images (coco-mini absent)"


def interleaved(fns: dict[str, callable], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds (fairer on a busy machine)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument(
        "--timm", default="resnet18d,mobilenetv3_large_100,resnet50d", help="comma-separated timm models ('' = none)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="3 repeats, 2 images, 1 timm model (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.images, args.timm = 3, 2, args.timm.split(",")[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"# Export and backbones -- {machine()}\n")
    print(
        f"batch 1, {args.size} px, C = {args.classes}, top-100 decoded; median of {args.repeats} interleaved rounds; "
        f"onnxruntime with {threads} intra-op threads\n"
    )
    results: dict[str, object] = {
        "machine": machine(),
        "size": args.size,
        "classes": args.classes,
        "repeats": args.repeats,
    }
    batch, source = images(args.size, args.images)

    # ---------------------------------------------------------------- ONNX parity and latency
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for deformable in (True, False):
            name = "deformable" if deformable else "plain"
            module = build(args.size, args.classes, deformable=deformable)
            t0 = time.perf_counter()
            export_onnx(module, Path(tmp) / f"{name}.onnx", check=False)
            export_s = time.perf_counter() - t0
            det = OnnxDetector(Path(tmp) / f"{name}.onnx", threads=threads)
            wrapper = DetectionExport(exportable_net(module), input_size=(args.size, args.size)).eval()
            with torch.inference_mode():
                ref = wrapper(batch)
            parity = compare_detections(ref, det.run(batch), score_threshold=det.score_threshold)
            one = batch[:1]
            one_np = one.numpy()

            def torch_run(w=wrapper, x=one):
                with torch.inference_mode():
                    w(x)

            lat = interleaved({"torch": torch_run, "onnxruntime": lambda d=det, x=one_np: d.run(x)}, args.repeats)
            row = {
                "neck": name,
                "export_s": export_s,
                **parity,
                "torch_ms": lat["torch"] * 1e3,
                "onnxruntime_ms": lat["onnxruntime"] * 1e3,
            }
            rows.append(row)
    results["onnx"] = rows
    print(f"## ONNX vs PyTorch ({source}, {args.size} px)\n")
    print(
        "| neck | max box diff (px) | labels equal | max score diff | compared / near-ties | PyTorch eager (ms) | "
        "onnxruntime (ms) | speed-up | export (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['neck']} | {r['max_box_diff_px']:.1e} | {r['label_agreement'] * 100:.1f} % | "
            f"{r['max_score_diff']:.1e} | "
            f"{r['compared']} / {r['ambiguous']} | {r['torch_ms']:.0f} | {r['onnxruntime_ms']:.0f} | "
            f"{r['torch_ms'] / r['onnxruntime_ms']:.2f}x | {r['export_s']:.0f} |"
        )

    # ------------------------------------------------------------------------------ backbones
    specs = [("R18 (torchvision)", "r18", None), ("DLA-34", "dla34", None)]
    specs += [(f"timm {m}", "timm", m) for m in filter(None, args.timm.split(","))]
    x = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8)
    fns, info = {}, {}
    for label, backbone, model in specs:
        module = build(args.size, args.classes, backbone=backbone, model=model)
        wrapper = DetectionExport(exportable_net(module), input_size=(args.size, args.size)).eval()
        info[label] = {
            "backbone_params_M": sum(p.numel() for p in module.net.backbone.parameters()) / 1e6,
            "total_params_M": sum(p.numel() for p in module.net.parameters()) / 1e6,
            "channels": list(module.net.backbone.out_channels),
        }

        def run(w=wrapper):
            with torch.inference_mode():
                w(x)

        fns[label] = run
    lat = interleaved(fns, args.repeats)
    ref_ms = lat[specs[0][0]] * 1e3
    print(
        f"\n## Backbones (TTFNet, deformable neck, PyTorch eager fp32, batch 1, {args.size} px, C = {args.classes})\n"
    )
    print("| backbone | stride 4-32 channels | backbone params (M) | TTFNet params (M) | latency (ms) | vs R18 |")
    print("|---|---|---|---|---|---|")
    rows = []
    for label, _, _ in specs:
        ms = lat[label] * 1e3
        rows.append({"backbone": label, **info[label], "latency_ms": ms, "vs_r18": ms / ref_ms})
        i = info[label]
        print(
            f"| {label} | {'/'.join(map(str, i['channels']))} | {i['backbone_params_M']:.1f} | "
            f"{i['total_params_M']:.1f} | {ms:.0f} | {ms / ref_ms:.2f}x |"
        )
    results["backbones"] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
