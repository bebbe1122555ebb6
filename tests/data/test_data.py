"""Data package: shapes generator, transforms, collation, data modules, COCO / VOC readers and
their bad-input errors. Small images and few samples: the whole file runs in well under a minute."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from ttfnet_lightning.data import (
    CocoDataModule,
    CocoDetection,
    DataError,
    ShapesDataModule,
    ShapesDataset,
    VocDataModule,
    VocDetection,
    build_transforms,
    collate_detection,
)
from ttfnet_lightning.data.datamodules import train_batches_per_epoch
from ttfnet_lightning.data.shapes import SHAPE_KINDS, _draw_mask
from ttfnet_lightning.data.transforms import IoUCropIfBoxes

# --------------------------------------------------------------------------------------- shapes


def test_shapes_deterministic_per_index():
    a = ShapesDataset(num_images=20, image_size=(64, 96), seed=3)
    b = ShapesDataset(num_images=20, image_size=(64, 96), seed=3)
    for i in (0, 7, 19):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    # order of access does not matter (as in shuffled / multi-worker loading)
    fresh = ShapesDataset(num_images=20, image_size=(64, 96), seed=3)
    assert torch.equal(a[5][0], a[5][0]) and torch.equal(b[12][0], fresh[12][0])
    c = ShapesDataset(num_images=20, image_size=(64, 96), seed=4)
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[1][0])


def test_shapes_cache_returns_the_rendered_samples_and_keeps_to_its_budget(monkeypatch):
    plain = ShapesDataset(num_images=6, image_size=(64, 64), seed=2)
    cached = ShapesDataset(num_images=6, image_size=(64, 64), seed=2, cache_mb=2 * 64 * 64 * 3 / 2**20 + 0.001)
    renders = []
    original = ShapesDataset._render
    monkeypatch.setattr(
        ShapesDataset, "_render", lambda self, i: (renders.append(i) if self is cached else None) or original(self, i)
    )
    for _ in range(2):  # two epochs
        for i in range(6):
            (ia, ta), (ib, tb) = plain[i], cached[i]
            assert (
                torch.equal(ia, ib)
                and torch.equal(ta["boxes"], tb["boxes"])
                and torch.equal(ta["labels"], tb["labels"])
            )
            ib.zero_()  # a transform writing into its sample never changes the cache
            tb["boxes"].zero_()
            tb["gt_labels"].fill_(-1)
    # the budget holds two images: samples 0 and 1 rendered once, the other four every epoch
    assert sorted(renders) == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    with pytest.raises(ValueError, match="cache_mb"):
        ShapesDataset(num_images=1, cache_mb=-1)


def test_shapes_samples_are_valid():
    ds = ShapesDataset(num_images=40, image_size=(96, 128), seed=0, min_objects=2, max_objects=6)
    counts, seen = [], set()
    for i in range(len(ds)):
        img, t = ds[i]
        assert isinstance(img, tv_tensors.Image) and img.dtype == torch.uint8 and img.shape == (3, 96, 128)
        b, lab = t["boxes"], t["labels"]
        assert (
            isinstance(b, tv_tensors.BoundingBoxes) and b.dtype == torch.float32 and tuple(b.canvas_size) == (96, 128)
        )
        assert lab.dtype == torch.int64 and len(lab) == len(b)
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 96).all()
        assert ((b[:, 2] - b[:, 0]) >= 4).all() and ((b[:, 3] - b[:, 1]) >= 4).all()
        assert ((lab >= 0) & (lab < ds.num_classes)).all()
        assert t["image_id"] == i and t["orig_size"] == (96, 128)
        assert torch.equal(t["gt_boxes"], b.as_subclass(torch.Tensor)) and torch.equal(t["gt_labels"], lab)
        assert t["gt_iscrowd"].tolist() == [0] * len(lab)
        counts.append(len(lab))
        seen.update(lab.tolist())
    assert min(counts) >= 2 and max(counts) <= 6 and len(set(counts)) >= 3
    assert seen == set(range(ds.num_classes))  # every class appears
    assert ds.class_names == ["circle", "square", "triangle", "star", "cross"]


def test_shapes_fill_their_boxes_and_sizes_vary():
    """Every shape kind touches all four sides of its w x h box (so the tight box is the
    requested size), and object sizes range from small to most of the image."""
    rng = np.random.default_rng(0)
    for kind in SHAPE_KINDS:
        for w, h in [(8, 8), (8, 16), (23, 11), (60, 90)]:
            m = _draw_mask(kind, w, h, rng)
            assert m.shape == (h, w)
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), (kind, w, h)
            assert 0.2 < m.mean() < 1.0 or kind == "square"
    ds = ShapesDataset(num_images=60, image_size=(128, 128), seed=1)
    sides = torch.cat([(ds[i][1]["boxes"][:, 2:] - ds[i][1]["boxes"][:, :2]).flatten() for i in range(60)])
    assert sides.min() < 16 and sides.max() > 60


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="classes"):
        ShapesDataset(num_images=2, classes=("circle", "blob"))
    with pytest.raises(ValueError, match="min_objects"):
        ShapesDataset(num_images=2, min_objects=5, max_objects=2)
    with pytest.raises(IndexError):
        ShapesDataset(num_images=2)[2]


def test_shapes_sample_does_not_depend_on_render_order():
    """Sample i is the same whatever was rendered before it (workers render in any order).
    (Its speed, ~1-2 ms per 128 px sample, is not asserted here: timing does not belong in tests.)"""
    ds = ShapesDataset(num_images=6, image_size=(128, 128))
    forward = [ds.render(i) for i in range(6)]
    backward = [ds.render(i) for i in reversed(range(6))][::-1]
    for (im_a, box_a, lab_a), (im_b, box_b, lab_b) in zip(forward, backward):
        assert np.array_equal(im_a, im_b) and np.array_equal(box_a, box_b) and np.array_equal(lab_a, lab_b)
    assert not np.array_equal(forward[0][0], forward[1][0])


# ----------------------------------------------------------------------------------- transforms


def _sample(h=100, w=200, boxes=((20.0, 10.0, 60.0, 50.0),), labels=(1,)):
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[:, 10:50, 20:60] = 255  # the hand box is white
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(b.clone(), format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": 7,
        "orig_size": (h, w),
        "gt_boxes": b.clone(),
        "gt_labels": torch.tensor(labels, dtype=torch.int64),
        "gt_iscrowd": torch.zeros(len(labels), dtype=torch.int64),
    }
    return tv_tensors.Image(img), target


def test_transforms_resize_and_flip_follow_box():
    img, t = _sample()
    val = build_transforms(input_size=(64, 64), train=False)
    vi, vt = val(img, t)
    assert vi.shape == (3, 64, 64) and isinstance(vt["boxes"], tv_tensors.BoundingBoxes)
    torch.testing.assert_close(vt["boxes"].as_subclass(torch.Tensor), torch.tensor([[6.4, 6.4, 19.2, 32.0]]))
    # gt_* are plain tensors: untouched (not resized as an "image"); metadata passes through
    assert vt["gt_boxes"] is t["gt_boxes"] and vt["gt_labels"] is t["gt_labels"] and vt["gt_iscrowd"] is t["gt_iscrowd"]
    assert vt["image_id"] == 7 and vt["orig_size"] == (100, 200)

    flip = build_transforms(input_size=(64, 64), train=True, hflip=1.0)
    fi, ft = flip(img, t)
    torch.testing.assert_close(ft["boxes"].as_subclass(torch.Tensor), torch.tensor([[44.8, 6.4, 57.6, 32.0]]))
    assert fi[0, 20, 50] == 255 and fi[0, 20, 12] == 0  # pixels moved with the box
    torch.testing.assert_close(ft["gt_boxes"], torch.tensor([[20.0, 10.0, 60.0, 50.0]]))

    noflip = build_transforms(input_size=(64, 64), train=True, hflip=0.0)
    torch.testing.assert_close(
        noflip(img, t)[1]["boxes"].as_subclass(torch.Tensor), torch.tensor([[6.4, 6.4, 19.2, 32.0]])
    )


def test_transforms_sanitize_drops_tiny_boxes_with_labels():
    img, t = _sample(boxes=((20.0, 10.0, 60.0, 50.0), (100.0, 10.0, 102.0, 90.0)), labels=(1, 3))
    tr = build_transforms(input_size=(64, 64), train=True, hflip=0.0)
    _, out = tr(img, t)  # second box: 2 px wide -> 0.64 px after resizing -> dropped
    assert out["labels"].tolist() == [1] and len(out["boxes"]) == 1
    assert len(out["gt_boxes"]) == 2  # evaluation ground truth untouched


def test_augment_pipeline_keeps_valid_boxes():
    ds = ShapesDataset(num_images=12, image_size=(96, 96), seed=5)
    tr = build_transforms(input_size=(64, 64), train=True, augment=True)
    torch.manual_seed(0)
    n_changed = 0
    for i in range(12):
        img, t = ds[i]
        gt = t["gt_boxes"].clone()
        for _ in range(3):
            oi, ot = tr(img, dict(t))
            b = ot["boxes"]
            assert oi.shape == (3, 64, 64) and oi.dtype == torch.uint8
            assert len(b) == len(ot["labels"]) and b.dtype == torch.float32
            assert (b >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 3] <= 64).all()
            assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
            assert torch.equal(ot["gt_boxes"], gt) and ot["orig_size"] == (96, 96)
            n_changed += len(b) != len(gt)
    assert n_changed > 0  # crops do remove boxes sometimes


def test_iou_crop_leaves_empty_samples_alone():
    img, t = _sample(boxes=(), labels=())
    out_img, out_t = IoUCropIfBoxes()(img, t)
    assert out_img is img and len(out_t["boxes"]) == 0
    tr = build_transforms(input_size=(64, 64), train=True, augment=True)
    oi, ot = tr(img, t)
    assert oi.shape == (3, 64, 64) and len(ot["boxes"]) == 0


def test_input_size_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        ShapesDataModule(input_size=(100, 128), num_workers=0)


# -------------------------------------------------------------------------------------- collate


def test_collate_pads_and_keeps_meta():
    specs = [((), ()), (((1, 2, 3, 4), (5, 6, 7, 8)), (0, 2)), (((0, 0, 9, 9),), (1,))]
    samples = [_sample(h=32, w=32, boxes=b, labels=lab) for b, lab in specs]
    batch = collate_detection(samples)
    assert batch["images"].shape == (3, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert type(batch["images"]) is torch.Tensor and type(batch["boxes"]) is torch.Tensor
    assert batch["boxes"].shape == (3, 2, 4) and batch["boxes"].dtype == torch.float32
    assert batch["labels"].tolist() == [[-1, -1], [0, 2], [1, -1]]
    assert batch["boxes"][0].abs().sum() == 0 and batch["boxes"][1, 1].tolist() == [5, 6, 7, 8]
    m = batch["meta"][1]
    assert m["image_id"] == 7 and m["orig_size"] == (32, 32) and m["input_size"] == (32, 32)
    assert m["gt_boxes"].shape == (2, 4) and m["gt_labels"].tolist() == [0, 2] and m["gt_iscrowd"].dtype == torch.int64
    assert batch["meta"][0]["gt_boxes"].shape == (0, 4)
    empty = collate_detection([samples[0], samples[0]])
    assert empty["boxes"].shape == (2, 1, 4) and empty["labels"].tolist() == [[-1], [-1]]
    with pytest.raises(ValueError, match="same size"):
        collate_detection([samples[0], _sample(h=64, w=32)])


# ---------------------------------------------------------------------------------- datamodules


def _check_batch(batch, *, b, size, num_classes):
    assert batch["images"].shape == (b, 3, *size) and batch["images"].dtype == torch.uint8
    assert batch["boxes"].shape[:2] == batch["labels"].shape and batch["boxes"].shape[0] == b
    valid = batch["labels"] >= 0
    assert (batch["labels"][valid] < num_classes).all() and (batch["labels"][~valid] == -1).all()
    bx = batch["boxes"][valid]
    assert (bx[:, 2] > bx[:, 0]).all() and (bx[:, 3] > bx[:, 1]).all()
    assert (bx[:, 2] <= size[1]).all() and (bx[:, 3] <= size[0]).all()
    assert len(batch["meta"]) == b and all(m["input_size"] == tuple(size) for m in batch["meta"])


def test_shapes_datamodule_batches():
    dm = ShapesDataModule(input_size=(64, 64), num_train=12, num_val=5, batch_size=4, num_workers=0, augment=True)
    # available before setup (the LightningModule is built from them)
    assert dm.num_classes == 5 and dm.class_names[0] == "circle" and dm.batch_size == 4 and dm.input_size == (64, 64)
    assert dm.label_to_cat_id is None and dm.val_ann_file is None
    dm.setup("fit")
    train = dm.train_dataloader()
    assert train.drop_last and len(train) == 3 == train_batches_per_epoch(12, 4)
    _check_batch(next(iter(train)), b=4, size=(64, 64), num_classes=5)
    val = dm.val_dataloader()
    assert not val.drop_last and len(val) == 2
    first = next(iter(val))
    assert [m["image_id"] for m in first["meta"]] == [0, 1, 2, 3]  # not shuffled
    assert not torch.equal(dm.train_dataset[0][0][:, :8], dm.val_dataset[0][0][:, :8])  # different streams
    assert len(dm.test_dataloader()) == len(dm.predict_dataloader()) == 2


def test_shapes_datamodule_small_set_keeps_last_batch():
    dm = ShapesDataModule(input_size=(64, 64), num_train=3, num_val=3, batch_size=4, num_workers=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert not loader.drop_last and len(loader) == 1 == train_batches_per_epoch(3, 4)


def test_shapes_datamodule_two_workers():
    dm = ShapesDataModule(input_size=(64, 64), num_train=8, num_val=4, batch_size=4, num_workers=2)
    dm.setup("fit")
    loader = dm.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    batches = list(loader)
    assert [m["image_id"] for b in batches for m in b["meta"]] == list(range(4 * len(batches)))
    ref = collate_detection([dm.val_dataset[i] for i in range(4)])
    assert torch.equal(batches[0]["images"], ref["images"]) and torch.equal(batches[0]["boxes"], ref["boxes"])


# -------------------------------------------------------------------------------- COCO (real)


def test_coco_mini_labels_and_crowd(coco_mini: Path):
    ds = CocoDetection(root=coco_mini, split="val2017")
    assert ds.num_classes == 80 and len(ds.class_names) == 80 and ds.class_names[0] == "person"
    assert ds.label_to_cat_id == sorted(ds.label_to_cat_id) and ds.label_to_cat_id[-1] == 90
    assert [ds.cat_id_to_label[c] for c in ds.label_to_cat_id] == list(range(80))
    assert ds.num_degenerate == 0 and len(ds) == 80
    raw = json.loads(ds.ann_file.read_text())
    by_img: dict[int, list] = {}
    for a in raw["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    idx = next(i for i, iid in enumerate(ds.image_ids) if any(a["iscrowd"] for a in by_img[iid]))
    img, t = ds[idx]
    anns = by_img[ds.image_ids[idx]]
    assert img.shape[-2:] == t["orig_size"] and t["image_id"] == ds.image_ids[idx]
    crowd = t["gt_iscrowd"].bool()
    assert crowd.sum() == sum(a["iscrowd"] for a in anns) and len(t["gt_boxes"]) == len(anns)
    assert len(t["boxes"]) == len(anns) - int(crowd.sum())
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), t["gt_boxes"][~crowd])
    # label -> category id round trip and xywh -> xyxy, annotation by annotation
    for a, box, lab in zip(anns, t["gt_boxes"], t["gt_labels"]):
        assert ds.label_to_cat_id[int(lab)] == a["category_id"]
        x, y, w, h = a["bbox"]
        h0, w0 = t["orig_size"]
        torch.testing.assert_close(box, torch.tensor([x, y, min(x + w, w0), min(y + h, h0)], dtype=torch.float32))


def test_coco_mini_keep_empty_and_datamodule(coco_mini: Path):
    assert len(CocoDetection(root=coco_mini, split="train2017", keep_empty=True)) == 117
    assert len(CocoDetection(root=coco_mini, split="train2017", keep_empty=False)) == 115  # 2 have only crowd/no boxes
    dm = CocoDataModule(root=coco_mini, input_size=(128, 128), batch_size=4, num_workers=0)
    assert dm.num_classes == 80 and len(dm.label_to_cat_id) == 80 and dm.val_ann_file.endswith("instances_val2017.json")
    dm.setup("fit")
    _check_batch(next(iter(dm.train_dataloader())), b=4, size=(128, 128), num_classes=80)
    batch = next(iter(dm.val_dataloader()))
    _check_batch(batch, b=4, size=(128, 128), num_classes=80)
    assert [m["image_id"] for m in batch["meta"]] == dm.val_dataset.image_ids[:4]


# --------------------------------------------------------------------------------- VOC (real)


def test_voc_raccoon(raccoon: Path):
    ds = VocDetection(root=raccoon, split="train")
    assert ds.class_names == ["raccoon"] and ds.num_classes == 1 and len(ds) == 160
    name = ds.image_names[0]
    bb = ET.parse(raccoon / "Annotations" / f"{name}.xml").getroot().find("object/bndbox")
    x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
    img, t = ds[0]
    assert t["image_id"] == 0 and t["orig_size"] == tuple(img.shape[-2:])
    torch.testing.assert_close(t["gt_boxes"][0], torch.tensor([x1 - 1, y1 - 1, x2, y2]))  # 1-based inclusive -> 0-based
    dm = VocDataModule(root=raccoon, input_size=(128, 128), batch_size=4, num_workers=0)
    assert dm.num_classes == 1 and dm.label_to_cat_id is None and dm.val_ann_file is None
    dm.setup("fit")
    assert len(dm.val_dataset) == 40
    _check_batch(next(iter(dm.train_dataloader())), b=4, size=(128, 128), num_classes=1)
    _check_batch(next(iter(dm.val_dataloader())), b=4, size=(128, 128), num_classes=1)


# ------------------------------------------------------------------- bad inputs (COCO, tmp files)


def _jpeg(path: Path, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 200)).save(path)


def _coco(tmp_path: Path, *, images=3, anns=None, cats=None, corrupt=(), raw=None) -> Path:
    """Tiny COCO set in tmp_path: 40x30 images a0.jpg, a1.jpg, ...; returns the root."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(exist_ok=True)
    for i in range(images):
        p = root / "val" / f"a{i}.jpg"
        if i in corrupt:
            p.write_bytes(b"this is not a jpeg")
        else:
            _jpeg(p)
    data = {
        "images": [{"id": 100 + i, "file_name": f"a{i}.jpg", "width": 40, "height": 30} for i in range(images)],
        "annotations": anns
        if anns is not None
        else [
            {"id": 1 + i, "image_id": 100 + i, "category_id": 7, "bbox": [2, 3, 10, 8], "iscrowd": 0}
            for i in range(images)
        ],
        "categories": cats if cats is not None else [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    (root / "annotations" / "instances_val.json").write_text(raw if raw is not None else json.dumps(data))
    return root


def test_coco_tiny_set_and_degenerate_boxes(tmp_path: Path, caplog):
    anns = [
        {"id": 1, "image_id": 100, "category_id": 7, "bbox": [2, 3, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 100, "category_id": 3, "bbox": [35, 20, 20, 20], "iscrowd": 0},  # clipped
        {"id": 3, "image_id": 101, "category_id": 3, "bbox": [50, 5, 4, 4], "iscrowd": 0},  # outside
        {"id": 4, "image_id": 101, "category_id": 7, "bbox": [5, 5, 0, 4], "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 102, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # crowd only
    ]
    root = _coco(tmp_path, anns=anns)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(root=root, split="val")
    assert ds.num_degenerate == 2 and "instances_val.json" in caplog.text and "degenerate" in caplog.text
    assert ds.cat_ids == [3, 7] and ds.class_names == ["dog", "cat"]
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 0]
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), torch.tensor([[2.0, 3, 12, 11], [35, 20, 40, 30]]))
    assert len(ds[1][1]["boxes"]) == 0 and len(ds[1][1]["gt_boxes"]) == 0
    assert len(ds[2][1]["boxes"]) == 0 and ds[2][1]["gt_iscrowd"].tolist() == [1]
    assert len(CocoDetection(root=root, split="val", keep_empty=False)) == 1


def _ann(aid, *, img=100, cat=7, bbox=(1, 2, 3, 4)):
    return {"id": aid, "image_id": img, "category_id": cat, "bbox": list(bbox)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"raw": "{not json"}, "not valid JSON"),
        ({"raw": json.dumps({"images": [], "annotations": []})}, r"missing the key\(s\) \['categories'\]"),
        ({"images": 0}, "lists no images"),
        ({"anns": [_ann(55, bbox=[1, 2, 3])]}, "annotation id 55 has bbox"),
        ({"anns": [_ann(56, bbox=[1, 2, "x", 4])]}, "annotation id 56 has bbox"),
        ({"anns": [_ann(57, cat=99)]}, "annotation id 57 has category_id 99"),
        ({"anns": [_ann(58, img=999)]}, "annotation id 58 refers to image_id 999"),
    ],
)
def test_coco_bad_annotation_files(tmp_path: Path, kwargs, match):
    root = _coco(tmp_path, **kwargs)
    with pytest.raises(DataError, match=match) as err:
        CocoDetection(root=root, split="val")
    assert "instances_val.json" in str(err.value)


def test_coco_annotation_problems_are_listed_together(tmp_path: Path):
    """Every broken entry is named in one error (before: the first one only, one fix per run)."""
    anns = [_ann(55, bbox=[1, 2, 3]), _ann(56), _ann(57, cat=99), _ann(58, img=999), _ann(59, bbox=[0, 0, "x", 1])]
    root = _coco(tmp_path, anns=anns)
    with pytest.raises(DataError, match=r"4 problem\(s\)") as err:
        CocoDetection(root=root, split="val")
    msg = str(err.value)
    for text in (
        "annotation id 55 has bbox",
        "annotation id 57 has category_id 99",
        "annotation id 58 refers to image_id 999",
        "annotation id 59 has bbox",
    ):
        assert text in msg, msg
    assert "annotation id 56" not in msg


def test_coco_missing_annotation_file(tmp_path: Path):
    with pytest.raises(DataError, match="not found.*instances_val2017.json"):
        CocoDetection(root=tmp_path, split="val2017")
    assert issubclass(DataError, ValueError)


def test_coco_bad_images_raise_or_skip(tmp_path: Path, caplog):
    root = _coco(tmp_path, images=4, corrupt=(1,))
    (root / "val" / "a2.jpg").unlink()  # missing
    ds = CocoDetection(root=root, split="val")
    with pytest.raises(DataError, match="a1.jpg"):
        ds[1]
    with pytest.raises(DataError, match="not found.*a2.jpg"):
        ds[2]

    # training: a bad image is replaced by the next readable one
    skip = CocoDetection(root=root, split="val", skip_bad_images=True, substitute_bad_images=True, max_bad_images=5)
    with caplog.at_level(logging.WARNING):
        _, t = skip[1]  # a1 corrupt, a2 missing -> a3
    assert t["image_id"] == 103 and skip.num_skipped == 2
    assert "a1.jpg" in caplog.text and "a2.jpg" in caplog.text
    skip[2]
    assert skip.num_skipped == 2  # known bad images are not counted twice

    strict = CocoDetection(root=root, split="val", skip_bad_images=True, substitute_bad_images=True, max_bad_images=1)
    with pytest.raises(DataError, match="max_bad_images=1"):
        strict[1]


# -------------------------------------------------------------------- bad inputs (VOC, tmp files)


def _voc(tmp_path: Path, objects: dict[str, str]) -> Path:
    """Tiny VOC set: for each name -> <object> XML, a 40x30 image, its annotation and a split line."""
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, body in objects.items():
        size = "<size><width>40</width><height>30</height></size>"
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename>{size}{body}</annotation>"
        )
        _jpeg(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(objects) + "\n")
    return root


def _obj(name, box, difficult=0):
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def test_voc_tiny_set_difficult_and_classes(tmp_path: Path):
    objects = {
        "a": _obj("dog", (1, 1, 10, 20)) + _obj("cat", (5, 6, 40, 30), difficult=1),
        "b": _obj("cat", (3, 3, 8, 8)),
    }
    root = _voc(tmp_path, objects)
    ds = VocDetection(root=root, split="train", min_boxes_per_class=1)
    assert ds.class_names == ["cat", "dog"] and ds.image_names == ["a", "b"]
    img, t = ds[0]
    assert img.shape == (3, 30, 40)
    torch.testing.assert_close(t["gt_boxes"], torch.tensor([[0.0, 0, 10, 20], [4, 5, 40, 30]]))
    assert t["gt_labels"].tolist() == [1, 0] and t["gt_iscrowd"].tolist() == [0, 1]
    assert t["labels"].tolist() == [1] and len(t["boxes"]) == 1  # difficult not a training target
    kd = VocDetection(root=root, split="train", keep_difficult=True, min_boxes_per_class=0)
    assert kd[0][1]["labels"].tolist() == [1, 0] and kd[0][1]["gt_iscrowd"].tolist() == [0, 0]
    assert VocDetection(root=root, split="train", class_names=["dog", "cat", "bird"]).num_classes == 3


def test_voc_bad_inputs(tmp_path: Path):
    root = _voc(tmp_path, {"a": _obj("dog", (1, 1, 10, 20)), "b": _obj("zebra", (1, 1, 5, 5))})
    with pytest.raises(DataError, match=r"b\.xml: unknown class 'zebra'"):
        VocDetection(root=root, split="train", class_names=["dog"])
    with pytest.raises(DataError, match="split file not found.*val.txt"):
        VocDetection(root=root, split="val")
    (root / "Annotations" / "b.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataError, match=r"malformed VOC XML .*b\.xml"):
        VocDetection(root=root, split="train", min_boxes_per_class=0)
    (root / "Annotations" / "b.xml").write_text(f"<annotation>{_obj('dog', (1, 'x', 5, 5))}</annotation>")
    with pytest.raises(DataError, match=r"b\.xml.*'x', not a number"):
        VocDetection(root=root, split="train", min_boxes_per_class=0)
    (root / "Annotations" / "b.xml").unlink()
    with pytest.raises(DataError, match=r"annotation file not found.*b\.xml"):
        VocDetection(root=root, split="train", min_boxes_per_class=0)
    # a missing image is a bad image (the one policy): raised when read, or found by the pre-flight check
    (root / "Annotations" / "b.xml").write_text(f"<annotation>{_obj('dog', (1, 1, 5, 5))}</annotation>")
    (root / "JPEGImages" / "b.jpg").unlink()
    ds = VocDetection(root=root, split="train", min_boxes_per_class=0)
    with pytest.raises(DataError, match=r"image file not found.*b\.jpg"):
        ds[1]
