"""Export (ttfnet_lightning.deploy.export) and the ONNX runner (ttfnet_lightning.deploy.onnx_runtime): the exported
graph (normalisation + network with the deformable neck + fixed-K decoder) gives PyTorch's
detections in onnxruntime, with a dynamic batch; ``predict ckpt=model.onnx`` needs no torch model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import compose
from ttfnet_lightning.core.decode import decode_detections
from ttfnet_lightning.deploy.export import export, export_onnx, export_pt2, export_torchscript
from ttfnet_lightning.deploy.graph import DetectionExport, exportable_net, topk_detections
from ttfnet_lightning.deploy.onnx_runtime import OnnxDetector, compare_detections
from ttfnet_lightning.training.lit_module import TTFNetModule

SIZE = 128  # export input size of the tests


def detector_like(deformable: bool, *, num_classes: int = 5, seed: int = 0) -> TTFNetModule:
    """An R18 TTFNet with "trained-looking" random weights: non-trivial BN statistics, deformable
    offsets that really move the taps, heatmap logits spread over a few units (distinct scores,
    so the top-K order is unambiguous) and boxes of tens of pixels."""
    torch.manual_seed(seed)
    module = TTFNetModule(
        net={"backbone": "r18", "deformable": deformable, "frozen_stages": -1},
        data_info={"num_classes": num_classes, "input_size": [SIZE, SIZE]},
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if hasattr(m, "offset_mask"):
                m.offset_mask.weight.normal_(0, 0.02, generator=gen)  # offsets of about a pixel
        head = module.net.head
        head.heatmap[-1].weight.normal_(0, 1.0, generator=gen)
        head.heatmap[-1].bias.fill_(-1.0)
        head.box[-1].weight.normal_(0, 0.5, generator=gen)
        head.box[-1].bias.fill_(1.0)  # distances of 16 px give or take
    return module.eval()


def coco_images(root, n: int = 4) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``n`` COCO val images read and resized as ``predict`` does (uint8, SIZE x SIZE)."""
    from ttfnet_lightning.deploy.predict import ImageFolder, list_images

    files = list_images(root / "val2017")[:n]
    items = [ImageFolder(files, (SIZE, SIZE))[i] for i in range(n)]
    return torch.stack([it["input"] for it in items]), [tuple(it["image"].shape[-2:]) for it in items]


def test_topk_decoder_equals_decode_detections():
    """The exported decoder is decode_detections with a fixed K: same values, same order."""
    gen = torch.Generator().manual_seed(0)
    for class_aware in (False, True):
        hm = torch.randn(3, 4, 16, 20, generator=gen) * 2
        wh = torch.rand(3, 16 if class_aware else 4, 16, 20, generator=gen) * 40
        boxes, scores, labels = topk_detections(hm, wh, input_size=(64, 80), k=50)
        ref = decode_detections(hm, wh, input_size=(64, 80), k=50, score_threshold=-1.0)
        for i, r in enumerate(ref):
            assert (
                torch.equal(boxes[i], r["boxes"])
                and torch.equal(scores[i], r["scores"])
                and torch.equal(labels[i], r["labels"])
            )
    boxes, _, _ = topk_detections(torch.randn(1, 2, 4, 4), torch.rand(1, 4, 4, 4), input_size=(16, 16), k=100)
    assert boxes.shape == (1, 32, 4)  # K = min(k, C*h*w)


@pytest.mark.parametrize("deformable", [True, False], ids=["deformable", "plain"])
def test_onnx_parity_on_coco_images(coco_mini, tmp_path, deformable):
    module = detector_like(deformable)
    images, orig_sizes = coco_images(coco_mini)
    meta = export_onnx(module, tmp_path / "m.onnx", check=False)
    assert meta["network"]["deformable"] is deformable
    if deformable:  # the deformable convs are in the graph, as GridSample
        import onnx

        ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
        assert "GridSample" in ops and {"TopK", "MaxPool", "Sigmoid"} <= ops
    det = OnnxDetector(tmp_path / "m.onnx")
    got = det.run(images)
    with torch.no_grad():
        ref = DetectionExport(exportable_net(module), input_size=(SIZE, SIZE)).eval()(images)
    assert [tuple(g.shape) for g in got] == [(4, 100, 4), (4, 100), (4, 100)]
    c = compare_detections(ref, got, score_threshold=0.01)
    assert c["compared"] >= 390 and c["ambiguous"] <= 10, c  # distinct scores: the comparison is position-wise
    assert c["max_box_diff_px"] < 1e-3 and c["label_agreement"] == 1.0 and c["max_score_diff"] < 1e-5, c
    # dynamic batch: one image alone gives its rows of the batch of 4
    one = det.run(images[2:3])
    assert compare_detections([r[2:3] for r in ref], one)["max_box_diff_px"] < 1e-3

    # the thresholded, rescaled detections equal the library's own path (TTFNetModule.predict_step)
    with torch.no_grad():
        lib = module.predict_step(
            {"images": module.normalize(images), "meta": [{"orig_size": s} for s in orig_sizes]}, 0
        )
    onnx_dets = det.detect(images, orig_sizes=orig_sizes)
    for a, b, (h0, w0) in zip(lib, onnx_dets, orig_sizes):
        assert len(a["scores"]) == len(b["scores"]) > 20
        assert torch.equal(a["labels"], b["labels"])
        scale = max(h0, w0) / SIZE  # 1e-3 input pixels, in original pixels
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=0, atol=1e-3 * scale)


def test_metadata_errors_and_missing_extras(tmp_path, monkeypatch):
    module = TTFNetModule(
        net={"deformable": False},
        data_info={
            "num_classes": 2,
            "class_names": ["cat", "dog"],
            "input_size": [64, 96],
            "label_to_cat_id": [17, 18],
        },
    ).eval()
    meta = export_onnx(module, tmp_path / "m.onnx", topk=10)
    side = json.loads((tmp_path / "m.json").read_text())
    assert (
        side["class_names"] == ["cat", "dog"] and side["label_to_cat_id"] == [17, 18] and side["input_size"] == [64, 96]
    )
    assert (
        side["topk"] == 10
        and side["opset"] == 17
        and side["score_threshold"] == 0.01
        and side["input"]["dtype"] == "uint8"
    )
    assert side["normalization"]["mean"] == [0.485, 0.456, 0.406] and side["normalization"]["std"] == [
        0.229,
        0.224,
        0.225,
    ]
    assert meta["check"]["batch1"]["max_score_diff"] < 1e-5  # export's own onnxruntime check ran
    # the ONNX file carries the same metadata: the runner works without the JSON file
    (tmp_path / "m.json").unlink()
    det = OnnxDetector(tmp_path / "m.onnx")
    assert det.class_names == ["cat", "dog"] and det.input_size == (64, 96) and det.label_to_cat_id == [17, 18]
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 64, 96\)"):
        det.run(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        det.run(torch.zeros(1, 3, 64, 96))
    with pytest.raises(ValueError, match="opset must be >= 16"):
        export_onnx(module, tmp_path / "x.onnx", opset=15)
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(module, tmp_path / "x.onnx", input_size=[100, 100])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"ttfnet-lightning\[export\]"):
        export_onnx(module, tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"ttfnet-lightning\[export\]"):
        OnnxDetector(tmp_path / "m.onnx")


def test_core_library_imports_no_optional_package():
    code = (
        "import sys, ttfnet_lightning, ttfnet_lightning.core.models, ttfnet_lightning.deploy.export, "
        "ttfnet_lightning.deploy.onnx_runtime, "
        "ttfnet_lightning.deploy.predict, ttfnet_lightning.training.run; print(sorted(m for m in ('onnx', "
        "'onnxruntime', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_torchscript_and_pt2_formats(tmp_path):
    module = detector_like(True)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = DetectionExport(exportable_net(module), input_size=(64, 64), topk=50).eval()(x)
        export_torchscript(module, tmp_path / "m.pt", input_size=(64, 64), topk=50)
        with pytest.warns(FutureWarning):  # torch.jit is deprecated in favour of torch.export
            ts = torch.jit.load(str(tmp_path / "m.pt"))
        got = ts(x[:1])
        assert compare_detections([r[:1] for r in ref], got)["max_box_diff_px"] < 1e-3
        export_pt2(module, tmp_path / "m.pt2", input_size=(64, 64), topk=50)
        got = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
        c = compare_detections(ref, got)
        assert c["max_box_diff_px"] < 1e-3 and c["label_agreement"] == 1.0 and c["compared"] > 50, c
    assert json.loads((tmp_path / "m.json").read_text())["model_format"] == "pt2"


def test_cli_export_then_predict_with_onnx_only(tmp_path, monkeypatch):
    """`export ckpt=... output=model.onnx`, then `predict ckpt=model.onnx` (onnxruntime; no torch
    model: loading a checkpoint is made to fail) gives the PyTorch predict's detections."""
    from torchvision.io import write_png

    from ttfnet_lightning.deploy import predict as predict_module
    from ttfnet_lightning.deploy.predict import predict
    from ttfnet_lightning.training import checkpoints

    module = detector_like(False, num_classes=3)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    onnx_path = tmp_path / "export" / "model.onnx"
    export(compose("export", [f"ckpt={ckpt}", f"output={onnx_path}", "check=false"]))
    assert onnx_path.is_file() and (tmp_path / "export" / "model.json").is_file()
    assert json.loads((tmp_path / "export" / "model.json").read_text())["source_checkpoint"] == str(ckpt)

    src = tmp_path / "images"
    src.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(96, 160), (128, 128)]):
        write_png(torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=gen), str(src / f"img{i}.png"))
    args = [f"input={src}", "draw_threshold=0.5", "device=cpu"]
    torch_out = tmp_path / "pred_torch"
    predict(compose("predict", [f"ckpt={ckpt}", f"output={torch_out}", "inference.optimize=false", *args]))

    def no_torch_model(*a, **k):
        raise AssertionError("the ONNX path must not load a PyTorch model")

    monkeypatch.setattr(checkpoints, "load_model", no_torch_model)
    monkeypatch.setattr(predict_module, "load_model", no_torch_model)
    onnx_out = tmp_path / "pred_onnx"
    summary = predict(compose("predict", [f"ckpt={onnx_path}", f"output={onnx_out}", *args]))  # the ONNX model's path
    assert summary["num_images"] == 2 and summary["backend"] == "onnxruntime"
    assert sorted(p.name for p in onnx_out.glob("*.jpg")) == ["img0.jpg", "img1.jpg"]
    a = json.loads((torch_out / "detections.json").read_text())
    b = json.loads((onnx_out / "detections.json").read_text())
    assert len(a) == len(b) > 50
    key = lambda d: (d["image_id"], -d["score"])  # noqa: E731
    for da, db in zip(sorted(a, key=key), sorted(b, key=key)):
        assert da["image_id"] == db["image_id"] and da["category_id"] == db["category_id"]
        assert (
            abs(da["score"] - db["score"]) <= 2e-5 and max(abs(u - v) for u, v in zip(da["bbox"], db["bbox"])) <= 0.02
        )
    assert json.loads((onnx_out / "images.json").read_text()) == json.loads((torch_out / "images.json").read_text())


def test_export_config_and_console_script(tmp_path):
    from omegaconf import OmegaConf

    cfg = compose("export", ["ckpt=x.ckpt", "format=pt2", "input_size=[256,320]"])
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.format == "pt2" and list(cfg.input_size) == [256, 320]
    exe = Path(sys.executable).parent / "ttfnet-export"
    if not exe.is_file():
        pytest.skip(f"ttfnet-export not installed next to {sys.executable} (pip install -e . installs it)")
    proc = subprocess.run(
        [str(exe), "ckpt=x.ckpt", "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0 and "ckpt: x.ckpt" in proc.stdout and "output: model.onnx" in proc.stdout, proc.stderr[
        -2000:
    ]
    assert list(tmp_path.iterdir()) == []  # no Hydra run directory or log file left behind
