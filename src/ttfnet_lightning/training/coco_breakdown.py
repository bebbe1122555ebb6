"""``COCOeval`` broken down for an error analysis (:mod:`ttfnet_lightning.training.error_analysis`):
per-class AP, AP by object size, precision-recall curves, F1 against the score threshold, a confusion
matrix with a background row and column, and each image's missed and false detections.

Library, not hand-written counting: every number comes from pycocotools' ``COCOeval`` (the official
COCO evaluator, a core dependency). Per-class AP, AP by size and the PR curves are slices of its
``eval['precision']`` array [T, R, K, A, M] (the numbers ``summarize()`` averages); the F1 curve and
the image errors count its per-image matches (``evalImgs``: ``dtMatches``, ``dtScores``, ``dtIgnore``,
``gtMatches``, ``gtIgnore``), as ``accumulate()`` does; the confusion matrix is a second ``COCOeval``
run with ``useCats=0`` (class-agnostic matching; crowd / difficult boxes ignored) at IoU 0.5 on the
detections at or above the score threshold: faster-coco-eval's method
(``PreviewResults.compute_confusion_matrix``), with a score threshold and a background row and column.

Checked (tests/training/test_error_analysis.py): the mean of the per-class APs equals
``COCOeval.stats``' AP and AP50 to 1e-6, so do the means of the overall PR curves; the pooled
recall at score 0 equals ``eval['recall']`` weighted by the ground-truth counts; the confusion
matrix and the image errors count a hand-made case (a true positive, a wrong class, a miss).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ttfnet_lightning.training.eval_ground_truth import GroundTruth, coco_from_dict, quiet

__all__ = [
    "IOU",
    "coco_eval",
    "per_class_ap",
    "size_ap",
    "pr_curves",
    "f1_curve",
    "confusion_matrix",
    "image_errors",
]

IOU = 0.5  # IoU of the F1 curve, the confusion matrix and the image errors


def coco_eval(
    gt: GroundTruth,
    detections: Sequence[dict[str, Any]],
    *,
    use_cats: bool = True,
    iou_thrs: Sequence[float] | None = None,
    max_dets: int | None = None,
) -> Any:
    """``COCOeval`` (bbox) of ``detections`` on ``gt``'s images, evaluated; with the default
    parameters also accumulated and summarized (``stats``), as the official evaluation. ``use_cats=False``:
    class-agnostic matching, over the area range "all" only."""
    from pycocotools.cocoeval import COCOeval

    with quiet():
        if detections:
            res = gt.coco.loadRes([dict(d) for d in detections])
        else:  # loadRes refuses an empty list
            empty = {k: gt.coco.dataset[k] for k in ("images", "categories")}
            res = coco_from_dict(empty | {"annotations": []})
        ev = COCOeval(gt.coco, res, "bbox")
        ev.params.imgIds = list(gt.image_ids)
        ev.params.catIds = sorted(gt.cat_ids)
        ev.params.useCats = int(use_cats)
        default = use_cats and iou_thrs is None and max_dets is None
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        if max_dets is not None:
            ev.params.maxDets = [int(max_dets)]
        if not use_cats:
            ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
        ev.evaluate()
        if default:
            ev.accumulate()
            ev.summarize()
    return ev


def _t(ev: Any, iou: float) -> int:
    return int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - iou)))


def _ap(values: np.ndarray) -> float:
    """COCOeval's mean over the valid (> -1) precision entries, in percent (-1: none valid)."""
    valid = values[values > -1]
    return float(valid.mean()) * 100 if valid.size else -1.0


def _entries(ev: Any, area: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(category index k, evalImgs entry) of area range ``area`` (entries without boxes skipped)."""
    n_img, n_area = len(ev.params.imgIds), len(ev.params.areaRng)
    for k in range(len(ev.params.catIds) if ev.params.useCats else 1):
        for e in ev.evalImgs[(k * n_area + area) * n_img : (k * n_area + area + 1) * n_img]:
            if e is not None:
                yield k, e


def _counts(ev: Any, area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per category index: non-ignored ground-truth boxes and detections (K,) each."""
    K = len(ev.params.catIds)
    gts, dets = np.zeros(K, np.int64), np.zeros(K, np.int64)
    for k, e in _entries(ev, area):
        gts[k] += int((np.asarray(e["gtIgnore"]) == 0).sum())
        dets[k] += len(e["dtScores"])
    return gts, dets


def per_class_ap(ev: Any, gt: GroundTruth) -> list[dict[str, Any]]:
    """One row per class (label order): AP, AP50, AP75 (percent, -1: no ground truth), ground-truth
    boxes and detections; from an accumulated class-aware ``COCOeval``."""
    prec = ev.eval["precision"]  # (T, R, K, A, M); A = 0: all sizes, M = -1: 100 detections
    k_of = {c: k for k, c in enumerate(ev.params.catIds)}
    gts, dets = _counts(ev)
    rows = []
    for label, (cat, name) in enumerate(zip(gt.cat_ids, gt.class_names)):
        k = k_of[cat]
        rows.append(
            {
                "label": label,
                "class": name,
                "category_id": cat,
                "num_gt": int(gts[k]),
                "num_detections": int(dets[k]),
                "AP": _ap(prec[:, :, k, 0, -1]),
                "AP50": _ap(prec[_t(ev, 0.5), :, k, 0, -1]),
                "AP75": _ap(prec[_t(ev, 0.75), :, k, 0, -1]),
            }
        )
    return rows


def _side(area: float) -> str:
    """COCO's area limits as squares (``32²``); its "no limit" (1e10) as ``inf``."""
    return "inf" if area >= 1e9 else "0" if area <= 0 else f"{area**0.5:g}²"


def size_ap(ev: Any) -> list[dict[str, Any]]:
    """AP, AP50 (percent, -1: no ground truth of the size) and ground-truth boxes per COCO size range."""
    prec = ev.eval["precision"]
    rows = []
    for a, label in enumerate(ev.params.areaRngLbl):
        gts, _ = _counts(ev, a)
        lo, hi = (_side(v) for v in ev.params.areaRng[a])
        rows.append(
            {
                "size": label,
                "area_range": f"[{lo}, {hi})",
                "num_gt": int(gts.sum()),
                "AP": _ap(prec[:, :, :, a, -1]),
                "AP50": _ap(prec[_t(ev, 0.5), :, :, a, -1]),
            }
        )
    return rows


def pr_curves(ev: Any, gt: GroundTruth) -> dict[str, Any]:
    """Interpolated precision at COCO's 101 recall points: ``recall`` (R,), ``at50`` and ``mean``
    (K, R) per class (IoU 0.5; mean over IoU 0.5:0.95; NaN: no ground truth) and ``overall_at50``,
    ``overall_mean`` (R,): their mean over the classes with ground truth (whose means are AP50, AP)."""
    prec = ev.eval["precision"][:, :, :, 0, -1].astype(np.float64)  # (T, R, K)
    prec[prec < 0] = np.nan
    order = [list(ev.params.catIds).index(c) for c in gt.cat_ids]
    at50, mean = prec[_t(ev, 0.5)][:, order].T, prec.mean(axis=0)[:, order].T  # (K, R)
    with np.errstate(all="ignore"), _nan_mean_quiet():
        return {
            "recall": np.asarray(ev.params.recThrs, np.float64),
            "at50": at50,
            "mean": mean,
            "overall_at50": np.nanmean(at50, axis=0),
            "overall_mean": np.nanmean(mean, axis=0),
        }


@contextlib.contextmanager
def _nan_mean_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice")
        yield


def _matches(ev: Any, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, true-positive flags and category indices of the non-ignored detections (D,) and
    the non-ignored ground-truth boxes per category (K,), at IoU ``iou`` (what ``accumulate()`` counts)."""
    t = _t(ev, iou)
    scores, tps, ks = [], [], []
    gts = np.zeros(len(ev.params.catIds), np.int64)
    for k, e in _entries(ev):
        keep = ~np.asarray(e["dtIgnore"], bool).reshape(len(ev.params.iouThrs), -1)[t]
        scores.append(np.asarray(e["dtScores"], np.float64)[keep])
        tps.append(np.asarray(e["dtMatches"]).reshape(len(ev.params.iouThrs), -1)[t][keep] > 0)
        ks.append(np.full(int(keep.sum()), k))
        gts[k] += int((np.asarray(e["gtIgnore"]) == 0).sum())
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return cat(scores, np.float64), cat(tps, bool), cat(ks, np.int64), gts


def _prf(tp: np.ndarray, n: np.ndarray, n_gt: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision (NaN without detections), recall, F1 (0 without detections) from true positives
    ``tp``, detections ``n`` and ground-truth boxes."""
    with np.errstate(all="ignore"):
        p = np.where(n > 0, tp / np.maximum(n, 1), np.nan)
        r = tp / np.maximum(n_gt, 1)
        f1 = np.where(n > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return p, r, f1


def f1_curve(ev: Any, gt: GroundTruth, *, iou: float = IOU, grid: int = 101) -> dict[str, Any]:
    """Precision, recall and F1 against the score threshold at IoU ``iou``, all classes pooled
    (``precision``, ``recall``, ``f1`` on ``thresholds``, a grid of ``grid`` values in [0, 1]) and
    per class (``f1_per_class`` (K, S), label order); ``best``: the threshold of the highest pooled
    F1, found over every detection score, with its ``f1``, ``precision`` and ``recall`` (None
    without true positives)."""
    scores, tps, ks, gts = _matches(ev, iou)
    thresholds = np.linspace(0.0, 1.0, grid)
    order = np.argsort(-scores, kind="mergesort")
    s, tp = scores[order], np.cumsum(tps[order])
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, np.int64)  # score groups
    p, r, f1 = _prf(tp[ends], ends + 1, gts.sum())
    best = None
    if len(ends) and f1.max() > 0:
        i = int(np.argmax(f1))
        best = {"threshold": float(s[ends[i]]), "f1": float(f1[i]), "precision": float(p[i]), "recall": float(r[i])}

    def at(mask: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sc = np.sort(scores[mask])
        tp_sorted = tps[mask][np.argsort(scores[mask], kind="mergesort")]
        first = np.searchsorted(sc, thresholds, side="left")  # detections >= threshold: first..end
        tp_ge = np.r_[np.cumsum(tp_sorted[::-1])[::-1], 0][first]
        return _prf(tp_ge.astype(np.float64), (len(sc) - first).astype(np.float64), n_gt)

    pooled = at(np.ones(len(scores), bool), int(gts.sum()))
    k_of = [list(ev.params.catIds).index(c) for c in gt.cat_ids]
    per_class = np.stack([at(ks == k, int(gts[k]))[2] for k in k_of]) if k_of else np.zeros((0, grid))
    return {
        "thresholds": thresholds,
        "precision": pooled[0],
        "recall": pooled[1],
        "f1": pooled[2],
        "f1_per_class": per_class,
        "best": best,
        "num_gt": int(gts.sum()),
    }


def confusion_matrix(
    gt: GroundTruth, detections: Sequence[dict[str, Any]], *, score_threshold: float, iou: float = IOU
) -> np.ndarray:
    """(K + 1, K + 1) counts, label order: row = ground-truth class, column = predicted class; the
    last column counts missed ground-truth boxes (matched by no detection), the last row false
    detections (matching no ground-truth box). Class-agnostic ``COCOeval`` matching (each detection,
    best score first, takes the unmatched box of highest IoU >= ``iou``) of the detections scored
    >= ``score_threshold``; crowd / difficult boxes and the detections on them are left out."""
    kept = [d for d in detections if d["score"] >= score_threshold]
    most = max(Counter(int(d["image_id"]) for d in kept).values(), default=1)
    ev = coco_eval(gt, kept, use_cats=False, iou_thrs=[iou], max_dets=most)
    label = {c: k for k, c in enumerate(gt.cat_ids)}
    K = len(gt.cat_ids)
    cm = np.zeros((K + 1, K + 1), np.int64)
    for _, e in _entries(ev):
        for d, m, ignored in zip(e["dtIds"], np.ravel(e["dtMatches"]), np.ravel(e["dtIgnore"])):
            if not ignored:
                pred = label[ev.cocoDt.anns[d]["category_id"]]
                cm[label[ev.cocoGt.anns[int(m)]["category_id"]] if m > 0 else K, pred] += 1
        for g, m, ignored in zip(e["gtIds"], np.ravel(e["gtMatches"]), np.ravel(e["gtIgnore"])):
            if not ignored and m == 0:
                cm[label[ev.cocoGt.anns[g]["category_id"]], K] += 1
    return cm


def image_errors(ev: Any, *, score_threshold: float, iou: float = IOU) -> dict[int, dict[str, list[int]]]:
    """Per image id, at IoU ``iou`` and score >= ``score_threshold`` (class-aware matches of an
    evaluated ``COCOeval``): ``tp`` / ``false`` (detection ids matched / matching no box of their
    class) and ``found`` / ``missed`` (ground-truth ids); a wrong-class detection is one false
    detection and one missed box. Crowd / difficult boxes and the detections on them are left out."""
    t, T = _t(ev, iou), len(ev.params.iouThrs)
    out: dict[int, dict[str, list[int]]] = {
        int(i): {"tp": [], "false": [], "found": [], "missed": []} for i in ev.params.imgIds
    }
    score = {d: a["score"] for d, a in ev.cocoDt.anns.items()}
    for _, e in _entries(ev):
        errs = out[int(e["image_id"])]
        matches, ignored = np.asarray(e["dtMatches"]).reshape(T, -1)[t], np.asarray(e["dtIgnore"]).reshape(T, -1)[t]
        for d, s, m, ig in zip(e["dtIds"], e["dtScores"], matches, ignored):
            if s >= score_threshold and not ig:
                errs["tp" if m > 0 else "false"].append(int(d))
        for g, m, ig in zip(e["gtIds"], np.asarray(e["gtMatches"]).reshape(T, -1)[t], e["gtIgnore"]):
            if not ig:
                errs["found" if m > 0 and score[int(m)] >= score_threshold else "missed"].append(int(g))
    return out
