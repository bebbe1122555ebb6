"""The deployment commands at their boundary (issue 21, items 2 and 7): ``predict`` never overwrites
an input or one of its own outputs and fails when it processed nothing; ``export`` checks its output
path before any work and leaves no temporary file on any failure; ``evaluate`` refuses data whose
class names or category ids differ from the checkpoint's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torchvision.io import write_jpeg, write_png

from conftest import compose, subprocess_env
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.deploy.export import export_model, export_onnx, export_pt2, export_torchscript
from ttfnet_lightning.deploy.output_files import OutputPathError
from ttfnet_lightning.deploy.predict import output_names, predict
from ttfnet_lightning.training.evaluate import class_differences, evaluate
from ttfnet_lightning.training.lit_module import TTFNetModule

SHAPES = ["circle", "square", "triangle", "star", "cross"]  # the built-in data's classes, in order
EXPORTERS = {"onnx": export_onnx, "pt2": export_pt2, "torchscript": export_torchscript}


def tiny_module(names=SHAPES, ids=None) -> TTFNetModule:
    torch.manual_seed(0)
    return TTFNetModule(
        net={"backbone": "r18", "deformable": False, "frozen_stages": -1},
        data_info={
            "num_classes": len(names),
            "class_names": list(names),
            "input_size": [64, 64],
            "label_to_cat_id": ids,
        },
    ).eval()


def save_ckpt(path: Path, module: TTFNetModule) -> Path:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_ckpt(tmp_path_factory.mktemp("ckpt") / "last.ckpt", tiny_module())


def images(folder: Path, names: list[str], seed: int = 0) -> dict[str, bytes]:
    """Writes small random images (JPEG or PNG by suffix); returns their bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        img = torch.randint(0, 255, (3, 48, 40), dtype=torch.uint8, generator=gen)
        (write_png if name.lower().endswith(".png") else write_jpeg)(img, str(folder / name))
    return {n: (folder / n).read_bytes() for n in names}


def run_predict(ckpt: Path, src: Path, out: Path) -> dict:
    return predict(
        compose(
            "predict",
            [
                f"ckpt={ckpt}",
                f"input={src}",
                f"output={out}",
                "device=cpu",
                "inference.optimize=false",
                "draw_threshold=0.5",
            ],
        )
    )


def unchanged(folder: Path, before: dict[str, bytes]) -> bool:
    return all((folder / n).read_bytes() == b for n, b in before.items())


# ------------------------------------------------------------------------------------- predict: outputs vs inputs
def test_predict_refuses_the_input_folder_as_output(ckpt, tmp_path):
    src = tmp_path / "imgs"
    before = images(src, ["a.jpg", "b.jpg"])
    with pytest.raises(OutputPathError, match="is the input folder"):
        run_predict(ckpt, src, src)
    (tmp_path / "link").symlink_to(src, target_is_directory=True)  # another spelling of the same folder
    with pytest.raises(OutputPathError, match="is the input folder"):
        run_predict(ckpt, src, tmp_path / "link")
    with pytest.raises(OutputPathError, match="is the input folder"):  # one image, output = its folder
        run_predict(ckpt, src / "a.jpg", src)
    assert unchanged(src, before) and sorted(p.name for p in src.iterdir()) == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_predict_never_writes_through_a_link_to_an_input(ckpt, tmp_path, link):
    """An output file that is (a link to) an input image is refused, not overwritten."""
    src, out = tmp_path / "imgs", tmp_path / "pred"
    before = images(src, ["a.jpg"])
    out.mkdir()
    (out / "a.jpg").symlink_to(src / "a.jpg") if link == "symlink" else os.link(src / "a.jpg", out / "a.jpg")
    with pytest.raises(OutputPathError, match="would overwrite the input image"):
        run_predict(ckpt, src, out)
    assert unchanged(src, before)


def test_predict_outputs_never_collide(ckpt, tmp_path):
    """a.jpg and a.png (and a name differing in case only) get one drawn file each; a rerun replaces them."""
    src, out = tmp_path / "imgs", tmp_path / "pred"
    before = images(src, ["a.jpg", "a.png", "A.png", "b.png"])
    summary = run_predict(ckpt, src, out)
    assert summary["num_images"] == 4
    drawn = sorted(p.name for p in out.glob("*.jpg"))
    assert len(drawn) == 4 and len({n.casefold() for n in drawn}) == 4, drawn
    index = json.loads((out / "images.json").read_text())
    assert sorted(im["output"] for im in index["images"]) == drawn
    assert {im["file_name"]: im["output"] for im in index["images"]}["b.png"] == "b.jpg"  # unique names unchanged
    run_predict(ckpt, src, out)  # our own earlier outputs are replaced
    assert sorted(p.name for p in out.iterdir()) == sorted([*drawn, "detections.json", "images.json"])
    assert unchanged(src, before)


def test_output_names_are_unique_ignoring_case():
    files = [Path(n) for n in ["a.jpg", "a.png", "A.gif", "b.png", "a_png.jpg", "images.png", "x/c.png", "y/c.png"]]
    names = output_names(files)
    assert len({n.casefold() for n in names} | {"detections.json", "images.json"}) == len(files) + 2, names
    assert names[3] == "b.jpg" and names[5] == "images.jpg"


# ------------------------------------------------------------------------------------- predict: nothing processed
def test_predict_with_no_readable_input_fails_and_writes_nothing(ckpt, tmp_path):
    src, out = tmp_path / "imgs", tmp_path / "pred"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    (src / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 2 input file\(s\) could be read.*broken\.jpg"):
        run_predict(ckpt, src, out)
    assert not (out / "detections.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        run_predict(ckpt, empty, out)


def test_predict_with_some_unreadable_inputs_names_them(ckpt, tmp_path, capsys):
    src, out = tmp_path / "imgs", tmp_path / "pred"
    images(src, ["ok.png"])
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    summary = run_predict(ckpt, src, out)
    assert (
        summary["num_images"] == 1 and summary["skipped"] == 1 and summary["skipped_files"] == [str(src / "broken.jpg")]
    )
    assert "broken.jpg" in capsys.readouterr().out
    assert [s["file_name"] for s in json.loads((out / "images.json").read_text())["skipped"]] == [
        str(src / "broken.jpg")
    ]


@pytest.mark.slow
def test_predict_cli_exits_non_zero_when_nothing_was_processed(ckpt, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttfnet_lightning.predict",
            f"ckpt={ckpt}",
            f"input={src}",
            f"output={tmp_path / 'pred'}",
            "device=cpu",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert proc.returncode != 0 and "none of the 1 input file(s) could be read" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------- export: output path
@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_export_refuses_bad_output_paths_before_any_work(tmp_path, fmt):
    """Checked before the checkpoint is even read (a missing checkpoint is not the error)."""
    missing = tmp_path / "missing.ckpt"
    folder = tmp_path / "exports"
    folder.mkdir()
    (tmp_path / "file").write_text("x")
    cases = {
        str(folder): "is an existing directory",
        str(tmp_path / "file" / "m.onnx"): "is a file, not a folder",
        str(tmp_path / "new") + "/": "names a folder",
        str(tmp_path / "m.json"): "the model itself",
    }
    for output, message in cases.items():
        with pytest.raises(OutputPathError, match=message) as info:
            export_model(missing, output, format=fmt)
        assert output.rstrip("/") in str(info.value)
    (tmp_path / "m.json").mkdir()
    with pytest.raises(OutputPathError, match="metadata file"):
        export_model(missing, tmp_path / "m.onnx", format=fmt)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["exports", "file", "m.json"]


def test_export_refuses_an_unwritable_folder(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        output = locked / "m.onnx"
    elif Path("/sys/fs").is_dir():
        output = Path("/sys/m.onnx")  # root writes everywhere, but no new file can be made in sysfs
    else:
        pytest.skip("no folder this user cannot write")
    with pytest.raises(OutputPathError, match=f"cannot write in {output.parent}"):
        export_model(tmp_path / "missing.ckpt", output, format="torchscript")


def test_export_never_overwrites_its_checkpoint(ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "link.pt").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.pt")
    for output in (ckpt, tmp_path / "link.pt", tmp_path / "hard.pt", tmp_path / ".." / tmp_path.name / "link.pt"):
        with pytest.raises(OutputPathError, match="which this command reads"):
            export_model(ckpt, output, format="torchscript")
    assert ckpt.read_bytes() == data


def test_export_creates_a_missing_folder_and_replaces_an_earlier_export(tmp_path):
    out = tmp_path / "a" / "b" / "m.pt"
    export_torchscript(tiny_module(), out)
    first = out.read_bytes()
    export_torchscript(tiny_module(), out, topk=5)
    assert out.read_bytes() != first and json.loads(out.with_suffix(".json").read_text())["topk"] == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json", "m.pt"]


# ------------------------------------------------------------------------------------- export: failures leave nothing
def _fail_after_writing(exc: BaseException, arg: int = 1):
    """A stand-in for a writer: writes part of the file given as positional argument ``arg``, then raises ``exc``."""

    def write_then_fail(*args, **kwargs):
        f = args[arg]
        if hasattr(f, "write"):
            f.write(b"x" * 1000)
        else:
            Path(f).write_bytes(b"x" * 1000)
        raise exc

    return write_then_fail


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_failed_export_leaves_no_temporary_file(tmp_path, monkeypatch, fmt, exc):
    out = tmp_path / f"model.{fmt}"
    out.write_bytes(b"earlier export")
    fail = _fail_after_writing(exc, arg=2 if fmt == "onnx" else 1)
    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", fail)
    elif fmt == "torchscript":
        monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: object())
        monkeypatch.setattr(torch.jit, "save", fail)
    else:
        monkeypatch.setattr(torch.export, "export", lambda *a, **k: object())
        monkeypatch.setattr(torch.export, "save", fail)
    with pytest.raises(type(exc)):
        EXPORTERS[fmt](tiny_module(), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no .tmp, no metadata
    assert out.read_bytes() == b"earlier export"


def test_a_failed_onnx_check_leaves_nothing(tmp_path, monkeypatch):
    """Interrupted while the exported file is checked: neither the model nor its metadata is published."""
    onnx = pytest.importorskip("onnx")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_module(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- evaluate: the same classes
def test_class_differences():
    assert class_differences(SHAPES, None, SHAPES, None) == []
    assert class_differences(SHAPES, None, SHAPES, list(range(5))) == []  # no ids: label = id
    assert class_differences(None, [1, 2], ["x", "y"], [1, 2]) == []  # no names stored: ids only
    diffs = class_differences(["a", "b"], [1, 2], ["a", "c"], [1, 3])
    assert diffs == ["label 1: checkpoint 'b' (category id 2), data 'c' (category id 3)"]


@pytest.mark.parametrize(
    "names, ids, shown",
    [
        (SHAPES[::-1], None, "label 0: checkpoint 'cross' (category id 0), data 'circle'"),
        (SHAPES, [1, 2, 3, 4, 5], "label 0: checkpoint 'circle' (category id 1), data 'circle' (category id 0)"),
    ],
)
def test_evaluate_refuses_other_class_names_or_ids(tmp_path, names, ids, shown):
    ckpt = save_ckpt(tmp_path / "m.ckpt", tiny_module(names, ids))
    cfg = compose(
        "evaluate",
        [
            f"ckpt={ckpt}",
            "data=shapes",  # the built-in data named: this checkpoint carries no config of its own
            "data.datamodule.num_val=4",
            "data.datamodule.num_workers=0",
            "trainer=cpu",
            f"output_dir={tmp_path / 'eval'}",
        ],
    )
    with pytest.raises(DataError, match="other classes") as info:
        evaluate(cfg)
    assert shown in str(info.value) and f"{4 if ids is None else 5} difference(s)" in str(info.value)


def test_evaluate_refuses_other_coco_category_ids(tmp_path):
    """Same names and count, other category ids (a COCO file whose ids were renumbered)."""
    root = tmp_path / "coco"
    images(root / "val2017", ["1.jpg"])
    cats = [{"id": i, "name": n} for i, n in zip([1, 2, 7], ["a", "b", "c"])]
    ann = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 48, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": cats,
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    ckpt = save_ckpt(tmp_path / "m.ckpt", tiny_module(["a", "b", "c"], [1, 2, 3]))
    cfg = compose(
        "evaluate",
        [
            f"ckpt={ckpt}",
            "data=coco",
            f"data.datamodule.root={root}",
            "data.datamodule.num_workers=0",
            "trainer=cpu",
            f"output_dir={tmp_path / 'eval'}",
        ],
    )
    with pytest.raises(DataError, match=r"label 2: checkpoint 'c' \(category id 3\), data 'c' \(category id 7\)"):
        evaluate(cfg)
