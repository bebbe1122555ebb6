"""The error analysis (training/error_analysis.py, coco_breakdown.py, eval_ground_truth.py) against
the COCO evaluator: per-class AP, PR curves, AP by size and the F1 counts agree with pycocotools'
COCOeval; the confusion matrix and the image errors count a hand-made case; the annotation file
and the ground truth built in memory give the same analysis on real COCO data."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from ttfnet_lightning.training.coco_breakdown import coco_eval, confusion_matrix, f1_curve, image_errors, per_class_ap
from ttfnet_lightning.training.error_analysis import analyze, best_score_threshold, write_error_analysis
from ttfnet_lightning.training.eval_ground_truth import (
    GroundTruth,
    coco_from_dict,
    dataset_ground_truth,
    ground_truth,
    load_detections,
    quiet,
)


def _ground_truth(data: dict, names: list[str]) -> GroundTruth:
    cats = [c["id"] for c in data["categories"]]
    ids = [i["id"] for i in data["images"]]
    return GroundTruth(coco=coco_from_dict(data), image_ids=ids, cat_ids=cats, class_names=names, source="test")


def _noisy_detections(gt: GroundTruth, seed: int = 0, fp_per_image: int = 3) -> list[dict]:
    """Detections from the ground truth: jittered boxes, some missed, some of the wrong class, and
    random false detections; scores spread so that every threshold matters."""
    rng = random.Random(seed)
    dets = []
    for ann in gt.coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        r = rng.random()
        if r < 0.15:
            continue
        cat = ann["category_id"] if r > 0.3 else rng.choice(gt.cat_ids)
        jitter = [v + rng.uniform(-0.15, 0.15) * max(w, h, 1) for v in (x, y, w, h)]
        dets.append({"image_id": ann["image_id"], "category_id": cat, "bbox": jitter, "score": rng.uniform(0.2, 1)})
    for image_id in gt.image_ids:
        for _ in range(fp_per_image):
            box = [rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(5, 80), rng.uniform(5, 80)]
            dets.append(
                {"image_id": image_id, "category_id": rng.choice(gt.cat_ids), "bbox": box, "score": rng.random()}
            )
    return dets


def _random_ground_truth(num_images: int = 12, num_classes: int = 4, seed: int = 1) -> GroundTruth:
    """Boxes of every COCO size (small, medium, large), one crowd box, category ids with gaps."""
    rng = random.Random(seed)
    cats = [9, 3, 7, 5, 11, 13][:num_classes]  # label order is not the sorted id order
    images, anns = [], []
    for i in range(num_images):
        images.append({"id": 100 + i, "height": 480, "width": 640})
        for _ in range(rng.randint(1, 6)):
            side = rng.choice([20, 60, 150])
            box = [rng.uniform(0, 400), rng.uniform(0, 300), side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": rng.choice(cats),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(len(anns) == 3),
                }
            )
    data = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cats]}
    return _ground_truth(data, [f"c{c}" for c in cats])


def test_per_class_ap_pr_curves_and_sizes_agree_with_cocoeval():
    gt = _random_ground_truth()
    dets = _noisy_detections(gt)
    ev = coco_eval(gt, dets)
    a = analyze(gt, dets)
    valid = [r for r in a.per_class if r["AP"] >= 0]
    assert len(valid) == 4
    for key, i in (("AP", 0), ("AP50", 1), ("AP75", 2)):
        assert np.mean([r[key] for r in valid]) == pytest.approx(ev.stats[i] * 100, abs=1e-6)
    # each class's AP is COCOeval's on that category alone (the K axis is not mixed up)
    for row in a.per_class:
        alone = COCOeval(gt.coco, ev.cocoDt, "bbox")
        alone.params.imgIds, alone.params.catIds = gt.image_ids, [row["category_id"]]
        with quiet():
            alone.evaluate(), alone.accumulate(), alone.summarize()
        assert row["AP"] == pytest.approx(alone.stats[0] * 100, abs=1e-6)
        assert row["AP50"] == pytest.approx(alone.stats[1] * 100, abs=1e-6)
    # the overall PR curves average to AP50 and AP; sizes are COCOeval's APs / APm / APl
    assert np.mean(a.pr["overall_at50"]) * 100 == pytest.approx(ev.stats[1] * 100, abs=1e-6)
    assert np.mean(a.pr["overall_mean"]) * 100 == pytest.approx(ev.stats[0] * 100, abs=1e-6)
    sizes = {r["size"]: r for r in a.sizes}
    for name, i in (("all", 0), ("small", 3), ("medium", 4), ("large", 5)):
        assert sizes[name]["AP"] == pytest.approx(ev.stats[i] * 100, abs=1e-6)
    assert sizes["all"]["num_gt"] == len(gt.coco.dataset["annotations"]) - 1  # the crowd box is ignored
    assert a.stats["AP"] == pytest.approx(ev.stats[0] * 100)


def test_pooled_f1_counts_agree_with_cocoeval_recall():
    gt = _random_ground_truth(seed=2)
    ev = coco_eval(gt, _noisy_detections(gt, seed=2))
    f1 = f1_curve(ev, gt)
    recall = ev.eval["recall"][0, :, 0, -1]  # (K,) at IoU 0.5, all sizes, 100 detections
    gts = np.array([r["num_gt"] for r in per_class_ap(ev, gt)])
    k_of = [list(ev.params.catIds).index(c) for c in gt.cat_ids]
    assert f1["recall"][0] == pytest.approx(float((recall[k_of] * gts).sum() / gts.sum()), abs=1e-9)
    best = f1["best"]
    i = int(np.argmin(np.abs(f1["thresholds"] - best["threshold"])))
    assert best["f1"] >= f1["f1"].max() - 1e-12  # the exact maximum is at least the grid's
    assert 0 < best["threshold"] <= 1 and f1["f1"][i] <= best["f1"] + 1e-12
    assert best["f1"] == pytest.approx(2 * best["precision"] * best["recall"] / (best["precision"] + best["recall"]))


def test_f1_counts_every_detection_at_a_tied_score():
    """A threshold keeps all detections of its score: a true and a false detection both at 0.5 give
    precision 1/2 there, not the 1 of the true one alone."""
    gt, _ = _hand_made()
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.5},
        {"image_id": 2, "category_id": 1, "bbox": [120.0, 120.0, 40.0, 40.0], "score": 0.5},
    ]
    best = f1_curve(coco_eval(gt, dets), gt)["best"]
    assert best == pytest.approx({"threshold": 0.5, "f1": 0.4, "precision": 0.5, "recall": 1 / 3})


def _hand_made() -> tuple[GroundTruth, list[dict]]:
    """Classes a, b, c. Image 1: an `a` found (and a crowd `a` with a detection on it, ignored);
    image 2: a `b` detected as `c`; image 3: a `c` found only by a weak detection, a false `a` elsewhere."""
    box = [10.0, 10.0, 40.0, 40.0]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1600.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "area": 2500.0, "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": box, "area": 1600.0, "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 3, "bbox": box, "area": 1600.0, "iscrowd": 0},
    ]
    data = {
        "images": [{"id": i, "height": 200, "width": 200} for i in (1, 2, 3)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [12.0, 11.0, 40.0, 40.0], "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "score": 0.95},  # on the crowd box
        {"image_id": 2, "category_id": 3, "bbox": box, "score": 0.8},  # wrong class
        {"image_id": 3, "category_id": 1, "bbox": [150, 150, 30, 30], "score": 0.7},  # false, background
        {"image_id": 3, "category_id": 3, "bbox": [11.0, 10.0, 40.0, 40.0], "score": 0.1},  # weak, but right
    ]
    return _ground_truth(data, ["a", "b", "c"]), dets


def test_confusion_matrix_and_image_errors_count_a_hand_made_case():
    gt, dets = _hand_made()
    cm = confusion_matrix(gt, dets, score_threshold=0.5)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1  # a found as a
    expected[1, 2] = 1  # b predicted as c
    expected[2, 3] = 1  # c missed (background column)
    expected[3, 0] = 1  # a false detection of class a (background row)
    np.testing.assert_array_equal(cm, expected)
    low = confusion_matrix(gt, dets, score_threshold=0.05)  # with the weak detection, c is found
    assert low[2, 2] == 1 and low[2, 3] == 0 and low.sum() == expected.sum()

    ev = coco_eval(gt, dets)
    errors = image_errors(ev, score_threshold=0.5)
    counts = {i: {k: len(v) for k, v in e.items()} for i, e in errors.items()}
    assert counts[1] == {"tp": 1, "false": 0, "found": 1, "missed": 0}  # the crowd box and its detection left out
    assert counts[2] == {"tp": 0, "false": 1, "found": 0, "missed": 1}  # a wrong class: one false, one missed
    assert counts[3] == {"tp": 0, "false": 1, "found": 0, "missed": 1}
    assert {k: len(v) for k, v in image_errors(ev, score_threshold=0.05)[3].items()}["missed"] == 0
    # F1 by hand (IoU 0.5, 3 boxes; the detection on the crowd box ignored): score >= 0.9: P 1, R 1/3,
    # F1 0.5; >= 0.8: P 1/2, R 1/3, F1 0.4; >= 0.7: P 1/3, R 1/3; >= 0.1: P 2/4, R 2/3, F1 4/7 (best)
    best = f1_curve(ev, gt)["best"]
    assert best == pytest.approx({"threshold": 0.1, "f1": 4 / 7, "precision": 0.5, "recall": 2 / 3})
    a = analyze(gt, dets)
    assert a.score_threshold == pytest.approx(0.1)
    assert [(w["image_id"], w["missed"], w["false"]) for w in a.worst] == [(2, 1, 1), (3, 0, 1)]  # image 1: none


def _shapes_datamodule(num_val: int = 10):
    from ttfnet_lightning.data.shapes_datamodule import ShapesDataModule

    dm = ShapesDataModule(input_size=(64, 64), num_train=0, num_val=num_val, batch_size=4, num_workers=0)
    dm.setup("validate")
    return dm


def test_write_error_analysis_files_summary_and_best_threshold(tmp_path, capsys):
    dm = _shapes_datamodule()
    gt = ground_truth(dm, num_images=8)
    assert gt.image_ids == list(range(8)) and "ShapesDataset" in gt.source
    dets = _noisy_detections(gt, seed=3, fp_per_image=1)
    dets.append({"image_id": 9, "category_id": 0, "bbox": [1, 1, 5, 5], "score": 0.5})  # an image not evaluated
    path = tmp_path / "detections_val.json"
    path.write_text(json.dumps(dets))
    summary = write_error_analysis(path, dm, tmp_path / "run" / "analysis", num_images=8)
    out = tmp_path / "run" / "analysis"
    names = {"per_class_ap", "pr_curves", "size_ap", "f1_confidence", "confusion_matrix", "worst_images"}
    assert set(summary["files"]) == {f"{n}.{e}" for n in names for e in ("csv", "png")}
    assert all((out / f).is_file() for f in summary["files"])
    assert summary["num_images"] == 8 and summary["num_detections"] == len(dets) - 1
    saved = json.loads((out / "summary.json").read_text())
    assert saved["best_score_threshold"] == summary["best_score_threshold"] > 0
    assert best_score_threshold(tmp_path / "run") == best_score_threshold(out) == saved["best_score_threshold"]
    header = (out / "confusion_matrix.csv").read_text().splitlines()[0]
    assert "IoU >= 0.5" in header and f"score >= {saved['confusion_score_threshold']:.4f}" in header
    assert "error analysis (8 images" in capsys.readouterr().out


def test_without_matplotlib_the_csv_files_are_written(tmp_path, monkeypatch, caplog):
    dm = _shapes_datamodule(num_val=4)
    dets = _noisy_detections(ground_truth(dm), seed=4, fp_per_image=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    summary = write_error_analysis(dets, dm, tmp_path)
    assert {f for f in summary["files"] if f.endswith(".png")} <= {"worst_images.png"}
    assert (tmp_path / "per_class_ap.csv").is_file() and "pip install -e .[viz]" in caplog.text


def test_no_detections_and_best_threshold_edge_cases(tmp_path):
    gt, _ = _hand_made()
    a = analyze(gt, [])
    assert a.stats["AP"] == 0 and a.f1["best"] is None and a.score_threshold == 0.3
    assert a.confusion[:3, 3].tolist() == [1, 1, 1] and a.confusion[3].sum() == 0
    assert best_score_threshold(tmp_path) is None  # no summary.json
    (tmp_path / "summary.json").write_text(json.dumps({"best_score_threshold": None}))
    assert best_score_threshold(tmp_path) is None
    (tmp_path / "summary.json").write_text("not json")
    with pytest.raises(ValueError, match="summary.json"):
        best_score_threshold(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"best_score_threshold": "high"}))
    with pytest.raises(ValueError, match="best_score_threshold"):
        best_score_threshold(tmp_path)


def test_load_detections_rejects_bad_input(tmp_path):
    gt, dets = _hand_made()
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps([dict(dets[0], category_id=7)]))
    with pytest.raises(ValueError, match=r"dets.json: category ids \[7\]"):
        load_detections(bad, gt)
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_detections(bad, gt)
    with pytest.raises(ValueError, match="cannot read the detections"):
        load_detections(tmp_path / "missing.json", gt)


def test_annotation_file_and_in_memory_ground_truth_agree_on_coco(coco_mini: Path):
    from ttfnet_lightning.data.datamodules import CocoDataModule

    dm = CocoDataModule(root=coco_mini, input_size=(128, 128), batch_size=4, num_workers=0, preflight=False)
    from_file = ground_truth(dm, num_images=40)
    assert from_file.source == dm.val_ann_file and from_file.image_ids == dm.val_dataset.image_ids[:40]
    in_memory = SimpleNamespace(
        val_dataset=dm.val_dataset, class_names=dm.class_names, label_to_cat_id=dm.label_to_cat_id, val_ann_file=None
    )
    built = ground_truth(in_memory, num_images=40)
    assert "CocoDetection" in built.source
    dets = [d for d in _noisy_detections(from_file, seed=5) if d["image_id"] in set(from_file.image_ids)]
    a, b = analyze(from_file, dets), analyze(built, dets)
    assert a.stats == pytest.approx(b.stats, abs=1e-9) and a.stats["AP"] > 0
    assert [r["AP"] for r in a.per_class] == pytest.approx([r["AP"] for r in b.per_class], abs=1e-9)
    assert [r["num_gt"] for r in a.per_class] == [r["num_gt"] for r in b.per_class]
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.f1["best"] == pytest.approx(b.f1["best"])
    assert [w["image_id"] for w in a.worst] == [w["image_id"] for w in b.worst]


def test_dataset_ground_truth_marks_voc_difficult_boxes_as_crowd(raccoon: Path):
    from ttfnet_lightning.data.voc import VocDetection

    ds = VocDetection(root=raccoon, split="val")
    data = dataset_ground_truth(ds, image_ids=ds.image_ids[:5], cat_ids=[0], class_names=["raccoon"])
    boxes = sum(len(ds.annotations(i)["boxes"]) for i in range(5))
    assert len(data["annotations"]) == boxes and {a["category_id"] for a in data["annotations"]} == {0}
    first = ds.annotations(0)
    x1, y1, x2, y2 = (float(v) for v in first["boxes"][0])
    assert data["annotations"][0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert data["annotations"][0]["iscrowd"] == int(first["difficult"][0])


def test_any_data_set_gives_the_same_ground_truth_and_images_through_its_samples():
    """A data set with only ``__len__`` / ``__getitem__`` (its samples' evaluation keys, images
    decoded) gives the ground truth and images of the shapes' own ``render`` path."""
    from ttfnet_lightning.training.eval_ground_truth import image_of

    shapes = _shapes_datamodule(num_val=3).val_dataset

    class Plain:
        def __len__(self) -> int:
            return len(shapes)

        def __getitem__(self, i: int):
            return shapes[i]

    args = {"image_ids": [0, 1, 2], "cat_ids": list(range(5)), "class_names": shapes.class_names}
    a, b = dataset_ground_truth(shapes, **args), dataset_ground_truth(Plain(), **args)
    assert len(a["annotations"]) > 3
    for x, y in zip(a["annotations"], b["annotations"]):
        assert x["bbox"] == pytest.approx(y["bbox"], abs=1e-3) and x["category_id"] == y["category_id"]
        assert x["area"] == pytest.approx(y["area"], rel=1e-5)
    assert a["images"] == b["images"] == [{"id": i, "height": 64, "width": 64} for i in range(3)]
    assert image_of(shapes, 1).equal(image_of(Plain(), 1)) and image_of(shapes, 1).shape == (3, 64, 64)
