"""Evaluate a checkpoint: COCO AP table and inference speed on this machine.

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

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ttfnet_lightning.core.metrics import COCO_STATS, NA_NOTE, format_ap, is_na
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.training.callbacks import CocoResultsWriter
from ttfnet_lightning.training.checkpoint_data import checkpoint_data_config
from ttfnet_lightning.training.checkpoints import load_model
from ttfnet_lightning.training.error_analysis import ANALYSIS_DIR, write_error_analysis
from ttfnet_lightning.training.records import beside_run, output_dir
from ttfnet_lightning.training.warnings_policy import library_messages_filtered

log = logging.getLogger(__name__)

__all__ = ["coco_official_metrics", "evaluate", "model_speed", "check_same_classes", "class_differences"]


def coco_official_metrics(
    ann_file: str | Path, results: str | Path | list[dict], image_ids: Sequence[int]
) -> dict[str, float]:
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


def class_differences(
    model_names: Sequence[str] | None,
    model_ids: Sequence[int] | None,
    data_names: Sequence[str],
    data_ids: Sequence[int] | None,
) -> list[str]:
    """How a checkpoint's classes differ from a data set's with as many classes, one line per label
    that differs (``[]``: the same): its name (not compared when the checkpoint stores none) and its
    category id (``None`` ids mean id = label, as ``predict`` writes them)."""
    n = len(data_names)
    m_ids = list(range(n)) if model_ids is None else [int(i) for i in model_ids]
    d_ids = list(range(n)) if data_ids is None else [int(i) for i in data_ids]

    def at(seq: Sequence[Any] | None, k: int) -> Any:
        return seq[k] if seq is not None and k < len(seq) else None

    diffs = []
    for k in range(max(n, len(m_ids), len(d_ids))):
        m_name, d_name, m_id, d_id = at(model_names, k), at(data_names, k), at(m_ids, k), at(d_ids, k)
        if (model_names is not None and m_name != d_name) or m_id != d_id:
            diffs.append(f"label {k}: checkpoint {m_name!r} (category id {m_id}), data {d_name!r} (category id {d_id})")
    return diffs


def check_same_classes(model: Any, dm: Any, *, ckpt: Any, data_name: str, show: int = 5) -> None:
    """Refuses to evaluate ``model`` (a checkpoint's module) on ``dm`` unless both have the same
    classes: count, names and category ids, label by label (:func:`class_differences`).

    Raises:
        DataError: the classes differ; the message lists the first ``show`` differences.
    """
    info = model.hparams.data_info
    names = list(info["class_names"]) if info.get("class_names") else None
    if names is None:
        log.warning("checkpoint %s stores no class names: only the class count and category ids are compared", ckpt)
    if dm.num_classes != model.num_classes:
        diffs = [f"{model.num_classes} classes in the checkpoint, {dm.num_classes} in the data"]
    else:
        diffs = class_differences(names, model.label_to_cat_id, list(dm.class_names), dm.label_to_cat_id)
    if diffs:
        more = f"\n  ... and {len(diffs) - show} more" if len(diffs) > show else ""
        raise DataError(
            f"checkpoint {ckpt} was trained on other classes than data '{data_name}' has "
            f"({len(diffs)} difference(s)); evaluate on the data set the model was trained for:\n  "
            + "\n  ".join(diffs[:show])
            + more
        )


def _load(cfg: DictConfig, precision: str):
    """The checkpoint's module, on the inference path for ``precision`` (``cfg.inference``)."""
    model = load_model(cfg.ckpt)
    inf = cfg.get("inference") or {}
    if inf.get("optimize", True):
        model.optimize_for_inference(precision=precision, compile=bool(inf.get("compile", False)))
    elif precision != "fp32":
        raise ValueError(f"precision {precision!r} needs inference.optimize=true (the network as trained runs in fp32)")
    return model


def _evaluate_once(
    cfg: DictConfig, dm: Any, precision: str, out: Path, input_size: list[int], json_name: str
) -> dict[str, Any]:
    """AP (ours and, with an annotation file, COCOeval's) and speeds of one precision."""
    model = _load(cfg, precision)
    if dm.label_to_cat_id is not None:
        model.hparams.data_info["label_to_cat_id"] = list(dm.label_to_cat_id)
    with library_messages_filtered():  # Lightning's hosted-logger tip, as in train()
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            default_root_dir=str(out),
            # the inference path applies ``precision`` itself; the training default (bf16-mixed on a CPU with
            # native bf16, ttfnet_lightning.training.precision) must not autocast the fp32 evaluation
            precision="32-true",
            logger=False,
            callbacks=[CocoResultsWriter(json_name)],
            _convert_="all",
        )
    t0 = time.perf_counter()
    with warnings.catch_warnings(), library_messages_filtered():
        warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
        results = trainer.validate(model, datamodule=dm, verbose=False)[0]  # CocoResultsWriter: the detections JSON
    seconds = time.perf_counter() - t0
    # the validation loader is in order: the images evaluated are the first ones (trainer.limit_val_batches)
    num_batches = trainer.num_val_batches[0] if trainer.num_val_batches else 0
    num_images = int(min(num_batches * dm.batch_size, len(dm.val_dataset)))
    model = model.to(trainer.strategy.root_device).eval()
    speed = {
        "model_only_images_per_s_batch1": model_speed(
            model, batch_size=1, input_size=input_size, iters=cfg.speed_iters
        ),
        f"model_only_images_per_s_batch{dm.batch_size}": model_speed(
            model, batch_size=dm.batch_size, input_size=input_size, iters=max(cfg.speed_iters // 4, 2)
        ),
        "end_to_end_images_per_s": num_images / seconds,
    }
    metrics = {k: float(v) for k, v in results.items()} | speed | {"num_images": num_images, "precision": precision}
    dets_json = out / json_name
    if dm.val_ann_file and Path(dm.val_ann_file).is_file() and dets_json.is_file():
        official = coco_official_metrics(dm.val_ann_file, dets_json, dm.val_dataset.image_ids[:num_images])
        metrics |= {f"coco/{k}": v for k, v in official.items()}
    metrics["device"] = str(trainer.strategy.root_device)
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg.ckpt`` on ``cfg.data``'s validation split, once per precision of
    ``cfg.inference.precisions`` (the first is the reported one); returns and prints the metrics
    (AP ours and COCOeval's when the data has an annotation file, model-only and end-to-end speed)."""
    out = output_dir(cfg, beside_run(cfg.ckpt, "evaluate"))
    probe = load_model(cfg.ckpt)
    data = checkpoint_data_config(cfg.data, cfg.ckpt)
    input_size = list(cfg.input_size or probe.input_size)
    overrides: dict[str, Any] = {"input_size": input_size}
    if cfg.get("batch_size"):
        overrides["batch_size"] = int(cfg.batch_size)
    dm = instantiate(data.datamodule, **overrides, _convert_="all")
    check_same_classes(probe, dm, ckpt=cfg.ckpt, data_name=str(data.name))
    out.mkdir(parents=True, exist_ok=True)
    precisions = list((cfg.get("inference") or {}).get("precisions") or ["fp32"])
    by_precision = {}
    for i, precision in enumerate(precisions):
        json_name = "detections_val.json" if i == 0 else f"detections_val_{precision}.json"
        by_precision[precision] = _evaluate_once(cfg, dm, precision, out, input_size, json_name)
    first = by_precision[precisions[0]]
    metrics = dict(first) | {
        "threads": torch.get_num_threads(),
        "input_size": input_size,
        "checkpoint": str(cfg.ckpt),
        "by_precision": by_precision,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    num_images = first["num_images"]
    print(f"\nEvaluation of {cfg.ckpt} on {data.name} val ({num_images} images, {input_size[0]}x{input_size[1]})")

    def cell(v: float) -> str:
        return format_ap(v, "8.2f")

    columns = [(p, k) for p in precisions for k in ("val", "coco") if f"{k}/AP" in by_precision[p]]
    heads = {"val": "ours", "coco": "COCOeval"}
    print(
        "  "
        + " " * 5
        + "".join(f" {heads[k] + ('' if len(precisions) == 1 else ' ' + p):>14}" for p, k in columns)
        + (f"   (COCOeval: official pycocotools vs {dm.val_ann_file})" if any(k == "coco" for _, k in columns) else "")
    )
    for name in COCO_STATS:
        values = [by_precision[p][f"{k}/{name}"] for p, k in columns]
        print(
            f"  {name:<5}"
            + "".join(f" {cell(v):>14}" for v in values)
            + (f"   ({NA_NOTE})" if values and is_na(values[0]) else "")
        )
    print(f"speed on {metrics['device']} ({metrics['threads']} threads), images/s:")
    speed_keys = [k for k in first if k.endswith("_per_s") or "_per_s_" in k]
    for k in speed_keys:
        print(f"  {k:<36}" + "".join(f" {by_precision[p][k]:8.1f} ({p})" for p in precisions))
    print(f"wrote {out / 'metrics.json'} and the detections JSON(s) in {out}")
    if cfg.get("analysis", True):  # per-class AP, PR curves, confusion matrix, worst images: <out>/analysis/
        write_error_analysis(out / "detections_val.json", dm, out / ANALYSIS_DIR, num_images=num_images)
    return metrics
