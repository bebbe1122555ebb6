"""Evaluate a checkpoint: COCO AP table and inference speed on this machine.

    python -m ttfnet_lightning.evaluate ckpt=outputs/.../checkpoints/last.ckpt
    python -m ttfnet_lightning.evaluate ckpt=... data=coco data.datamodule.root=/data/coco

With a COCO annotation file (``data=coco``) the AP table is printed twice: ours (the module's
torchmetrics metric, ``val/AP*``) and the official pycocotools ``COCOeval`` run on the written
``detections_val.json`` against the annotation file (``coco/AP*`` in metrics.json), over the same
images; they agree to 0.1 (tested).

Speeds: *model-only* = network forward + decoding on a pre-loaded batch on the device (the paper's
FPS definition, batch 1 and the data batch size); *end-to-end* = the whole validation loop
(loading, resizing, transfer, network, decoding, metric) divided by the number of images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .callbacks import CocoResultsWriter
from .checkpoints import load_model
from .metrics import COCO_STATS, NA_NOTE, format_ap, is_na
from .train import output_dir

log = logging.getLogger(__name__)

__all__ = ["coco_official_metrics", "evaluate", "model_speed"]



def coco_official_metrics(ann_file: str | Path, results: str | Path | list[dict], image_ids: Sequence[int]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (percent; -1 where a size range has no ground truth) of COCO
    results (a ``detections_val.json`` path or its list) by pycocotools' ``COCOeval`` against
    ``ann_file``, over ``image_ids`` (the images that were evaluated)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not isinstance(results, list):
        results = json.loads(Path(results).read_text())
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its table
        gt = COCO(str(ann_file))
        if not results:
            return {k: 0.0 for k in COCO_STATS}
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: -1.0 if is_na(ev.stats[i]) else float(ev.stats[i]) * 100 for k, i in COCO_STATS.items()}


@torch.inference_mode()
def model_speed(model, *, batch_size: int, input_size: tuple[int, int], iters: int = 20, warmup: int = 3) -> float:
    """Images per second of forward + decode on random input already on the model's device."""
    device = model.device
    H, W = input_size
    images = torch.randn(batch_size, 3, H, W, device=device)
    meta = [{"orig_size": (H, W)}] * batch_size
    for _ in range(warmup):
        model.decode(*model(images), meta, (H, W))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        model.decode(*model(images), meta, (H, W))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - t0)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg.ckpt`` on ``cfg.data``'s validation split; returns and prints the metrics."""
    out = output_dir(cfg, "outputs/evaluate")
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(cfg.ckpt)
    input_size = list(cfg.input_size or model.input_size)
    overrides: dict[str, Any] = {"input_size": input_size}
    if cfg.get("batch_size"):
        overrides["batch_size"] = int(cfg.batch_size)
    dm = instantiate(cfg.data.datamodule, **overrides, _convert_="all")
    if dm.num_classes != model.num_classes:
        raise ValueError(
            f"checkpoint {cfg.ckpt} predicts {model.num_classes} classes but data '{cfg.data.name}' "
            f"has {dm.num_classes}; evaluate on the data set the model was trained for"
        )
    if dm.label_to_cat_id is not None:
        model.hparams.data_info["label_to_cat_id"] = list(dm.label_to_cat_id)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(out), logger=False, callbacks=[CocoResultsWriter()], _convert_="all"
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
        results = trainer.validate(model, datamodule=dm, verbose=False)[0]  # CocoResultsWriter: detections_val.json
    seconds = time.perf_counter() - t0
    # the validation loader is in order: the images evaluated are the first ones (trainer.limit_val_batches)
    num_batches = trainer.num_val_batches[0] if trainer.num_val_batches else 0
    num_images = int(min(num_batches * dm.batch_size, len(dm.val_dataset)))
    model = model.to(trainer.strategy.root_device).eval()
    speed = {
        "model_only_images_per_s_batch1": model_speed(model, batch_size=1, input_size=input_size, iters=cfg.speed_iters),
        f"model_only_images_per_s_batch{dm.batch_size}": model_speed(
            model, batch_size=dm.batch_size, input_size=input_size, iters=max(cfg.speed_iters // 4, 2)
        ),
        "end_to_end_images_per_s": num_images / seconds,
    }
    metrics = {k: float(v) for k, v in results.items()} | speed | {
        "num_images": num_images,
        "device": str(trainer.strategy.root_device),
        "threads": torch.get_num_threads(),
        "input_size": input_size,
        "checkpoint": str(cfg.ckpt),
    }
    dets_json = out / "detections_val.json"
    official = None
    if dm.val_ann_file and Path(dm.val_ann_file).is_file() and dets_json.is_file():
        official = coco_official_metrics(dm.val_ann_file, dets_json, dm.val_dataset.image_ids[:num_images])
        metrics |= {f"coco/{k}": v for k, v in official.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\nEvaluation of {cfg.ckpt} on {cfg.data.name} val ({num_images} images, {input_size[0]}x{input_size[1]})")

    def cell(v: float) -> str:
        return format_ap(v, "8.2f")

    if official is not None:
        print(f"  {'':<5} {'ours':>8} {'COCOeval':>8}   (official pycocotools on {dets_json.name} vs {dm.val_ann_file})")
    for name in COCO_STATS:
        k = f"val/{name}"
        if k in metrics:
            row = f"  {name:<5} {cell(metrics[k])}" + (f" {cell(official[name])}" if official is not None else "")
            print(row + (f"   ({NA_NOTE})" if is_na(metrics[k]) else ""))
    print(f"speed on {metrics['device']} ({metrics['threads']} threads):")
    for k, v in speed.items():
        print(f"  {k:<36} {v:8.1f}")
    print(f"wrote {out / 'metrics.json'} and {dets_json}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
