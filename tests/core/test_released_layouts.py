"""The released code's key layouts (ZJULearning/ttfnet, mmdetection 1.x), written out as its modules name and
shape them, and what this library does with them: the official DarkNet-53 ImageNet file loads into
``DarkNet53`` (renamed by key layout), and the released box convention of the decoder.

Layouts, from the released sources:

* ``mmdet/models/backbones/darknet.py`` ``DarknetV3(layers=[1, 2, 8, 8, 4], inplanes=[3, 32, 64, 128, 256, 512],
  planes=[32, 64, 128, 256, 512, 1024])``: ``stem`` and each cell are ``common_conv2d`` = Sequential(OrderedDict
  ``conv`` (no bias), ``bn`` (mmdet's ``build_norm_layer`` name), ``leakyrelu``); ``layerN`` = Sequential(the
  stride-2 cell, ``DarknetBasicBlockV3`` x layers[N-1]) whose ``body`` = (1x1 cell C -> C/2, 3x3 cell C/2 -> C);
  the ImageNet model (``out_indices=None``) adds ``output`` = Linear(1024, classes).
* mmdetection 1.x ``ResNet`` (style pytorch, BasicBlock): torchvision's names (``conv1``, ``bn1``, ``layerN.j.conv1``,
  ``bn1``, ``conv2``, ``bn2``, ``downsample.0/1``), no ``fc``.
* ``mmdet/models/anchor_heads/ttf_head.py`` ``TTFHead``: ``deconv_layers.i`` = Sequential(ModulatedDeformConvPack
  (``weight``, ``bias``, ``conv_offset_mask`` 3x3 conv to 27), BN, ReLU, UpsamplingBilinear2d);
  ``shortcut_layers.i`` = ShortcutConv2d(``layers`` = Sequential(conv, ReLU, conv, ...)) from the stride-16, 8, 4
  maps with ``shortcut_cfg`` (1, 2, 3) convs (an early release also built an unused 3x3 conv ``shortcut``);
  ``wh`` and ``hm`` = ConvModule (``conv``, with bias: no norm) x n + a 1x1 Conv2d; ``hm`` has num_classes - 1 = 80
  outputs, ``wh`` 4 (``wh_agnostic``) or 4 x 80.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ttfnet_lightning.core.decode import BOX_CONVENTIONS, decode_detections
from ttfnet_lightning.core.models import DarkNet53, WeightsError
from ttfnet_lightning.core.models.backbones import from_released_darknet
from ttfnet_lightning.training.config import DecodeConfig

Shapes = dict[str, tuple[int, ...]]


def _cell(shapes: Shapes, prefix: str, cin: int, cout: int, k: int, *, norm: str = "bn") -> None:
    """A conv (no bias) + BN, as common_conv2d and mmdet's ResNet blocks have them."""
    shapes[f"{prefix}.conv.weight" if norm == "bn" else f"{prefix}.weight"] = (cout, cin, k, k)
    bn = f"{prefix}.bn" if norm == "bn" else norm
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{bn}.{p}"] = (cout,)
    shapes[f"{bn}.num_batches_tracked"] = ()


def darknet_layout(*, classifier: bool) -> Shapes:
    """Keys and shapes of the released ``DarknetV3`` state dict (``classifier``: the ImageNet model's ``output``)."""
    shapes: Shapes = {}
    _cell(shapes, "stem", 3, 32, 3)
    for n, (blocks, cin, c) in enumerate(zip((1, 2, 8, 8, 4), (32, 64, 128, 256, 512), (64, 128, 256, 512, 1024)), 1):
        _cell(shapes, f"layer{n}.0", cin, c, 3)
        for m in range(1, blocks + 1):
            _cell(shapes, f"layer{n}.{m}.body.0", c, c // 2, 1)
            _cell(shapes, f"layer{n}.{m}.body.1", c // 2, c, 3)
    if classifier:
        shapes["output.weight"], shapes["output.bias"] = (1000, 1024), (1000,)
    return shapes


def resnet_layout(depth: int) -> Shapes:
    """Keys and shapes of mmdetection 1.x ``ResNet(depth)`` (BasicBlock, ``out_indices=(0, 1, 2, 3)``)."""
    shapes: Shapes = {}
    _cell(shapes, "conv1", 3, 64, 7, norm="bn1")
    cin = 64
    for n, (blocks, c) in enumerate(zip({18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth], (64, 128, 256, 512)), 1):
        for j in range(blocks):
            p = f"layer{n}.{j}"
            _cell(shapes, f"{p}.conv1", cin if j == 0 else c, c, 3, norm=f"{p}.bn1")
            _cell(shapes, f"{p}.conv2", c, c, 3, norm=f"{p}.bn2")
            if j == 0 and cin != c:
                _cell(shapes, f"{p}.downsample.0", cin, c, 1, norm=f"{p}.downsample.1")
        cin = c
    return shapes


def ttf_head_layout(
    inplanes: tuple[int, ...], *, wh_convs: int, wh_agnostic: bool = True, early_shortcut: bool = False
) -> Shapes:
    """Keys and shapes of the released ``TTFHead`` (planes (256, 128, 64), head_conv 128, wh_conv 64,
    hm_head_conv_num 2, shortcut_cfg (1, 2, 3), num_classes 81)."""
    planes, shapes, cin = (256, 128, 64), {}, inplanes[-1]
    for i, c in enumerate(planes):
        shapes[f"deconv_layers.{i}.0.weight"], shapes[f"deconv_layers.{i}.0.bias"] = (c, cin, 3, 3), (c,)
        shapes[f"deconv_layers.{i}.0.conv_offset_mask.weight"] = (27, cin, 3, 3)
        shapes[f"deconv_layers.{i}.0.conv_offset_mask.bias"] = (27,)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"deconv_layers.{i}.1.{p}"] = (c,)
        shapes[f"deconv_layers.{i}.1.num_batches_tracked"] = ()
        cin = c
    for i, (inp, c, n) in enumerate(zip(inplanes[:-1][::-1], planes, (1, 2, 3))):
        for k in range(n):
            shapes[f"shortcut_layers.{i}.layers.{2 * k}.weight"] = (c, inp if k == 0 else c, 3, 3)
            shapes[f"shortcut_layers.{i}.layers.{2 * k}.bias"] = (c,)
        if early_shortcut:
            shapes[f"shortcut_layers.{i}.shortcut.weight"], shapes[f"shortcut_layers.{i}.shortcut.bias"] = (
                (c, inp, 3, 3),
                (c,),
            )
    for name, n, mid, out in (("wh", wh_convs, 64, 4 if wh_agnostic else 320), ("hm", 2, 128, 80)):
        for j in range(n):
            shapes[f"{name}.{j}.conv.weight"], shapes[f"{name}.{j}.conv.bias"] = (
                (mid, 64 if j == 0 else mid, 3, 3),
                (mid,),
            )
        shapes[f"{name}.{n}.weight"], shapes[f"{name}.{n}.bias"] = (out, mid if n else 64, 1, 1), (out,)
    return shapes


RELEASED = {  # the released configs (configs/ttfnet/ttfnet_{r18,r34,d53}_*.py)
    "r18": (lambda: resnet_layout(18), (64, 128, 256, 512), 1),
    "r34": (lambda: resnet_layout(34), (64, 128, 256, 512), 2),
    "d53": (lambda: darknet_layout(classifier=False), (128, 256, 512, 1024), 2),
}


def ttfnet_layout(backbone: str, **head: bool) -> Shapes:
    """Keys and shapes of the released ``TTFNet`` detector's state dict (``backbone.*``, ``bbox_head.*``)."""
    layout, inplanes, wh_convs = RELEASED[backbone]
    return {f"backbone.{k}": v for k, v in layout().items()} | {
        f"bbox_head.{k}": v for k, v in ttf_head_layout(inplanes, wh_convs=wh_convs, **head).items()
    }


def random_state(shapes: Shapes, seed: int = 0) -> dict[str, Tensor]:
    """Tensors of these shapes: BN variances positive, counters int64, the rest small normal values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000 + len(state), dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


# ----------------------------------------------------------------------------------- the layouts themselves
def test_layouts_have_the_released_names_and_sizes():
    d = darknet_layout(classifier=True)
    assert sum(k.endswith("conv.weight") for k in d) + 1 == 53  # DarkNet-53: 52 convs + the classifier
    assert d["stem.conv.weight"] == (32, 3, 3, 3) and d["layer1.0.conv.weight"] == (64, 32, 3, 3)
    assert d["layer1.1.body.0.conv.weight"] == (32, 64, 1, 1) and d["layer5.4.body.1.conv.weight"] == (1024, 512, 3, 3)
    assert d["layer3.8.body.1.bn.running_var"] == (256,) and "layer3.9.body.0.conv.weight" not in d
    assert sum(t.numel() for t in random_state(d).values() if t.dim()) == pytest.approx(41.6e6, rel=0.01)
    r18, r34 = resnet_layout(18), resnet_layout(34)
    assert r18["layer2.0.downsample.0.weight"] == (128, 64, 1, 1) and "layer1.0.downsample.0.weight" not in r18
    assert "layer3.5.conv2.weight" in r34 and "layer3.2.conv1.weight" not in r18
    head = ttf_head_layout((64, 128, 256, 512), wh_convs=1)
    assert head["deconv_layers.0.0.conv_offset_mask.weight"] == (27, 512, 3, 3)
    assert head["shortcut_layers.0.layers.0.weight"] == (256, 256, 3, 3)  # 1 conv from the stride-16 map
    assert (
        head["shortcut_layers.2.layers.4.weight"] == (64, 64, 3, 3)
        and head["shortcut_layers.2.layers.0.weight"][1] == 64
    )
    assert head["hm.2.weight"] == (80, 128, 1, 1) and head["wh.1.weight"] == (4, 64, 1, 1)


# ------------------------------------------------------------------------------- official DarkNet-53 file
def _by_hand(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The released DarknetV3 keys under DarkNet53's names, written out rule by rule for this test."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "output":
            continue
        cell = {"conv": "0", "bn": "1"}
        if parts[0] == "stem":
            out[f"stem.{cell[parts[1]]}.{parts[2]}"] = v
        elif parts[2] == "body":  # layerN.M.body.K.{conv,bn}.P
            n, m, kk = int(parts[0][5:]), parts[1], int(parts[3])
            out[f"stages.{n - 1}.{m}.conv{kk + 1}.{cell[parts[4]]}.{parts[5]}"] = v
        else:  # layerN.0.{conv,bn}.P
            out[f"stages.{int(parts[0][5:]) - 1}.0.{cell[parts[2]]}.{parts[3]}"] = v
    return out


@pytest.fixture(scope="module")
def official_darknet(tmp_path_factory):
    state = random_state(darknet_layout(classifier=True), seed=1)
    path = tmp_path_factory.mktemp("d53") / "darknet53.pth"
    torch.save(state, path)
    return path, state


def test_official_darknet_imagenet_file_loads(official_darknet):
    path, state = official_darknet
    net = DarkNet53(weights=str(path), frozen_stages=-1).eval()
    expected = _by_hand(state)
    got = net.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)
    # num_batches_tracked absent (an older save): filled with 0
    bare = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert from_released_darknet(bare)["stem.1.num_batches_tracked"].item() == 0
    torch.save(bare, path.parent / "bare.pth")
    DarkNet53(weights=str(path.parent / "bare.pth"))


def test_official_darknet_errors_name_the_keys(official_darknet, tmp_path):
    path, state = official_darknet
    missing = {k: v for k, v in state.items() if k != "layer4.3.body.1.conv.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): stages\.3\.3\.conv2\.0\.weight(.|\n)*released"):
        DarkNet53(weights=str(tmp_path / "missing.pth"))
    wrong = dict(state, **{"layer2.0.conv.weight": torch.zeros(128, 64, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(
        WeightsError, match=r"stages\.1\.0\.0\.weight: file \(128, 64, 1, 1\) vs model \(128, 64, 3, 3\)"
    ):
        DarkNet53(weights=str(tmp_path / "wrong.pth"))
    extra = dict(state, **{"layer6.0.conv.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): layer6\.0\.conv\.weight"):
        DarkNet53(weights=str(tmp_path / "extra.pth"))


# ----------------------------------------------------------------------------------------- box convention
def test_released_box_convention_against_the_formula():
    """One peak at cell (3, 5) of an 8 x 8 map (input 32 x 32, stride 4: x = 20, y = 12) with distances l, t, r, b:
    continuous: (x - l, y - t, x + r, y + b) clamped to [0, W]; released: clamped to [0, W - 1], then rescaled,
    then x2 + 1, y2 + 1 (the released COCO width x2 - x1 + 1)."""
    logits = torch.full((1, 1, 8, 8), -10.0)
    logits[0, 0, 3, 5] = 4.0
    wh = torch.zeros(1, 4, 8, 8)
    wh[0, :, 3, 5] = torch.tensor([6.5, 20.0, 15.0, 3.0])  # x1 = 13.5, y1 = -8 -> 0, x2 = 35 -> clamped, y2 = 15
    sizes = [(64, 96)]  # original h, w: x scale 3, y scale 2
    cont = decode_detections(logits, wh, input_size=(32, 32), orig_sizes=sizes)[0]["boxes"][0]
    rel = decode_detections(logits, wh, input_size=(32, 32), orig_sizes=sizes, box_convention="released")[0]
    assert cont.tolist() == [13.5 * 3, 0.0, 32.0 * 3, 15.0 * 2]
    assert rel["boxes"][0].tolist() == [13.5 * 3, 0.0, 31.0 * 3 + 1, 15.0 * 2 + 1]
    unscaled = decode_detections(logits, wh, input_size=(32, 32), box_convention="released")[0]["boxes"][0]
    assert unscaled.tolist() == [13.5, 0.0, 32.0, 16.0]
    with pytest.raises(ValueError, match="box_convention must be one of"):
        decode_detections(logits, wh, input_size=(32, 32), box_convention="mmdet")


def test_decode_config_knows_the_conventions():
    assert DecodeConfig().box_convention == BOX_CONVENTIONS[0] == "continuous"
    for name in BOX_CONVENTIONS:
        assert DecodeConfig(box_convention=name).box_convention == name
    with pytest.raises(ValueError, match="model.box_convention"):
        DecodeConfig(box_convention="plus_one")
