"""Messy real-world data (issue 8): truncated / undecodable images under one policy for COCO and
VOC, bad validation images excluded (never substituted), the pre-flight check (setup and command,
cached), empty training sets, rare discovered VOC classes, COCO annotation areas. Tiny files in
tmp_path only; the whole file runs in seconds."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ttfnet_lightning.data import (
    BadImage,
    CocoDataModule,
    CocoDetection,
    DataError,
    VocDataModule,
    VocDetection,
    collate_detection,
)
from ttfnet_lightning.data import check as data_check
from ttfnet_lightning.training.lit_module import TTFNetModule


def _noise_jpeg(size=(64, 48), seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_image(path: Path, kind: str, size=(64, 48)) -> None:
    """kind: ok | truncated (a JPEG 20 bytes short: PIL refuses it by default) | corrupt | missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _noise_jpeg(size, seed=len(path.name))
    if kind == "truncated":
        path.write_bytes(data[:-20])
    elif kind == "corrupt":
        path.write_bytes(b"\xff\xd8 not really a jpeg")
    elif kind == "ok":
        path.write_bytes(data)


def _coco_set(root: Path, split: str, kinds: list[str], *, anns=None) -> Path:
    """COCO split ``split`` under root: 64x48 images a0.jpg.. of the given kinds, one box each."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(kinds):
        _write_image(root / split / f"a{i}.jpg", kind)
    (root / split).mkdir(parents=True, exist_ok=True)
    data = {
        "images": [{"id": 100 + i, "file_name": f"a{i}.jpg", "width": 64, "height": 48} for i in range(len(kinds))],
        "annotations": anns
        if anns is not None
        else [
            {"id": 1 + i, "image_id": 100 + i, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 0, "area": 150.0}
            for i in range(len(kinds))
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _voc_set(root: Path, splits: dict[str, dict[str, tuple[str, list[str]]]]) -> Path:
    """VOC set: splits -> {name: (image kind, [class of each object])}, 64x48 images."""
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        for name, (kind, classes) in images.items():
            objs = "".join(
                f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{3 + k}</xmin><ymin>4</ymin>"
                f"<xmax>{30 + k}</xmax><ymax>40</ymax></bndbox></object>"
                for k, c in enumerate(classes)
            )
            size = "<size><width>64</width><height>48</height></size>"
            (root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename>{size}{objs}</annotation>"
            )
            _write_image(root / "JPEGImages" / f"{name}.jpg", kind)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return root


def _dm_kwargs(tmp_path: Path, **kw):
    return {"input_size": (64, 64), "batch_size": 4, "num_workers": 0, "check_cache_dir": tmp_path / "cache"} | kw


# ----------------------------------------------------------------- one truncated-image policy


def test_truncated_jpeg_loads_with_counted_warning_in_coco_and_voc(tmp_path: Path, caplog):
    coco = _coco_set(tmp_path / "coco", "val", ["ok", "truncated"])
    with pytest.raises(OSError):  # the file is really truncated: PIL refuses it by default
        Image.open(coco / "val" / "a1.jpg").convert("RGB")
    voc = _voc_set(tmp_path / "voc", {"train": {"x": ("truncated", ["dog"])}})
    datasets = [CocoDetection(root=coco, split="val"), VocDetection(root=voc, split="train", min_boxes_per_class=0)]
    for ds in datasets:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            img, _ = ds[len(ds) - 1]
            ds[len(ds) - 1]  # warned and counted once per file
        assert img.shape == (3, 48, 64)
        assert ds.num_truncated == 1
        warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
        assert len(warned) == 1 and str(ds.image_path(len(ds) - 1)) in warned[0]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the PIL flag is not left set


def test_voc_has_the_same_bad_image_options_as_coco(tmp_path: Path, caplog):
    voc = _voc_set(tmp_path / "voc", {"train": {"a": ("ok", ["dog"]), "b": ("corrupt", ["dog"]), "c": ("ok", ["dog"])}})
    strict = VocDetection(root=voc, split="train", min_boxes_per_class=0)
    with pytest.raises(DataError, match=r"cannot read image .*b\.jpg"):
        strict[1]
    train = VocDetection(
        root=voc, split="train", min_boxes_per_class=0, skip_bad_images=True, substitute_bad_images=True
    )
    with caplog.at_level(logging.WARNING):
        _, t = train[1]
    assert t["image_id"] == 2 and train.num_skipped == 1 and "b.jpg" in caplog.text
    val = VocDetection(root=voc, split="train", min_boxes_per_class=0, skip_bad_images=True)
    assert isinstance(val[1], BadImage) and val[1].path.endswith("b.jpg") and val.num_skipped == 1


# ------------------------------------------------ bad validation images: excluded, never substituted


def test_bad_validation_images_are_excluded_not_scored_twice(tmp_path: Path, caplog):
    root = _coco_set(tmp_path / "coco", "val", ["ok", "corrupt", "ok", "missing", "ok"])
    # without the pre-flight check the loader meets them: the collate drops them
    dm = CocoDataModule(root=root, train_split="val", val_split="val", **_dm_kwargs(tmp_path, preflight=False))
    dm.setup("validate")
    with caplog.at_level(logging.WARNING):
        batches = list(dm.val_dataloader())
    ids = [m["image_id"] for b in batches for m in b["meta"]]
    assert ids == [100, 102, 104]  # each readable image once, the bad ones in no batch
    excluded = [e.path for b in batches for e in b["excluded"]]
    assert [Path(p).name for p in excluded] == ["a1.jpg", "a3.jpg"]
    assert "a1.jpg" in caplog.text and "a3.jpg" in caplog.text and dm.val_dataset.num_skipped == 2
    gts = TTFNetModule.ground_truth(batches[0])
    assert len(gts) == batches[0]["images"].shape[0] == 2

    # with it (the default) they are removed from the index before the loader is built, and named
    dm = CocoDataModule(root=root, train_split="val", val_split="val", **_dm_kwargs(tmp_path))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dm.setup("validate")
    assert dm.val_dataset.image_ids == [100, 102, 104]
    assert "excluded 2 bad image(s)" in caplog.text and "a1.jpg" in caplog.text and "a3.jpg" in caplog.text
    assert [m["image_id"] for b in dm.val_dataloader() for m in b["meta"]] == [100, 102, 104]


def test_collate_refuses_a_batch_of_only_bad_images():
    with pytest.raises(DataError, match="x.jpg"):
        collate_detection([BadImage(image_id=1, path="x.jpg", reason="gone")])


# ------------------------------------------------------------------------- pre-flight check


def _messy_voc(tmp_path: Path) -> Path:
    return _voc_set(
        tmp_path / "voc",
        {
            "train": {f"t{i}": ("ok", ["dog"]) for i in range(5)}
            | {"t5": ("truncated", ["dog"]), "t6": ("corrupt", ["dog"])},
            "val": {"v0": ("ok", ["dog"]), "v1": ("missing", ["dog"])},
        },
    )


def test_preflight_lists_every_problem_before_training(tmp_path: Path):
    root = _messy_voc(tmp_path)
    strict = VocDataModule(root=root, **_dm_kwargs(tmp_path, skip_bad_images=False))
    with pytest.raises(DataError) as err:
        strict.setup("fit")
    msg = str(err.value)
    assert "FATAL" in msg and "t6.jpg" in msg and "v1.jpg" in msg  # both splits' problems, in one list
    assert "warning: truncated" in msg and "t5.jpg" in msg  # truncated: a warning, loaded

    dm = VocDataModule(root=root, **_dm_kwargs(tmp_path))  # skip_bad_images: true (default)
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and dm.train_dataset.image_names[-1] == "t5"
    assert dm.val_dataset.image_names == ["v0"]
    assert not list(root.rglob("*.json")), "the check wrote into the data root"
    report = dm.check_data()  # a rerun reads no image again (the missing one has nothing to cache)
    assert report.num_images == 7 and report.num_cached == 7


def test_preflight_cache_notices_a_changed_file(tmp_path: Path):
    root = _voc_set(
        tmp_path / "voc", {"train": {f"t{i}": ("ok", ["dog"]) for i in range(5)}, "val": {"v": ("ok", ["dog"])}}
    )
    dm = VocDataModule(root=root, **_dm_kwargs(tmp_path))
    assert dm.check_data().num_cached == 0 and not dm.check_data().problems
    (root / "JPEGImages" / "t2.jpg").write_bytes(_noise_jpeg(seed=7)[:-20])
    report = dm.check_data()
    assert report.num_cached == 4 and len(report.problems) == 1 and "t2.jpg" in report.problems[0]


def test_check_command(tmp_path: Path, capsys):
    root = _messy_voc(tmp_path)
    args = ["data=voc", f"data.datamodule.root={root}", f"data.datamodule.check_cache_dir={tmp_path / 'cache'}"]
    assert data_check.main([*args, "data.datamodule.skip_bad_images=false"]) == 1
    out = capsys.readouterr().out
    assert "t5.jpg" in out and "t6.jpg" in out and "v1.jpg" in out and "3 problem(s), 2 fatal" in out
    assert data_check.main(args) == 0  # skipped bad images are listed, not fatal
    (root / "Annotations" / "t0.xml").write_text("<annotation>")
    (root / "Annotations" / "t1.xml").write_text("<oops/>")
    assert data_check.main(args) == 2
    out = capsys.readouterr().out
    assert "t0.xml" in out and "t1.xml" in out  # every bad XML file, in one list
    assert data_check.main(["data.datamodule.num_train=4"]) == 0  # shapes: nothing to check


# ---------------------------------------------------------------------- empty training sets


def test_training_set_with_only_crowd_boxes_is_a_data_error(tmp_path: Path, caplog):
    anns = [
        {"id": 1, "image_id": 100, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 1},
        {"id": 2, "image_id": 101, "category_id": 1, "bbox": [70, 60, 5, 5], "iscrowd": 0},
    ]  # outside: degenerate
    root = _coco_set(tmp_path / "coco", "train", ["ok", "ok", "ok"], anns=anns)
    _coco_set(root, "val", ["ok"])
    dm = CocoDataModule(root=root, train_split="train", val_split="val", **_dm_kwargs(tmp_path))
    with pytest.raises(
        DataError,
        match=r"instances_train\.json.*1 with no annotations, 1 with only crowd boxes, "
        r"1 with only degenerate boxes",
    ):
        dm.setup("fit")
    anns.append({"id": 3, "image_id": 102, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 0})
    (root / "annotations" / "instances_train.json").write_text(
        json.dumps(json.loads((root / "annotations" / "instances_train.json").read_text()) | {"annotations": anns})
    )
    dm = CocoDataModule(root=root, train_split="train", val_split="val", **_dm_kwargs(tmp_path))
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert len(dm.train_dataset) == 1 and "1 with only crowd boxes" in caplog.text


def test_voc_training_set_without_usable_objects_is_a_data_error(tmp_path: Path):
    root = _voc_set(tmp_path / "voc", {"train": {"a": ("ok", ["dog"])}})
    (root / "Annotations" / "a.xml").write_text(
        (root / "Annotations" / "a.xml").read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>")
    )
    with pytest.raises(DataError, match=r"VOC split 'train'.*no image with a usable.*all 1 images dropped"):
        VocDataModule(root=root, class_names=["dog"], **_dm_kwargs(tmp_path))


# --------------------------------------------------------------------- VOC class discovery


def test_voc_discovered_rare_class_is_refused_unless_allowed(tmp_path: Path, caplog):
    images = {f"r{i}": ("ok", ["raccoon"]) for i in range(6)} | {"typo": ("ok", ["racoon"])}
    root = _voc_set(tmp_path / "voc", {"train": images, "val": {"v": ("ok", ["raccoon"])}})
    with pytest.raises(DataError) as err:
        VocDataModule(root=root, **_dm_kwargs(tmp_path))
    msg = str(err.value)
    assert "'racoon': 1 box(es)" in msg and "typo.xml" in msg and "min_boxes_per_class=1" in msg
    assert "raccoon'" not in msg.replace("'racoon'", "")  # the common class is not blamed
    with caplog.at_level(logging.INFO):
        dm = VocDataModule(root=root, min_boxes_per_class=1, **_dm_kwargs(tmp_path))
    assert dm.class_names == ["raccoon", "racoon"]
    assert "raccoon (6), racoon (1)" in caplog.text


# --------------------------------------------------------------------------- COCO areas


def test_coco_annotation_area_reaches_the_metric_targets(tmp_path: Path):
    anns = [
        {"id": 1, "image_id": 100, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 0, "area": 77.5},
        {"id": 2, "image_id": 100, "category_id": 1, "bbox": [30, 20, 10, 10], "iscrowd": 0},
    ]  # no area: box area
    root = _coco_set(tmp_path / "coco", "val", ["ok"], anns=anns)
    dm = CocoDataModule(root=root, train_split="val", val_split="val", **_dm_kwargs(tmp_path))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["meta"][0]["gt_area"].tolist() == [77.5, 100.0]  # original-image pixels, not input pixels
    gt = TTFNetModule.ground_truth(batch)[0]
    assert gt["area"].tolist() == [77.5, 100.0]
