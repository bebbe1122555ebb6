"""Released TTFNet checkpoints (built here in the released key layouts, tests/core/test_released_layouts.py) ->
ttfnet-lightning checkpoints: strict round trip, equal network outputs, the errors, the output path, what the
commands do with the result (load_model, export, a resumed fit, train's settings check), the box convention
of the exported graph, and the public API at the package top."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from conftest import compose
from ttfnet_lightning import TTFNet, load_model
from ttfnet_lightning.core.decode import decode_detections
from ttfnet_lightning.deploy.convert import CONVERT_KEY, convert, convert_checkpoint
from ttfnet_lightning.deploy.graph import DetectionExport, topk_detections
from ttfnet_lightning.deploy.onnx_runtime import OnnxDetector, compare_detections
from ttfnet_lightning.deploy.output_files import OutputPathError
from ttfnet_lightning.deploy.released import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    ConvertError,
    detect_backbone,
    released_hparams,
)
from ttfnet_lightning.training.config_groups import module_groups
from ttfnet_lightning.training.run_start import check_checkpoint_module
from ttfnet_lightning.training.runs import checkpoint_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_released_layouts import RELEASED, _by_hand, random_state, ttfnet_layout  # noqa: E402


def by_hand(state: dict[str, Tensor], backbone: str) -> dict[str, Tensor]:
    """The released detector's tensors under this library's TTFNet names, rule by rule, for comparison."""
    wh_convs = RELEASED[backbone][2]
    out = {}
    for k, v in state.items():
        p = k.split(".")
        if p[0] == "backbone":
            rest = ".".join(p[1:])
            out |= {f"backbone.{n}": t for n, t in (_by_hand({rest: v}) if backbone == "d53" else {rest: v}).items()}
        elif p[1] == "deconv_layers":  # i.0.{weight,bias}, i.0.conv_offset_mask.P, i.1.P
            part = {"weight": "conv.weight", "bias": "conv.bias", "conv_offset_mask": "offset_mask"}
            inner = ".".join([part[p[4]], *p[5:]]) if p[3] == "0" else p[4]
            out[f"neck.upsample.{p[2]}.{p[3]}.{inner}"] = v
        elif p[1] == "shortcut_layers" and p[3] == "layers":
            out[f"neck.shortcuts.{p[2]}.{p[4]}.{p[5]}"] = v
        elif p[1] in ("hm", "wh"):  # j.conv.P (ConvModule j) or n.P (the 1x1 conv)
            out[f"head.{'heatmap' if p[1] == 'hm' else 'box'}.{2 * int(p[2])}.{p[-1]}"] = v
            assert (p[3] == "conv") == (int(p[2]) < (2 if p[1] == "hm" else wh_convs))
    return out


def mmdet_checkpoint(path: Path, state: dict[str, Tensor], **meta) -> Path:
    """An mmdetection 1.x checkpoint as mmcv's save_checkpoint writes it."""
    optimizer = {"state": {}, "param_groups": [{"lr": 0.002, "momentum": 0.9, "params": [0, 1]}]}
    meta = {"mmdet_version": "1.0rc0+ttfnet", "config": "model = dict(type='TTFNet')", **meta}
    torch.save({"meta": meta, "state_dict": state, "optimizer": optimizer}, path)
    return path


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """The released R18 TTFNet (mmdetection checkpoint) and its conversion by the command's config."""
    folder = tmp_path_factory.mktemp("r18")
    state = random_state(ttfnet_layout("r18"), seed=3)
    src = mmdet_checkpoint(folder / "ttfnet18_2x.pth", state, CLASSES=tuple(c.replace(" ", "_") for c in COCO_CLASSES))
    out = folder / "converted" / "ttfnet18.ckpt"
    record = convert(compose("convert", [f"input={src}", f"output={out}"]))
    return state, src, out, record


def test_round_trip_r18_equal_tensors_and_outputs(r18):
    state, src, out, record = r18
    model = load_model(out)
    assert record["backbone"] == "r18" and record["dropped"] == ["meta", "optimizer"] and record["filled"] == []
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt[CONVERT_KEY]["source_sha256"] == record["source_sha256"] and "optimizer_states" in ckpt
    expected = by_hand(state, "r18")
    got = model.net.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    info, decode, net = model.hparams.data_info, model.hparams.decode, model.hparams.net
    assert info["class_names"] == list(COCO_CLASSES) and info["label_to_cat_id"] == list(COCO_CATEGORY_IDS)
    assert info["input_size"] == [512, 512] and info["num_classes"] == 80 and decode["box_convention"] == "released"
    assert (net["backbone"], net["box_convs"], net["shortcut_convs"], net["frozen_stages"]) == ("r18", 1, [3, 2, 1], 1)
    ref = TTFNet(num_classes=80, backbone="r18", box_convs=1).eval()
    ref.load_state_dict(expected, strict=True)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (hm, wh), (hm_ref, wh_ref) = model.net(x), ref(x)
    assert torch.equal(hm, hm_ref) and torch.equal(wh, wh_ref) and wh.abs().sum() > 0


def test_round_trip_d53_bare_state_dict_with_the_early_shortcut_conv(tmp_path):
    state = random_state(ttfnet_layout("d53", early_shortcut=True), seed=4)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # an older save: none
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ttfnet53.pth")  # DataParallel prefix
    record = convert_checkpoint(tmp_path / "ttfnet53.pth", tmp_path / "ttfnet53.ckpt", backbone="d53")
    assert record["dropped"] == [
        f"bbox_head.shortcut_layers.{i}.shortcut.{p}" for i in range(3) for p in ("weight", "bias")
    ]
    model = load_model(tmp_path / "ttfnet53.ckpt")
    got = model.net.state_dict()
    expected = by_hand(state, "d53")
    assert set(got) - set(expected) == set(record["filled"]) and all(
        k.endswith("num_batches_tracked") for k in record["filled"]
    )
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.hparams.net["box_convs"] == 2 and model.hparams.optim["reference_batch"] == 96


def test_architecture_read_from_the_shapes():
    def meta_tensors(shapes):  # shapes only, no memory
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}

    r34 = meta_tensors(ttfnet_layout("r34", wh_agnostic=False))
    assert detect_backbone(r34) == "r34"
    groups = released_hparams(r34, "r34")
    assert groups["kernel"]["class_aware"] and groups["net"]["box_convs"] == 2
    assert (groups["net"]["heatmap_convs"], groups["net"]["heatmap_channels"], groups["net"]["box_channels"]) == (
        2,
        128,
        64,
    )
    with pytest.raises(ConvertError, match="heatmap has 20 classes"):
        released_hparams(r34 | {"bbox_head.hm.2.weight": torch.empty(20, 128, 1, 1, device="meta")}, "r34")
    fewer = {k: v for k, v in r34.items() if not k.startswith("bbox_head.shortcut_layers.2.layers.4")}
    assert released_hparams(fewer, "r34")["net"]["shortcut_convs"] == [2, 2, 1]
    r50 = r34 | {"backbone.layer1.0.conv3.weight": torch.empty(1, device="meta")}
    with pytest.raises(ConvertError, match="bottleneck ResNet"):
        detect_backbone(r50)
    head = {k: v for k, v in r34.items() if not k.startswith("backbone.")}
    assert detect_backbone(head | {"backbone.base.base_layer.0.weight": r34["backbone.conv1.weight"]}) == "dla34"
    with pytest.raises(ConvertError, match=r"backbone not recognised \(r18, r34, d53, dla34 convert\)"):
        detect_backbone(head | {"backbone.base_layer.0.weight": r34["backbone.conv1.weight"]})  # a bare DLA trunk


def test_errors_name_the_file_and_keys(r18, tmp_path):
    state, src, out, _ = r18

    def fails(obj, match, **kw):
        path = tmp_path / "bad.pth"
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        with pytest.raises(ConvertError, match=match):
            convert_checkpoint(path, tmp_path / "out.ckpt", **kw)
        assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.pth"]  # no output, no temporary file

    fails(b"not a checkpoint at all", "is not a readable PyTorch file")
    tv = {
        "conv1.weight": torch.zeros(64, 3, 7, 7),
        "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),
        "fc.weight": torch.zeros(1000, 512),
    }
    fails(tv, r"not a released TTFNet checkpoint: no bbox_head.hm(.|\n)*ResNet ImageNet weights")
    fails(torch.load(out, weights_only=True), "is a Lightning checkpoint already")
    fails(
        {"state_dict": state, "meta": {"time": __import__("datetime").datetime.now()}}, r"datetime(.|\n)*never loaded"
    )
    fails({"state_dict": state, "epoch": 3}, r"also \['epoch'\]")
    missing = {k: v for k, v in state.items() if k != "bbox_head.hm.0.conv.bias"}
    fails(missing, r"nothing for 1 tensor\(s\): head\.heatmap\.0\.bias \(128,\)")
    wrong = state | {"bbox_head.shortcut_layers.1.layers.2.weight": torch.zeros(128, 128, 1, 1)}
    fails(wrong, r"neck\.shortcuts\.1\.2\.weight: file \(128, 128, 1, 1\), model \(128, 128, 3, 3\)")
    extra = state | {"bbox_head.hm.0.bn.weight": torch.zeros(128), "backbone.layer5.0.conv1.weight": torch.zeros(1)}
    no_place = (
        r"2 key\(s\) have no place in the model: bbox_head\.hm\.0\.bn\.weight, backbone\.layer5\.0\.conv1\.weight"
    )
    fails(extra, no_place + r"(.|\n)*the file: .*backbone\.\* \(")
    fails(state, "backbone=d53 was given, but the file's backbone.* keys are r18's", backbone="d53")
    fails({"meta": {"CLASSES": ("cat", "dog")}, "state_dict": state}, "meta CLASSES are 2 names, not COCO's 80")


def test_output_path_safety(r18, tmp_path):
    state, src, out, _ = r18
    before = out.read_bytes()
    with pytest.raises(OutputPathError, match="which this command reads"):
        convert_checkpoint(src, src)
    with pytest.raises(OutputPathError, match="exists"):
        convert_checkpoint(src, out)
    assert out.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="released checkpoint not found"):
        convert_checkpoint(tmp_path / "nope.pth", tmp_path / "x.ckpt")


def test_converted_checkpoint_resumes_and_matches_the_training_config(r18, tmp_path):
    """``train ckpt_path=``: Lightning resumes the checkpoint (one step), and the module settings equal those
    of ``train backbone=r18 backbone.frozen_stages=1 data=coco model.box_convention=released`` (train's check)."""
    _, _, out, _ = r18
    model = load_model(out).train()
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0]]])
    batch = {
        "images": torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8),
        "boxes": boxes,
        "labels": torch.tensor([[3]]),
    }
    batch["meta"] = [{"image_id": 1, "orig_size": (64, 64), "input_size": (64, 64)}]
    trainer = pl.Trainer(
        max_epochs=1,  # one batch: one step (max_steps skips the loader's length: LR milestones)
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    before = model.net.head.box[0].weight.clone()
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None), ckpt_path=str(out))
    assert trainer.global_step == 1 and not torch.equal(before, model.net.head.box[0].weight)
    cfg = compose("train", ["backbone=r18", "backbone.frozen_stages=1", "data=coco", "model.box_convention=released"])
    resolved = OmegaConf.to_container(cfg, resolve=False)
    for key in ("backbone", "model", "kernel", "schedule"):
        resolved[key] = OmegaConf.to_container(cfg[key], resolve=True)
    info = load_model(out).hparams.data_info | {"batch_size": int(cfg.data.datamodule.batch_size)}
    check_checkpoint_module(checkpoint_run(out), module_groups(resolved) | {"data_info": info})


def test_exported_graph_and_onnx_rescale_follow_the_released_convention(r18, tmp_path):
    _, _, out, _ = r18
    from ttfnet_lightning.deploy.export import export_torchscript

    model = load_model(out)
    meta = export_torchscript(out, tmp_path / "m.pt", input_size=(64, 64), topk=20)
    assert meta["outputs"]["boxes"]["box_convention"] == "released"
    x = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), pytest.warns(FutureWarning):
        got = torch.jit.load(str(tmp_path / "m.pt"))(x)
        hm, wh = model(model.normalize(x))
    ref = decode_detections(hm, wh, input_size=(64, 64), k=20, score_threshold=-1.0, box_convention="released")[0]
    diff = compare_detections([ref["boxes"][None], ref["scores"][None], ref["labels"][None]], got)
    assert diff["compared"] > 10 and diff["max_box_diff_px"] < 1e-3 and diff["label_agreement"] == 1.0
    # the graph on one peak: clamped to W - 1, then x2 + 1 (and as decode_detections without a rescale)
    logits = torch.full((1, 1, 8, 8), -9.0)
    logits[0, 0, 3, 5] = 3.0
    wh = torch.zeros(1, 4, 8, 8)
    wh[0, :, 3, 5] = torch.tensor([6.5, 20.0, 15.0, 3.0])
    for convention, expected in (("continuous", [13.5, 0.0, 32.0, 15.0]), ("released", [13.5, 0.0, 32.0, 16.0])):
        got = topk_detections(logits, wh, input_size=(32, 32), k=1, box_convention=convention)[0]
        dec = decode_detections(logits, wh, input_size=(32, 32), k=1, box_convention=convention)[0]["boxes"]
        assert got[0, 0].tolist() == expected == dec[0].tolist()
    wh[0, 2, 3, 5] = 5.0  # x2 = 25 inside: continuous 25, released 26 (the last pixel 25 + 1)
    assert topk_detections(logits, wh, input_size=(32, 32), k=1, box_convention="released")[0][0, 0, 2] == 26.0
    with pytest.raises(ValueError, match="box_convention"):
        DetectionExport(torch.nn.Identity(), input_size=(32, 32), box_convention="mmdet")
    # onnxruntime's detector rescales x2 - 1 and adds the 1 back, as decode_detections does
    det = OnnxDetector.__new__(OnnxDetector)
    det.meta = {"input_size": [32, 32], "outputs": {"boxes": {"box_convention": "released"}}}
    det.run = lambda images: (
        torch.tensor([[[13.5, 0.0, 32.0, 16.0]]]).numpy(),
        torch.tensor([[0.9]]).numpy(),
        torch.tensor([[0]]).numpy(),
    )
    assert det.detect(None, orig_sizes=[(64, 96)])[0]["boxes"][0].tolist() == [40.5, 0.0, 94.0, 31.0]


def test_coco_names_and_ids_are_the_annotation_files(coco_mini):
    cats = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())["categories"]
    cats = sorted(cats, key=lambda c: c["id"])
    assert [c["name"] for c in cats] == list(COCO_CLASSES) and [c["id"] for c in cats] == list(COCO_CATEGORY_IDS)


def test_public_api_is_lazy():
    code = (
        "import sys, ttfnet_lightning.core, ttfnet_lightning as t\n"
        "assert 'pytorch_lightning' not in sys.modules, 'core imported Lightning'\n"
        "from ttfnet_lightning import TTFNet, encode_targets, decode_detections\n"
        "assert 'pytorch_lightning' not in sys.modules, 'a core name imported Lightning'\n"
        "from ttfnet_lightning.core.models import TTFNet as T\n"
        "assert TTFNet is T and set(t.__all__) <= set(dir(t))\n"
        "from ttfnet_lightning import TTFNetModule, load_model\n"
        "from ttfnet_lightning.training.checkpoints import load_model as L\n"
        "assert load_model is L and 'pytorch_lightning' in sys.modules\n"
        "try:\n    t.nothing\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "has no attribute 'nothing'" in out.stdout


def test_command_line_config(tmp_path):
    """``python -m ttfnet_lightning.convert`` composes conf/convert.yaml (the console script ttfnet-convert runs it)."""
    args = [sys.executable, "-m", "ttfnet_lightning.convert", "input=a.pth", "output=b.ckpt", "--cfg", "job"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert (cfg.input, cfg.output, cfg.backbone, cfg.overwrite) == ("a.pth", "b.ckpt", None, False)
    assert (cfg.frozen_stages, cfg.batch_size, cfg.wh_scale) == (None, None, 16.0)
    assert not list(tmp_path.iterdir())  # Hydra writes no run folder
