"""Error analysis of a detector's COCO-format detections: what ``evaluate`` writes into
``<evaluate dir>/analysis/`` and a finished training run into ``<run>/analysis/`` (its last
validation's ``detections_val.json``), and logs to W&B when a W&B logger is active.

Files (:func:`write_error_analysis`; CSV and JSON always, the PNGs other than ``worst_images.png``
with matplotlib, ``pip install -e .[viz]``):

* ``per_class_ap.csv`` / ``.png``: AP, AP50, AP75 (percent) per class, ground-truth and detection counts;
* ``pr_curves.csv`` / ``.png``: precision at COCO's 101 recall points per class and overall, at IoU
  0.5 and averaged over IoU 0.5:0.95 (the overall curves' means are AP50 and AP);
* ``size_ap.csv`` / ``.png``: AP and AP50 for COCO's small / medium / large objects;
* ``f1_confidence.csv`` / ``.png``: precision, recall, F1 against the score threshold at IoU 0.5,
  all classes pooled (and F1 per class); its maximum is ``best_score_threshold`` in ``summary.json``
  (:func:`best_score_threshold` reads it, e.g. for ``predict``);
* ``confusion_matrix.csv`` / ``.png``: ground-truth class x predicted class with a background row
  (false detections) and column (missed boxes), at IoU 0.5 and the best score threshold (both in
  the CSV's corner cell and the PNG's title);
* ``worst_images.csv`` / ``.png``: the images with the most missed + false detections at that threshold,
  ground truth beside predictions;
* ``summary.json``: the six APs, the thresholds, counts, the ground truth's source, the files.

The numbers are pycocotools' ``COCOeval`` (:mod:`ttfnet_lightning.training.coco_breakdown` says what
was checked against it), on the ground truth of :mod:`ttfnet_lightning.training.eval_ground_truth`.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttfnet_lightning.core.metrics import AP_NAMES
from ttfnet_lightning.training.analysis_figures import save_analysis_figures, save_worst_images
from ttfnet_lightning.training.coco_breakdown import (
    IOU,
    coco_eval,
    confusion_matrix,
    f1_curve,
    image_errors,
    per_class_ap,
    pr_curves,
    size_ap,
)
from ttfnet_lightning.training.eval_ground_truth import GroundTruth, ground_truth, image_of, load_detections

log = logging.getLogger(__name__)

__all__ = [
    "ANALYSIS_DIR",
    "SUMMARY",
    "Analysis",
    "analyze",
    "write_tables",
    "write_error_analysis",
    "best_score_threshold",
]

ANALYSIS_DIR = "analysis"  # the subfolder of a run or an evaluation
SUMMARY = "summary.json"
FALLBACK_THRESHOLD = 0.3  # score threshold of the confusion matrix when F1 has no maximum (no true positive)


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """The numbers of one error analysis (K classes, label order; see :func:`analyze`)."""

    class_names: list[str]
    stats: dict[str, float]  # COCOeval's AP, AP50, AP75, APs, APm, APl (percent, -1: no ground truth)
    per_class: list[dict[str, Any]]
    sizes: list[dict[str, Any]]
    pr: dict[str, Any]  # coco_breakdown.pr_curves
    f1: dict[str, Any]  # coco_breakdown.f1_curve
    score_threshold: float  # of the confusion matrix and the image errors
    confusion: np.ndarray  # (K + 1, K + 1)
    worst: list[dict[str, Any]]  # the images with the most errors, their boxes (xyxy) by kind
    num_images: int
    num_detections: int
    source: str
    iou: float = IOU


def _boxes(anns: Sequence[dict[str, Any]], label: dict[int, int]) -> dict[str, list]:
    """xyxy boxes, labels and scores (ground truth: none) of COCO annotations / results."""
    xyxy = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
    return {
        "boxes": xyxy,
        "labels": [label[a["category_id"]] for a in anns],
        "scores": [a["score"] for a in anns] if anns and "score" in anns[0] else None,
    }


def _worst(ev: Any, gt: GroundTruth, threshold: float, num: int) -> list[dict[str, Any]]:
    """The ``num`` images with the most missed + false detections (ties: the lower image id), with
    their boxes by kind: ``found`` / ``missed`` (ground truth), ``tp`` / ``false`` (detections)."""
    errors = image_errors(ev, score_threshold=threshold)
    ranked = sorted(errors.items(), key=lambda kv: (-(len(kv[1]["missed"]) + len(kv[1]["false"])), kv[0]))
    label = {c: k for k, c in enumerate(gt.cat_ids)}
    out = []
    for image_id, e in ranked[:num]:
        if not e["missed"] and not e["false"]:
            break
        row: dict[str, Any] = {"image_id": image_id} | {k: len(v) for k, v in e.items()}
        for kind, coco in (("found", ev.cocoGt), ("missed", ev.cocoGt), ("tp", ev.cocoDt), ("false", ev.cocoDt)):
            row[f"{kind}_boxes"] = _boxes([coco.anns[i] for i in e[kind]], label)
        out.append(row)
    return out


def analyze(gt: GroundTruth, detections: Sequence[dict[str, Any]], *, num_worst: int = 8) -> Analysis:
    """The error analysis of COCO results ``detections`` on ``gt`` (:func:`load_detections` first)."""
    ev = coco_eval(gt, detections)
    f1 = f1_curve(ev, gt)
    threshold = f1["best"]["threshold"] if f1["best"] else FALLBACK_THRESHOLD
    stats = {name: (-1.0 if ev.stats[i] < 0 else float(ev.stats[i]) * 100) for i, name in enumerate(AP_NAMES)}
    return Analysis(
        class_names=list(gt.class_names),
        stats=stats,
        per_class=per_class_ap(ev, gt),
        sizes=size_ap(ev),
        pr=pr_curves(ev, gt),
        f1=f1,
        score_threshold=float(threshold),
        confusion=confusion_matrix(gt, detections, score_threshold=threshold),
        worst=_worst(ev, gt, threshold, num_worst),
        num_images=len(gt.image_ids),
        num_detections=len(detections),
        source=gt.source,
    )


def _cell(v: Any) -> Any:
    """Floats rounded to 6 digits, NaN (undefined, e.g. precision without detections) empty."""
    return ("" if np.isnan(v) else round(v, 6)) if isinstance(v, float) else v


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[_cell(v) for v in r] for r in rows])
    return path


def write_tables(a: Analysis, out: Path) -> list[Path]:
    """The analysis' CSV files in ``out`` (see the module's doc)."""
    cols = list(a.per_class[0]) if a.per_class else ["label", "class"]
    files = [_write_csv(out / "per_class_ap.csv", cols, [[r[c] for c in cols] for r in a.per_class])]
    cols = ["size", "area_range", "num_gt", "AP", "AP50"]
    files.append(_write_csv(out / "size_ap.csv", cols, [[r[c] for c in cols] for r in a.sizes]))
    rows = []
    curves = [("all", a.pr["overall_at50"], a.pr["overall_mean"]), *zip(a.class_names, a.pr["at50"], a.pr["mean"])]
    for name, at50, mean in curves:
        for iou, curve in (("0.5", at50), ("0.5:0.95", mean)):
            rows += [[name, iou, float(r), "" if np.isnan(p) else float(p)] for r, p in zip(a.pr["recall"], curve)]
    files.append(_write_csv(out / "pr_curves.csv", ["class", "iou", "recall", "precision"], rows))
    f1 = a.f1
    cols = ["score_threshold", "precision", "recall", "f1", *(f"f1 {n}" for n in a.class_names)]
    per_class = f1["f1_per_class"].T if len(a.class_names) else np.zeros((len(f1["thresholds"]), 0))
    rows = [
        [float(t), float(p), float(r), float(f), *map(float, pc)]
        for t, p, r, f, pc in zip(f1["thresholds"], f1["precision"], f1["recall"], f1["f1"], per_class)
    ]
    files.append(_write_csv(out / "f1_confidence.csv", cols, rows))
    corner = f"ground truth \\ predicted (IoU >= {a.iou:g}, score >= {a.score_threshold:.4f})"
    row_names = [*a.class_names, "background (false detections)"]
    rows = [[n, *map(int, r)] for n, r in zip(row_names, a.confusion)]
    files.append(_write_csv(out / "confusion_matrix.csv", [corner, *a.class_names, "background (missed)"], rows))
    cols = ["image_id", "missed", "false", "tp", "found"]
    files.append(_write_csv(out / "worst_images.csv", cols, [[w[c] for c in cols] for w in a.worst]))
    return files


def _summary(a: Analysis, files: Sequence[Path], detections: str) -> dict[str, Any]:
    best = a.f1["best"] or {}
    return {
        "best_score_threshold": best.get("threshold"),  # max F1 at IoU 0.5, all classes pooled; null: none
        "best_f1": best.get("f1"),
        "precision_at_best": best.get("precision"),
        "recall_at_best": best.get("recall"),
        "iou_threshold": a.iou,
        "confusion_score_threshold": a.score_threshold,
        **{f"coco/{k}": v for k, v in a.stats.items()},
        "num_images": a.num_images,
        "num_ground_truth_boxes": int(sum(r["num_gt"] for r in a.per_class)),
        "num_detections": a.num_detections,
        "ground_truth": a.source,
        "detections": detections,
        "evaluator": "pycocotools COCOeval (bbox)",
        "files": sorted(p.name for p in files),
    }


def write_error_analysis(
    detections: str | Path | Sequence[dict[str, Any]],
    datamodule: Any,
    out: str | Path,
    *,
    num_images: int | None = None,
    loggers: Sequence[Any] = (),
    step: int | None = None,
    num_worst: int = 8,
    dpi: int = 80,
) -> dict[str, Any]:
    """Analyse ``detections`` (a COCO results JSON or its list) on the first ``num_images`` (default:
    all) validation images of ``datamodule``; write the files into ``out`` (created; see the module's
    doc) and log the PNGs and the per-class table to the W&B logger among ``loggers`` (at ``step``).
    Returns ``summary.json``'s content."""
    out = Path(out)
    gt = ground_truth(datamodule, num_images=num_images)
    dets = load_detections(detections, gt)
    a = analyze(gt, dets, num_worst=num_worst)
    out.mkdir(parents=True, exist_ok=True)
    files = write_tables(a, out)
    ds = datamodule.val_dataset
    pictures = [image_of(ds, gt.image_ids.index(w["image_id"])) for w in a.worst]
    pngs = {
        "worst_images": save_worst_images(
            a.worst,
            pictures,
            a.class_names,
            out / "worst_images.png",
            note=f"IoU >= {a.iou:g}, score >= {a.score_threshold:.3f}",
        )
    }
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("error analysis: CSV files only in %s; its plots need matplotlib: pip install -e .[viz]", out)
    else:
        pngs |= save_analysis_figures(a, out, dpi=dpi)
    pngs = {k: v for k, v in pngs.items() if v is not None}
    summary = _summary(a, [*files, *pngs.values()], str(detections) if isinstance(detections, (str, Path)) else "")
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    _log_wandb(loggers, pngs, a.per_class, step)
    t = summary["best_score_threshold"]
    best = "no true positive" if t is None else f"best score threshold {t:.3f} (F1 {summary['best_f1']:.3f})"
    print(f"error analysis ({a.num_images} images, {best}): {out}")
    return summary


def _log_wandb(
    loggers: Sequence[Any], pngs: dict[str, Path], per_class: list[dict[str, Any]], step: int | None
) -> None:
    """The PNGs as images and the per-class table as a ``wandb.Table`` (``analysis/*``) to the W&B
    loggers among ``loggers``; a failure is logged, never raised."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        try:
            import wandb

            payload: dict[str, Any] = {f"analysis/{k}": wandb.Image(str(p)) for k, p in pngs.items()}
            if per_class:
                cols = list(per_class[0])
                payload["analysis/per_class"] = wandb.Table(
                    columns=cols, data=[[r[c] for c in cols] for r in per_class]
                )
            if step is not None:
                payload["trainer/global_step"] = step  # the logger's step metric
            lg.experiment.log(payload)
        except Exception as exc:  # a logging failure must not lose the run's files
            log.warning("could not log the error analysis to W&B: %s", exc)


def best_score_threshold(run_or_analysis_dir: str | Path) -> float | None:
    """The F1-maximising score threshold (IoU 0.5, all classes pooled) stored by an error analysis:
    ``<dir>/summary.json`` or ``<dir>/analysis/summary.json`` (a run or an evaluation folder); None
    when there is none, or the analysis found no true positive.

    Raises:
        ValueError: the ``summary.json`` found is not JSON, or its ``best_score_threshold`` not a number."""
    path = Path(run_or_analysis_dir)
    found = next((p for p in (path, path / SUMMARY, path / ANALYSIS_DIR / SUMMARY) if p.is_file()), None)
    if found is None:
        return None
    try:
        value = json.loads(found.read_text()).get("best_score_threshold")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{found} is not an error analysis' summary (a JSON object): {exc}") from None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{found}: best_score_threshold must be a number or null, got {value!r}")
    return None if value is None else float(value)
