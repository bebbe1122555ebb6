"""DLA-34 and timm backbones: feature levels and channels, frozen stages, strict weight loading,
offline errors, configs. timm models are small test models built without weights."""

from __future__ import annotations

import copy
import sys
import urllib.error

import pytest
import torch
from torch import nn

from conftest import compose
from ttfnet_lightning.core.models import TTFNet, WeightsError
from ttfnet_lightning.core.models.backbones import build_backbone
from ttfnet_lightning.core.models.dla import DLA34
from ttfnet_lightning.core.models.timm_backbone import TimmBackbone
from ttfnet_lightning.training.config import NetConfig

timm = pytest.importorskip("timm", reason="the timm extra is not installed (pip install -e '.[timm]')")


def _feats_shapes(bb: nn.Module, h: int = 64, w: int = 96) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(f.shape) for f in bb.eval()(torch.randn(2, 3, h, w))]


def _check_frozen(bb: nn.Module, n_frozen: int) -> None:
    """The first ``n_frozen`` stages (stem = stage 0) have no trainable parameter, keep eval-mode
    BN and do not move in an optimiser step; the others train."""
    stages = bb._stage_modules()
    assert len(stages) == 5
    assert all(not p.requires_grad for s in stages[:n_frozen] for p in s.parameters())
    assert all(p.requires_grad for s in stages[n_frozen:] for p in s.parameters())
    assert all(sum(p.numel() for p in s.parameters()) > 0 for s in stages)
    bb.train()
    bns = lambda s: [m for m in s.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # noqa: E731
    assert all(not m.training for s in stages[:n_frozen] for m in bns(s))
    assert all(m.training for s in stages[n_frozen:] for m in bns(s))
    before = [{k: v.clone() for k, v in s.state_dict().items()} for s in stages[:n_frozen]]
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    sum(f.mean() for f in bb(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    for s, b in zip(stages[:n_frozen], before):
        assert all(torch.equal(b[k], v) for k, v in s.state_dict().items())  # weights and BN statistics


# ------------------------------------------------------------------------------------- DLA-34
def test_dla34_levels_channels_and_ttfnet():
    net = TTFNet(num_classes=4, backbone="dla34", deformable=False)
    assert net.backbone.out_channels == (64, 128, 256, 512)
    assert _feats_shapes(net.backbone) == [
        (2, c, 64 // s, 96 // s) for c, s in zip((64, 128, 256, 512), (4, 8, 16, 32))
    ]
    hm, wh = net.eval()(torch.randn(1, 3, 64, 64))
    assert hm.shape == (1, 4, 16, 16) and wh.shape == (1, 4, 16, 16)
    assert sum(isinstance(m, nn.Conv2d) for m in net.head.box) - 1 == 1  # released DLA-34 head: 1 regression conv
    # DLA-34 trunk without classifier: 15.2 M parameters (timm's dla34 features: the same)
    assert sum(p.numel() for p in net.backbone.parameters()) == 15_229_104


def test_dla34_equals_timms_dla34():
    """Same architecture and key names as timm's dla34 (the official DLA code's, less its unused
    projections): timm's weights load strictly and give the same feature maps."""
    ref = timm.create_model("dla34", pretrained=False).eval()
    feats = timm.create_model("dla34", features_only=True, out_indices=(2, 3, 4, 5), pretrained=False).eval()
    feats.load_state_dict({k: v for k, v in ref.state_dict().items() if k in feats.state_dict()})
    ours = DLA34(frozen_stages=-1)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours.eval()(x), feats(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dla34_weights_strict_official_layout_and_offline(tmp_path, monkeypatch):
    ref = DLA34(frozen_stages=-1)
    official = dict(ref.state_dict())
    # the official dla34-ba72cf86.pth also has a classifier and the unused projections of depth-2 trees
    official.update({"fc.weight": torch.zeros(1000, 512, 1, 1), "fc.bias": torch.zeros(1000)})
    official.update({f"level{i}.project.0.weight": torch.zeros(8, 8, 1, 1) for i in (3, 4)})
    torch.save(official, tmp_path / "dla34-ba72cf86.pth")
    loaded = DLA34(weights=str(tmp_path / "dla34-ba72cf86.pth"))
    assert torch.equal(loaded.level4.tree2.root.conv.weight, ref.level4.tree2.root.conv.weight)

    bad = dict(official)
    bad.pop("level2.tree1.bn1.weight")
    bad["level9.extra"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(
        WeightsError,
        match=r"(?s)bad\.pth.*missing keys \(1\): level2\.tree1\.bn1\.weight.*unexpected keys \(1\): level9\.extra",
    ):
        DLA34(weights=str(tmp_path / "bad.pth"))

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"dla34-ba72cf86.*offline.*backbone\.weights=/path/to/dla34-ba72cf86\.pth"):
        DLA34(pretrained=True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: official)
    assert torch.equal(DLA34(pretrained=True).base_layer[0].weight, ref.base_layer[0].weight)


def test_dla34_frozen_stages():
    _check_frozen(DLA34(frozen_stages=1), 2)  # stem (base_layer, level0, level1) + level2


# ---------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize(
    "model,channels",
    [
        ("test_resnet", (32, 48, 192, 96)),  # FeatureListNet, stride-2 level dropped
        ("test_convnext", (24, 32, 48, 64)),  # 4 levels only, flattened stem names (stem_0)
        ("test_efficientnet", (24, 32, 48, 64)),  # EfficientNetFeatures (its own class)
        ("test_mambaout", (16, 32, 48, 64)),  # NHWC feature maps, permuted to NCHW
    ],
)
def test_timm_levels_picked_and_channels_automatic(model, channels):
    net = TTFNet(num_classes=3, backbone="timm", backbone_model=model, deformable=False, frozen_stages=-1)
    assert net.backbone.out_channels == channels
    assert _feats_shapes(net.backbone) == [(2, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    hm, wh = net.eval()(torch.randn(1, 3, 64, 64))
    assert hm.shape == (1, 3, 16, 16) and wh.shape == (1, 4, 16, 16)


def test_timm_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"reductions \[16, 16, 16\].*needs one each at \[4, 8, 16, 32\]"):
        TimmBackbone(model="test_vit")
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        TimmBackbone(model="no_such_net")
    with pytest.raises(ValueError, match="backbone.model=<name>"):
        build_backbone("timm")
    with pytest.raises(ValueError, match="only used with backbone=timm"):
        build_backbone("r18", model="resnet18d")
    with pytest.raises(ValueError, match="unknown backbone 'r99'.*'dla34', 'timm'"):
        build_backbone("r99")
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    with pytest.raises(ImportError, match=r"ttfnet-lightning\[timm\]"):
        TimmBackbone(model="test_resnet")


@pytest.mark.parametrize("model,n", [("test_resnet", 2), ("test_efficientnet", 1), ("test_convnext", 4)])
def test_timm_frozen_stages(model, n):
    bb = TimmBackbone(model=model, frozen_stages=n - 1)
    _check_frozen(bb, n)
    assert all(p.requires_grad for p in TimmBackbone(model=model, frozen_stages=-1).parameters())


@pytest.mark.parametrize("model", ["test_resnet", "test_convnext"])
def test_timm_weights_strict(tmp_path, model):
    full = timm.create_model(model, pretrained=False)  # the hub's layout: classification model keys
    torch.save(full.state_dict(), tmp_path / "cls.pth")
    bb = TimmBackbone(model=model, weights=str(tmp_path / "cls.pth"))
    name, p = next(iter(bb.net.named_parameters()))
    assert torch.equal(p, full.state_dict()[name.replace("stem_", "stem.")])
    # the features-model layout (what checkpoints.export_backbone_weights writes) loads too
    torch.save(bb.net.state_dict(), tmp_path / "feats.pth")
    again = TimmBackbone(model=model, weights=str(tmp_path / "feats.pth"))
    assert all(torch.equal(a, b) for a, b in zip(bb.net.state_dict().values(), again.net.state_dict().values()))
    # and a .safetensors file (the hub's format)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "model.safetensors"))
    TimmBackbone(model=model, weights=str(tmp_path / "model.safetensors"))

    sd = dict(full.state_dict())
    key = next(k for k in sd if k.endswith(".weight") and "stem" not in k)
    sd.pop(key)
    sd["extra.bias"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"(?s)bad\.pth.*missing keys \(1\).*unexpected keys \(1\): extra\.bias"):
        TimmBackbone(model=model, weights=str(tmp_path / "bad.pth"))
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="other.pth do not match"):
        TimmBackbone(model=model, weights=str(tmp_path / "other.pth"))


def test_timm_pretrained_offline_error_and_success(monkeypatch):
    real = timm.create_model
    fake = real("test_resnet", pretrained=False)

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise RuntimeError("Cannot reach the Hugging Face hub (LocalEntryNotFoundError): offline")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(
        WeightsError,
        match=r"'test_resnet'.*offline.*backbone\.weights=/path/to/test_resnet\.safetensors.*pretrained=false",
    ):
        TimmBackbone(model="test_resnet", pretrained=True)
    monkeypatch.setattr(
        timm,
        "create_model",
        lambda name, pretrained=False, **kw: fake if pretrained else real(name, pretrained=False, **kw),
    )
    bb = TimmBackbone(model="test_resnet", pretrained=True)
    assert torch.equal(bb.net.layer2[0].conv1.weight, fake.layer2[0].conv1.weight)


def test_backbone_weights_export_round_trip(tmp_path):
    from ttfnet_lightning.training.checkpoints import export_backbone_weights
    from ttfnet_lightning.training.lit_module import TTFNetModule

    for net in ({"backbone": "timm", "backbone_model": "test_resnet"}, {"backbone": "dla34"}):
        module = TTFNetModule(net=dict(net, deformable=False), data_info={"num_classes": 2, "input_size": [64, 64]})
        path = export_backbone_weights(module, tmp_path / f"{net['backbone']}.pth")
        again = TTFNet(
            num_classes=2, backbone=net["backbone"], backbone_model=net.get("backbone_model"), weights=str(path)
        )
        own = module.net.backbone.state_dict()
        assert all(torch.equal(own[k], v) for k, v in again.backbone.state_dict().items())


def test_configs_compose_and_build():
    cfg = compose("train", ["backbone=timm", "backbone.model=test_resnet", "backbone.frozen_stages=1"])
    net = NetConfig.from_config(cfg.backbone, cfg.model)
    assert net["backbone"] == "timm" and net["backbone_model"] == "test_resnet" and net["frozen_stages"] == 1
    model = TTFNet(num_classes=2, **net)
    assert isinstance(model.backbone, TimmBackbone) and model.backbone.out_channels == (32, 48, 192, 96)
    cfg = compose("train", ["backbone=dla34"])
    net = NetConfig.from_config(cfg.backbone, cfg.model)
    assert net["backbone"] == "dla34" and net["box_convs"] == 1 and net["backbone_model"] is None
    cfg = compose("train", ["backbone=timm"])  # without backbone.model
    with pytest.raises(ValueError, match=r"backbone=timm needs a timm model name: backbone\.model=<name>"):
        TTFNet(num_classes=2, **NetConfig.from_config(cfg.backbone, cfg.model))


def _bn_counts(module: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


@pytest.mark.parametrize("model,folded", [("test_byobnet", 0), ("test_resnet", 14)])
def test_inference_path_keeps_timm_outputs(model, folded):
    """test_byobnet: timm's BatchNormAct2d (BN + activation) is left alone, test_resnet: its plain
    conv1/bn1 pairs are folded; the neck's BNs are folded in both. BN statistics and affine
    parameters are random, so a wrong fold (or one that drops BatchNormAct2d's activation) shows in
    the outputs, which equal the network's as trained."""
    from ttfnet_lightning.core.inference import optimize_for_inference

    torch.manual_seed(0)
    net = TTFNet(num_classes=2, backbone="timm", backbone_model=model, frozen_stages=-1).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, ref_out = net.backbone(x), net(x)
    fast = optimize_for_inference(copy.deepcopy(net))
    before, after = _bn_counts(net.backbone), _bn_counts(fast.net.backbone)
    assert sum(before.values()) - sum(after.values()) == folded, (before, after)
    if model == "test_byobnet":
        assert after == before == {"BatchNormAct2d": 14}  # not folded: its activation would be lost
    assert _bn_counts(net.neck) == {"BatchNorm2d": 3} and _bn_counts(fast.net.neck) == {}
    with torch.no_grad():
        got, got_out = fast.net.backbone(x), fast(x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for a, b in zip(ref_out, got_out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_train_reload_and_export_with_timm_backbone(tmp_path):
    """A tiny training run with backbone=timm, its checkpoint reloaded without Hydra (no download)
    and exported: the ONNX model gives the reloaded model's detections."""
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from conftest import TINY_TRAIN
    from ttfnet_lightning.deploy.export import export_onnx
    from ttfnet_lightning.deploy.graph import DetectionExport, exportable_net
    from ttfnet_lightning.deploy.onnx_runtime import OnnxDetector, compare_detections
    from ttfnet_lightning.training.checkpoints import load_model
    from ttfnet_lightning.training.run import train

    out = tmp_path / "run"
    tiny = [
        *TINY_TRAIN,
        "schedule.max_epochs=1",
        "data.datamodule.num_train=8",
        "data.datamodule.num_val=4",
        "data.datamodule.batch_size=4",
    ]
    train(
        compose(
            "train",
            [*tiny, "backbone=timm", "backbone.model=test_resnet", "backbone.frozen_stages=1", f"output_dir={out}"],
        )
    )
    module = load_model(out / "checkpoints" / "last.ckpt")
    assert isinstance(module.net.backbone, TimmBackbone) and module.hparams.net["backbone_model"] == "test_resnet"
    export_onnx(module, tmp_path / "m.onnx", check=False)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = DetectionExport(exportable_net(module), input_size=(64, 64)).eval()(x)
    got = OnnxDetector(tmp_path / "m.onnx").run(x)
    c = compare_detections(ref, got)
    assert c["max_score_diff"] < 1e-5 and c["max_box_diff_px"] < 1e-3 and c["label_agreement"] == 1.0, c
