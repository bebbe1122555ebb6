"""Safe at the boundary (issue 21, items 1 and 5): a path read from an annotation never leaves its
folder (absolute, ``..``, symbolic links; refused at index time, all entries in one error, and
again when read); ids and file names are unique; stated sizes are compared with the images; splits
sharing images are reported; every image mode decodes to the right pixels; truncated images say
how much is missing and a threshold makes them bad. Tiny files in tmp_path; seconds in all."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ttfnet_lightning.data import CocoDataModule, CocoDetection, DataError, VocDataModule, VocDetection
from ttfnet_lightning.data import check as data_check
from ttfnet_lightning.data.image_decode import decode
from ttfnet_lightning.data.paths import ImageFolder, lexical_problem

W, H = 64, 48


def _jpeg(seed: int = 0, size=(W, H)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _coco(root: Path, split: str, file_names: list[str], *, ids=None, ann_ids=None, sizes=None, write=True) -> Path:
    """COCO split: one image entry per file name (ids 100.. unless given), one box each; writes a
    64x48 JPEG for each plain name that does not exist yet (``write``)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    ids = ids or [100 + i for i in range(len(file_names))]
    ann_ids = ann_ids or [1 + i for i in range(len(file_names))]
    sizes = sizes or [(W, H)] * len(file_names)
    for k, fn in enumerate(file_names):
        p = root / split / fn
        if write and "/" not in fn and "\\" not in fn and not os.path.lexists(p):
            p.write_bytes(_jpeg(k))
    data = {
        "images": [
            {"id": i, "file_name": fn, "width": w, "height": h} for i, fn, (w, h) in zip(ids, file_names, sizes)
        ],
        "annotations": [
            {"id": a, "image_id": i, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 0, "area": 200.0}
            for a, i in zip(ann_ids, ids)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _voc(root: Path, split: str, items: list[tuple[str, str]], size=(W, H)) -> Path:
    """VOC split: items (split name, <filename>); an XML per name, a JPEG per plain file name."""
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for k, (name, fn) in enumerate(items):
        xml = root / "Annotations" / f"{name}.xml"
        if "/" not in name and not xml.exists():
            obj = (
                "<object><name>dog</name><bndbox><xmin>3</xmin><ymin>4</ymin>"
                "<xmax>30</xmax><ymax>40</ymax></bndbox></object>"
            )
            xml.write_text(
                f"<annotation><filename>{fn}</filename><size><width>{size[0]}</width>"
                f"<height>{size[1]}</height></size>{obj}</annotation>"
            )
        img = root / "JPEGImages" / fn
        if "/" not in fn and "\\" not in fn and not os.path.lexists(img):
            img.write_bytes(_jpeg(k))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(n for n, _ in items) + "\n")
    return root


def _dm_kwargs(tmp_path: Path, **kw):
    return {"input_size": (64, 64), "batch_size": 2, "num_workers": 0, "check_cache_dir": tmp_path / "cache"} | kw


# ============================================================ 1. paths never leave their folder


@pytest.mark.parametrize(
    "name, bad",
    [
        ("a.jpg", False),
        ("sub/a.jpg", False),
        ("sub/../a.jpg", False),
        ("./a.jpg", False),
        ("a..b.jpg", False),
        ("...jpg", False),
        ("a\\b.jpg", False),
        ("/etc/hostname", True),
        ("C:\\Windows\\x.jpg", True),
        ("c:x.jpg", True),
        ("\\\\server\\share\\x.jpg", True),
        ("//server/share/x.jpg", True),
        ("\\x.jpg", True),
        ("../x.jpg", True),
        ("a/../../x.jpg", True),
        ("..\\..\\x.jpg", True),
        ("sub\\..\\..\\x.jpg", True),
        ("", True),
        (" ", True),
        (".", True),
        ("a/..", True),
        ("a\x00.jpg", True),
        (7, True),
        (None, True),
    ],
)
def test_lexical_rules(name, bad: bool, tmp_path: Path):
    assert (lexical_problem(name) is not None) == bad
    # the same verdict from the folder check, whether it judges the names together or one by one
    for names in ([name], ["a0.jpg", name, "z\x01.jpg"]):
        problems = ImageFolder(tmp_path).problems(names, lambda k: f"entry {k}")
        assert any(p.startswith(f"entry {names.index(name)}: ") for p in problems) == bad, problems


def test_coco_file_names_leaving_the_image_folder_are_refused_all_in_one_error(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.jpg").write_bytes(_jpeg(9))
    root = tmp_path / "coco"
    (root / "val" / "sub").mkdir(parents=True)
    (root / "val" / "inside.jpg").write_bytes(_jpeg(1))
    (root / "val" / "sub" / "other.jpg").write_bytes(_jpeg(2))
    (root / "val" / "link_in.jpg").symlink_to(root / "val" / "sub" / "other.jpg")  # a link that stays inside: allowed
    (root / "val" / "link.jpg").symlink_to(secret / "s.jpg")
    (root / "val" / "linkdir").symlink_to(secret)
    (root / "val" / "sub" / "deep.jpg").symlink_to(secret / "s.jpg")
    bad = {
        101: "../../secret/s.jpg",
        102: str(secret / "s.jpg"),
        103: "C:\\data\\s.jpg",
        104: "\\\\server\\x\\s.jpg",
        105: "sub/../../../secret/s.jpg",
        106: "link.jpg",
        107: "linkdir/s.jpg",
        108: "sub/deep.jpg",
        109: "LINK.JPG" if os.path.exists(root / "val" / "LINK.JPG") else "sub/../link.jpg",
    }
    names = ["inside.jpg", *bad.values(), "link_in.jpg"]
    ids = [100, *bad, 110]
    _coco(root, "val", names, ids=ids, write=False)
    with pytest.raises(DataError) as err:
        CocoDetection(root=root, split="val")
    msg = str(err.value)
    assert f"{len(bad)} problem(s)" in msg and "instances_val.json" in msg
    for iid, fn in bad.items():  # every entry named, with its path, in one error
        assert f"image id {iid}: file name {fn!r}" in msg
    assert "image id 100" not in msg and "image id 110" not in msg
    # the same data with only the safe entries loads; an image folder that is itself a link is fine
    _coco(root, "val", ["inside.jpg", "link_in.jpg", "sub/../inside2.jpg"], ids=[1, 2, 3], write=False)
    (root / "val" / "inside2.jpg").write_bytes(_jpeg(2))
    (tmp_path / "linked").symlink_to(root / "val")
    ds = CocoDetection(root=root, split="val", image_dir=tmp_path / "linked")
    assert len(ds) == 3 and ds[2][0].shape == (3, H, W)


def test_a_link_swapped_in_after_indexing_is_refused_when_read(tmp_path: Path):
    (tmp_path / "secret.jpg").write_bytes(_jpeg(5))
    root = _coco(tmp_path / "coco", "val", ["a.jpg", "b.jpg"])
    ds = CocoDetection(root=root, split="val")
    skipping = CocoDetection(root=root, split="val", skip_bad_images=True)
    (root / "val" / "b.jpg").unlink()
    (root / "val" / "b.jpg").symlink_to(tmp_path / "secret.jpg")
    ds[0]
    with pytest.raises(DataError, match=r"refusing to read .*b\.jpg \(image id 101\).*outside the image folder"):
        ds[1]
    assert skipping[1].path.endswith("b.jpg") and skipping.num_skipped == 1  # a bad image under the policy


def test_voc_split_names_and_filenames_leaving_their_folder_are_refused_unread(tmp_path: Path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.xml").write_text("<annotation><filename>x.jpg</filename></annotation>")
    (outside / "o.jpg").write_bytes(_jpeg(3))
    root = _voc(
        tmp_path / "voc",
        "train",
        [
            ("a", "a.jpg"),
            ("b", "../../outside/o.jpg"),
            ("c", "/etc/hostname"),
            ("../../outside/evil", "x.jpg"),
            ("d", "d.jpg"),
        ],
    )
    (root / "Annotations" / "e.xml").symlink_to(outside / "evil.xml")
    (root / "JPEGImages" / "d.jpg").unlink()
    (root / "JPEGImages" / "d.jpg").symlink_to(outside / "o.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\n../../outside/evil\nd\ne\n")
    import xml.etree.ElementTree as ET

    parsed: list[str] = []
    real_parse = ET.parse
    monkeypatch.setattr(ET, "parse", lambda p, *a, **k: parsed.append(str(p)) or real_parse(p, *a, **k))
    with pytest.raises(DataError) as err:
        VocDetection(root=root, split="train", min_boxes_per_class=0)
    msg = str(err.value)
    assert "5 problem(s)" in msg
    assert "entry 4 ('../../outside/evil'): file name '../../outside/evil.xml' climbs out" in msg
    assert "entry 6 ('e'): file name 'e.xml' resolves to" in msg  # a linked XML pointing outside
    assert "b.xml: file name '../../outside/o.jpg' climbs out" in msg
    assert "c.xml: file name '/etc/hostname' is an absolute path" in msg
    assert "d.xml: file name 'd.jpg' resolves to" in msg
    assert not any("outside" in p or p.endswith("e.xml") for p in parsed)  # never read


def test_check_command_lists_the_path_problems_of_both_splits(tmp_path: Path, capsys):
    root = _coco(tmp_path / "coco", "train", ["t.jpg", "../../../../etc/hostname"])
    _coco(root, "val", ["v.jpg", "/etc/passwd"])
    code = data_check.main(
        [
            "data=coco",
            f"data.datamodule.root={root}",
            "data.datamodule.train_split=train",
            "data.datamodule.val_split=val",
            f"data.datamodule.check_cache_dir={tmp_path / 'c'}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "instances_val.json" in out and "image id 101: file name '/etc/passwd'" in out
    assert "instances_train.json" in out and "image id 101: file name '../../../../etc/hostname'" in out


def test_prepare_refuses_a_data_set_with_an_escaping_path(tmp_path: Path, capsys):
    pytest.importorskip("litdata", reason="prepare needs litdata")
    from ttfnet_lightning.data import prepare as data_prepare

    (tmp_path / "secret.jpg").write_bytes(_jpeg(7))
    root = _coco(tmp_path / "coco", "train", ["t0.jpg", "../../secret.jpg"])
    _coco(root, "val", ["v0.jpg"])
    out = tmp_path / "stream"
    code = data_prepare.main(
        [
            "data=coco",
            f"data.datamodule.root={root}",
            "data.datamodule.train_split=train",
            "data.datamodule.val_split=val",
            f"data.datamodule.check_cache_dir={tmp_path / 'c'}",
            f"output={out}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "image id 101: file name '../../secret.jpg' climbs out" in err
    assert not out.exists() or not any(out.rglob("*.bin"))  # nothing copied into stream chunks


def test_image_folder_check_is_cheap_for_plain_names(tmp_path: Path, monkeypatch):
    (tmp_path / "a.jpg").write_bytes(b"x")
    folder = ImageFolder(tmp_path)
    calls = []
    monkeypatch.setattr(os.path, "realpath", lambda p, **k: calls.append(p) or p)
    assert folder.problems([f"img{i}.jpg" for i in range(1000)], str) == []
    assert calls == []  # plain, non-link names need no resolution


# ============================================================ 5. annotations checked against the data


def test_coco_duplicate_ids_and_files_are_refused(tmp_path: Path):
    root = _coco(tmp_path / "coco", "val", ["a.jpg", "b.jpg", "c.jpg", "c.jpg"], ids=[1, 1, 2, 3], ann_ids=[7, 8, 7, 9])
    with pytest.raises(DataError) as err:
        CocoDetection(root=root, split="val")
    msg = str(err.value)
    assert "image id 1 is listed 2 times (file names 'a.jpg', 'b.jpg')" in msg
    assert "annotation id 7 is listed 2 times (image ids 1, 2)" in msg
    root = _coco(tmp_path / "coco1", "val", ["a.jpg", "b.jpg", "c.jpg"], ann_ids=[5, 6, 5])  # only that problem
    with pytest.raises(DataError, match=r"annotation id 5 is listed 2 times \(image ids 100, 102\)"):
        CocoDetection(root=root, split="val")
    root = _coco(tmp_path / "coco2", "val", ["a.jpg", "b.jpg", "./a.jpg"], ids=[1, 2, 3])
    with pytest.raises(DataError, match=r"file 'a\.jpg' is named by 2 entries \(image id 1, image id 3\)"):
        CocoDetection(root=root, split="val")


def test_coco_ids_must_be_integers(tmp_path: Path):
    root = _coco(tmp_path / "coco", "val", ["a.jpg", "b.jpg"])
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    data["images"][0]["id"] = [100]
    data["annotations"][1]["id"] = {"x": 1}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoDetection(root=root, split="val")
    assert "id must be an integer" in str(err.value) and "annotation id {'x': 1}" in str(err.value)
    data["images"][0]["id"] = 100  # the annotation id alone: found when indexed, named as well
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation id \{'x': 1\} .*: an id must be a number or string"):
        CocoDetection(root=root, split="val")


def test_voc_duplicate_entries_and_filenames_are_refused(tmp_path: Path):
    root = _voc(tmp_path / "voc", "train", [("a", "a.jpg"), ("b", "a.jpg"), ("c", "c.jpg"), ("c", "c.jpg")])
    with pytest.raises(DataError) as err:
        VocDetection(root=root, split="train", min_boxes_per_class=0)
    msg = str(err.value)
    assert "file 'c.xml' is named by 2 entries (train.txt entry 3 ('c'), train.txt entry 4 ('c'))" in msg
    assert "file 'a.jpg' is named by" in msg and "a.xml" in msg and "b.xml" in msg


def test_voc_size_is_compared_with_the_image(tmp_path: Path, caplog):
    root = _voc(tmp_path / "voc", "train", [("a", "a.jpg"), ("b", "b.jpg")], size=(W, H))
    (root / "JPEGImages" / "b.jpg").write_bytes(_jpeg(1, size=(32, 32)))
    _voc(root, "val", [("a", "a.jpg")])
    ds = VocDetection(root=root, split="train", min_boxes_per_class=0)
    ds[0]
    with pytest.raises(DataError, match=r"b\.jpg is 32x32 \(WxH\) but its annotation says 64x48"):
        ds[1]
    dm = VocDataModule(root=root, **_dm_kwargs(tmp_path, min_boxes_per_class=0, skip_bad_images=False))
    with pytest.raises(DataError, match=r"FATAL: train: image .*b\.jpg is 32x32"):
        dm.setup("fit")  # the pre-flight check compares it too


def test_splits_sharing_images_are_reported(tmp_path: Path, caplog):
    root = _coco(tmp_path / "coco", "train", ["a.jpg", "b.jpg", "c.jpg"], ids=[1, 2, 3])
    _coco(root, "val", ["x.jpg", "b.jpg"], ids=[10, 2])  # b.jpg: a copy with the same image id
    dm = CocoDataModule(root=root, train_split="train", val_split="val", **_dm_kwargs(tmp_path))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    shared = [r.getMessage() for r in caplog.records if "share" in r.getMessage()]
    assert len(shared) == 1 and "train and val share 1 image(s)" in shared[0] and "b.jpg (image id 2" in shared[0]
    # the same files in both splits (here: one split used twice, through a linked folder)
    (root / "val2").symlink_to(root / "train")
    _coco(root, "val2", ["a.jpg", "b.jpg", "c.jpg"], ids=[21, 22, 23], write=False)
    sets = {"train": CocoDetection(root=root, split="train"), "val": CocoDetection(root=root, split="val2")}
    (msg,) = data_check.shared_images(sets)
    assert "share 3 image(s)" in msg and str((root / "train" / "a.jpg").resolve()) in msg
    assert data_check.shared_images({"train": sets["train"], "val": CocoDetection(root=root, split="val")}) != []
    assert data_check.shared_images({"train": sets["train"]}) == []
    # VOC: both split files list one image
    voc = _voc(
        tmp_path / "voc", "train", [("a", "a.jpg"), ("b", "b.jpg"), ("c", "c.jpg"), ("d", "d.jpg"), ("e", "e.jpg")]
    )
    _voc(voc, "val", [("x", "x.jpg"), ("c", "c.jpg")])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        VocDataModule(root=voc, **_dm_kwargs(tmp_path, min_boxes_per_class=0)).setup("fit")
    assert "train and val share 1 image(s)" in caplog.text and "c.jpg" in caplog.text


# ------------------------------------------------------------------ image modes


def test_16_bit_grayscale_png_is_scaled_not_white(tmp_path: Path):
    gradient = np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))
    png = _encode(Image.fromarray(gradient))
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    root = _coco(tmp_path / "coco", "val", ["g.png"])
    (root / "val" / "g.png").write_bytes(png)
    img, _ = CocoDetection(root=root, split="val")[0]
    want = np.round(gradient / 257.0).astype(np.uint8)
    assert img.dtype.is_floating_point is False and img.shape == (3, H, W)
    for c in range(3):
        np.testing.assert_array_equal(img[c].numpy(), want)
    assert img[0, 0, 0] == 0 and img[0, 0, -1] == 255 and abs(int(img[0, 0, W // 2]) - 128) <= 2


def test_other_modes_decode_to_sensible_rgb():
    gray = np.array([[0, 1000, 30000, 65535]], dtype=np.int32)
    cases = {
        "I": (Image.fromarray(gray, "I"), "TIFF", [[0, 0, 0], [4, 4, 4], [117, 117, 117], [255, 255, 255]]),
        "F [0, 1]": (
            Image.fromarray(np.array([[0, 0.5, 1.0, 0.25]], np.float32), "F"),
            "TIFF",
            [[0, 0, 0], [128, 128, 128], [255, 255, 255], [64, 64, 64]],
        ),
        "F [0, 255]": (
            Image.fromarray(np.array([[0, 10, 200, 255]], np.float32), "F"),
            "TIFF",
            [[0, 0, 0], [10, 10, 10], [200, 200, 200], [255, 255, 255]],
        ),
        "1": (Image.fromarray(np.array([[0, 1, 0, 1]], bool)), "PNG", [[0, 0, 0], [255, 255, 255]] * 2),
        "CMYK": (
            Image.frombytes("CMYK", (4, 1), bytes([0, 0, 0, 0, 0, 255, 255, 0, 255, 0, 255, 0, 0, 0, 0, 255])),
            "TIFF",
            [[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 0]],
        ),
        # transparency: composited over white; what hides under a transparent pixel never shows
        "LA": (
            Image.fromarray(np.array([[[200, 255], [200, 0], [0, 128], [50, 255]]], np.uint8), "LA"),
            "PNG",
            [[200, 200, 200], [255, 255, 255], [127, 127, 127], [50, 50, 50]],
        ),
        "RGBA": (
            Image.fromarray(
                np.array([[[255, 0, 255, 0], [10, 20, 30, 255], [0, 0, 0, 0], [0, 0, 255, 255]]], np.uint8), "RGBA"
            ),
            "PNG",
            [[255, 255, 255], [10, 20, 30], [255, 255, 255], [0, 0, 255]],
        ),
    }
    pal = Image.new("P", (4, 1))
    pal.putpalette([255, 0, 255, 10, 20, 30] + [0] * 762)  # index 0: a magenta key colour, transparent
    pal.putdata([0, 1, 0, 1])
    cases["P + transparency"] = (pal, "PNG", [[255, 255, 255], [10, 20, 30]] * 2)
    for what, (im, fmt, want) in cases.items():
        data = _encode(im, fmt, **({"transparency": 0} if what.startswith("P") else {}))
        got = np.asarray(decode(data).image)
        assert got.dtype == np.uint8 and got.shape == (1, 4, 3), what
        np.testing.assert_allclose(got[0].astype(int), np.array(want), atol=1, err_msg=what)


def test_modes_without_a_defined_mapping_fail_clearly(tmp_path: Path):
    root = _coco(tmp_path / "coco", "val", ["f.tif", "i.tif"])
    (root / "val" / "f.tif").write_bytes(_encode(Image.fromarray(np.full((H, W), 1e6, np.float32), "F"), "TIFF"))
    (root / "val" / "i.tif").write_bytes(_encode(Image.fromarray(np.full((H, W), -5, np.int32), "I"), "TIFF"))
    ds = CocoDetection(root=root, split="val")
    with pytest.raises(DataError, match=r"f\.tif: float image with values in \[1e\+06, 1e\+06\]"):
        ds[0]
    with pytest.raises(DataError, match=r"i\.tif: I image with values in \[-5, -5\]: no defined 8-bit mapping"):
        ds[1]


# ------------------------------------------------------------------ truncated images


def _photo_jpeg(size=(64, 96)) -> bytes:
    """A smooth JPEG (a decoder that runs out of data fills a uniform colour below the cut)."""
    y = np.linspace(0, 255, size[1])[:, None, None]
    arr = np.clip(
        y * np.array([1.0, 0.6, 0.3]) + np.random.default_rng(0).integers(-20, 20, (size[1], size[0], 3)), 0, 255
    ).astype(np.uint8)
    return _encode(Image.fromarray(arr), "JPEG", quality=90)


def test_truncated_image_says_how_much_is_missing_and_the_threshold_applies(tmp_path: Path, caplog):
    data = _photo_jpeg()
    root = _coco(tmp_path / "coco", "val", ["half.jpg", "tail.jpg"], sizes=[(64, 96), (64, 96)])
    (root / "val" / "half.jpg").write_bytes(data[: len(data) // 2])
    (root / "val" / "tail.jpg").write_bytes(data[:-20])
    ds = CocoDetection(root=root, split="val")
    with pytest.raises(
        DataError,
        match=r"half\.jpg: about 4\d% of the image not decoded \(the bottom 4\d of 96 rows"
        r".*max_truncated_fraction=0\.1",
    ):
        ds[0]
    with caplog.at_level(logging.WARNING):
        ds[1]  # a few bytes short: loads, as always, and says how much is missing
    assert "tail.jpg" in caplog.text and "no full row of 96 missing" in caplog.text and ds.num_truncated == 1
    skipping = CocoDetection(root=root, split="val", skip_bad_images=True)
    assert skipping[0].reason.startswith("truncated image") and skipping.num_skipped == 1  # counted, logged
    lenient = CocoDetection(root=root, split="val", max_truncated_fraction=1.0)
    with caplog.at_level(logging.WARNING):
        img, _ = lenient[0]
    assert img.shape == (3, 96, 64) and "about 4" in caplog.text
    assert (img[:, -10:] == img[:, -1:, -1:]).all()  # the bottom is the uniform fill
    with pytest.raises(ValueError, match="max_truncated_fraction"):
        CocoDetection(root=root, split="val", max_truncated_fraction=1.5)


def test_preflight_applies_the_truncation_threshold(tmp_path: Path):
    data = _photo_jpeg()
    root = _coco(tmp_path / "coco", "train", ["ok.jpg", "half.jpg"], sizes=[(64, 96)] * 2)
    (root / "train" / "ok.jpg").write_bytes(data)
    (root / "train" / "half.jpg").write_bytes(data[: len(data) // 2])
    _coco(root, "val", ["v.jpg"])
    kw = _dm_kwargs(tmp_path, train_split="train", val_split="val")
    dm = CocoDataModule(root=root, **kw)
    dm.setup("fit")
    assert len(dm.train_dataset) == 1 and "half.jpg" in next(iter(dm.train_dataset.excluded_images))
    reason = next(iter(dm.train_dataset.excluded_images.values()))
    assert "about 4" in reason and "max_truncated_fraction=0.1" in reason  # measured at full size
    dm = CocoDataModule(root=root, max_truncated_fraction=0.9, **kw)  # the data module passes the option on
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and dm.train_dataset.max_truncated_fraction == 0.9
    report = dm.check_data()
    assert any("truncated/damaged image" in p and "half.jpg" in p and "about 4" in p for p in report.problems)
