"""The released DLA-34 model (issue 25.4): CenterNet's DLA up-sampling as the neck (``model.neck=dla_up``), its
256-channel head and LR (``backbone=dla34``), the earlier trunk-into-TTFNet-neck variant (``backbone=dla34_ttfneck``),
and released DLA-34 TTFNet checkpoints converting onto it.

The released layout, from ZJULearning/ttfnet ``mmdet/models/backbones/dla.py`` (``DLASeg(base_name='dla34',
down_ratio=4, last_level=5)``) and ``configs/ttfnet/ttfnet_dla34_2x.py`` (``TTFHead(use_dla=True, head_conv=256,
wh_conv=64, hm_head_conv_num=2, wh_head_conv_num=1)``): ``backbone.base.*`` = the DLA-34 trunk (official names; its
depth-2 trees ``level3``/``level4`` also hold a ``project`` they never use), ``backbone.dla_up.ida_i`` and
``backbone.ida_up`` = IDAUp modules of ``proj_j``/``node_j`` = DeformConv (``conv`` = ModulatedDeformConvPack:
``weight``, ``bias``, ``conv_offset_mask``; ``actf.0`` = BN) and ``up_j`` = depthwise ConvTranspose2d (kernel 2f,
stride f, no bias). The reference forward below follows the released ``DLAUp``/``IDAUp``/``DLASeg`` forward passes
on the six-level list the trunk gives there (levels 0-5, ``startp`` = 2), with torchvision's deform_conv2d.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from conftest import compose
from ttfnet_lightning import load_model
from ttfnet_lightning.core.models import DLA34, DLAUpNeck, TTFNet
from ttfnet_lightning.core.models.dla_up import bilinear_up_weights
from ttfnet_lightning.core.models.ttfnet import NECKS
from ttfnet_lightning.deploy.convert import convert_checkpoint
from ttfnet_lightning.deploy.released import detect_backbone, released_hparams
from ttfnet_lightning.training.config_groups import module_groups

Shapes = dict[str, tuple[int, ...]]

# (IDAUp prefix, its width, [(input channels, up factor) of proj_1, proj_2, ...]) as DLAUp/DLASeg build them
_IDA = (
    ("dla_up.ida_0", 256, [(512, 2)]),
    ("dla_up.ida_1", 128, [(256, 2), (256, 2)]),
    ("dla_up.ida_2", 64, [(128, 2), (128, 2), (128, 2)]),
    ("ida_up", 64, [(128, 2), (256, 4)]),
)


def _node(shapes: Shapes, prefix: str, cin: int, cout: int) -> None:
    shapes[f"{prefix}.conv.weight"], shapes[f"{prefix}.conv.bias"] = (cout, cin, 3, 3), (cout,)
    shapes[f"{prefix}.conv.conv_offset_mask.weight"], shapes[f"{prefix}.conv.conv_offset_mask.bias"] = (
        (27, cin, 3, 3),
        (27,),
    )
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.actf.0.{p}"] = (cout,)
    shapes[f"{prefix}.actf.0.num_batches_tracked"] = ()


def dlaseg_ttfnet_layout() -> Shapes:
    """Keys and shapes of a released DLA-34 TTFNet state dict (``backbone.*`` = DLASeg, ``bbox_head.*``)."""
    trunk = {k: tuple(v.shape) for k, v in DLA34(frozen_stages=-1).state_dict().items()}
    for level, cin, c in (("level3", 64, 128), ("level4", 128, 256)):  # built, unused (see the module docstring)
        trunk[f"{level}.project.0.weight"] = (c, cin, 1, 1)
        for p in ("weight", "bias", "running_mean", "running_var"):
            trunk[f"{level}.project.1.{p}"] = (c,)
        trunk[f"{level}.project.1.num_batches_tracked"] = ()
    shapes = {f"backbone.base.{k}": v for k, v in trunk.items()}
    for prefix, width, steps in _IDA:
        for j, (cin, f) in enumerate(steps, 1):
            _node(shapes, f"backbone.{prefix}.proj_{j}", cin, width)
            shapes[f"backbone.{prefix}.up_{j}.weight"] = (width, 1, 2 * f, 2 * f)
            _node(shapes, f"backbone.{prefix}.node_{j}", width, width)
    for name, convs, mid, out in (("hm", 2, 256, 80), ("wh", 1, 64, 4)):
        for j in range(convs):
            shapes[f"bbox_head.{name}.{j}.conv.weight"] = (mid, 64 if j == 0 else mid, 3, 3)
            shapes[f"bbox_head.{name}.{j}.conv.bias"] = (mid,)
        shapes[f"bbox_head.{name}.{convs}.weight"], shapes[f"bbox_head.{name}.{convs}.bias"] = (out, mid, 1, 1), (out,)
    return shapes


def _random(shapes: Shapes, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=g) + 0.5
        else:  # offsets of a few tenths of a pixel, so the deformable sampling is exercised
            state[k] = torch.randn(s, generator=g) * (0.02 if "offset" in k else 0.1)
    return state


# ----------------------------------------------------------------------- the released forward, written out
def _ref_node(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    o1, o2, m = F.conv2d(
        x, sd[f"{p}.conv.conv_offset_mask.weight"], sd[f"{p}.conv.conv_offset_mask.bias"], padding=1
    ).chunk(3, 1)
    y = deform_conv2d(
        x, torch.cat((o1, o2), 1), sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=(1, 1), mask=m.sigmoid()
    )
    bn = [sd[f"{p}.actf.0.{n}"] for n in ("running_mean", "running_var", "weight", "bias")]
    return F.relu(F.batch_norm(y, *bn, training=False, eps=1e-5))


def _ref_ida(sd: dict[str, Tensor], p: str, layers: list, startp: int, endp: int) -> None:
    """Released ``IDAUp.forward(layers, startp, endp)``."""
    for i in range(startp + 1, endp):
        j = i - startp
        w = sd[f"{p}.up_{j}.weight"]
        f = w.shape[-1] // 2
        up = F.conv_transpose2d(
            _ref_node(sd, f"{p}.proj_{j}", layers[i]), w, stride=f, padding=f // 2, groups=w.shape[0]
        )
        layers[i] = _ref_node(sd, f"{p}.node_{j}", up + layers[i - 1])


def released_forward(sd: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """The released DLA-34 TTFNet in eval mode: DLASeg (trunk, DLAUp, IDAUp), then the TTFHead with use_dla."""
    trunk = DLA34(frozen_stages=-1).eval()
    base = {k[len("backbone.base.") :]: v for k, v in sd.items() if k.startswith("backbone.base.")}
    trunk.load_state_dict({k: v for k, v in base.items() if not k.startswith(DLA34.UNUSED_OFFICIAL_KEYS)})
    layers = [None, None, *trunk(x)]  # levels 0-5; DLAUp(startp=2) reads levels 2-5
    out = [layers[-1]]
    for i in range(len(layers) - 2 - 1):
        _ref_ida(sd, f"backbone.dla_up.ida_{i}", layers, len(layers) - i - 2, len(layers))
        out.insert(0, layers[-1])
    y = [out[i].clone() for i in range(5 - 2)]  # last_level - first_level
    _ref_ida(sd, "backbone.ida_up", y, 0, len(y))
    feat = y[-1]

    def branch(name: str, n: int) -> Tensor:
        h = feat
        for j in range(n):
            h = F.relu(
                F.conv2d(h, sd[f"bbox_head.{name}.{j}.conv.weight"], sd[f"bbox_head.{name}.{j}.conv.bias"], padding=1)
            )
        return F.conv2d(h, sd[f"bbox_head.{name}.{n}.weight"], sd[f"bbox_head.{name}.{n}.bias"])

    return branch("hm", 2), F.relu(branch("wh", 1)) * 16


# ------------------------------------------------------------------------------------------------ tests
def test_bilinear_up_weights_interpolate():
    up = nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1, groups=3, bias=False)
    bilinear_up_weights(up)
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(up.weight[2, 0], ramp[:, None] * ramp[None, :])
    up4 = nn.ConvTranspose2d(2, 2, 8, stride=4, padding=2, groups=2, bias=False)
    bilinear_up_weights(up4)
    with torch.no_grad():  # a constant map stays constant inside (the taps sum to 1 per output pixel)
        assert torch.allclose(up(torch.ones(1, 3, 5, 5))[..., 2:-2, 2:-2], torch.ones(1))
        assert torch.allclose(up4(torch.ones(1, 2, 5, 5))[..., 4:-4, 4:-4], torch.ones(1))
        ramp_in = torch.arange(6.0).expand(1, 3, 6, 6)  # a linear ramp up-samples to a linear ramp
        d = up(ramp_in)[0, 0, 3, 2:-2].diff()
        assert torch.allclose(d, torch.full_like(d, 0.5))


def test_neck_shapes_init_and_gradients():
    neck = DLAUpNeck(in_channels=(64, 128, 256, 512))
    feats = [torch.randn(2, c, 32 // s, 48 // s, requires_grad=True) for c, s in zip((64, 128, 256, 512), (1, 2, 4, 8))]
    out = neck(feats)
    assert out.shape == (2, 64, 32, 48) and neck.out_channels == 64
    out.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    no_grad = [n for n, p in neck.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == [n for n in no_grad if "offset_mask" in n]  # only the zero-initialised offsets may get 0
    node = neck.dla_up.ida_0.proj_1.conv  # released init: offsets 0, conv bias 0, weights uniform +-1/sqrt(9 cin)
    assert not node.offset_mask.weight.any() and not node.conv.bias.any()
    assert 0.9 < node.conv.weight.abs().max() * (512 * 9) ** 0.5 <= 1.0
    plain = DLAUpNeck(in_channels=(16, 32, 64, 128), deformable=False)  # any backbone's maps; plain 3x3 nodes
    assert plain([torch.randn(1, c, 16 // s, 16 // s) for c, s in zip((16, 32, 64, 128), (1, 2, 4, 8))]).shape == (
        1,
        16,
        16,
        16,
    )
    assert not any("offset_mask" in n for n, _ in plain.named_parameters())


def test_ttfnet_neck_choice_and_its_errors():
    net = TTFNet(num_classes=3, backbone="dla34", neck="dla_up", heatmap_channels=256, frozen_stages=-1)
    assert isinstance(net.neck, DLAUpNeck) and net.head.heatmap[0].out_channels == 256
    hm, wh = net.eval()(torch.randn(1, 3, 64, 64))
    assert hm.shape == (1, 3, 16, 16) and wh.shape == (1, 4, 16, 16)
    with pytest.raises(
        ValueError, match=r"neck='dla_up' takes its widths from the backbone.*shortcut_convs=\[0, 0, 0\]"
    ):
        TTFNet(num_classes=3, backbone="dla34", neck="dla_up", shortcut_convs=(0, 0, 0))
    with pytest.raises(ValueError, match="neck must be one of"):
        TTFNet(num_classes=3, neck="fpn")
    from ttfnet_lightning.training.config import NECKS as CONFIG_NECKS

    assert CONFIG_NECKS == NECKS


def test_backbone_configs_released_and_variant():
    released = compose("train", ["backbone=dla34"])
    assert (released.model.neck, released.model.heatmap_channels, released.model.box_channels) == ("dla_up", 256, 64)
    assert (released.backbone.box_convs, released.backbone.lr, released.backbone.reference_batch) == (1, 0.015, 96)
    assert released.backbone.frozen_stages == -1 and released.name.startswith("dla34-")
    variant = compose("train", ["backbone=dla34_ttfneck"])
    assert (variant.model.neck, variant.model.heatmap_channels, variant.backbone.lr) == ("ttfnet", 128, 0.016)
    assert variant.backbone.name == "dla34"
    centernet = compose("train", ["backbone=dla34", "method=centernet"])  # the method's own head width wins
    assert (centernet.model.neck, centernet.model.heatmap_channels) == ("dla_up", 64)
    assert compose("train", ["backbone=dla34", "model.heatmap_channels=96"]).model.heatmap_channels == 96
    with pytest.raises(ValueError, match="model.neck must be one of"):
        module_groups(OmegaConf.to_container(compose("train", ["model.neck=fpn"]), resolve=True))


@pytest.fixture(scope="module")
def released_dla(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dla")
    state = _random(dlaseg_ttfnet_layout(), seed=5)
    torch.save({"meta": {"mmdet_version": "1.0rc0+ttfnet"}, "state_dict": state, "optimizer": {}}, folder / "dla.pth")
    record = convert_checkpoint(folder / "dla.pth", folder / "dla.ckpt")
    return state, record, folder / "dla.ckpt"


def test_released_dla_checkpoint_converts_and_equals_the_released_forward(released_dla):
    state, record, out = released_dla
    assert detect_backbone(state) == "dla34" and record["backbone"] == "dla34"
    unused = {k for k in state if k.startswith(("backbone.base.level3.project.", "backbone.base.level4.project."))}
    assert record["dropped"][:2] == ["meta", "optimizer"] and set(record["dropped"][2:]) == unused and len(unused) == 12
    model = load_model(out)
    net_h = model.hparams.net
    assert (net_h["neck"], net_h["heatmap_channels"], net_h["box_channels"], net_h["box_convs"]) == (
        "dla_up",
        256,
        64,
        1,
    )
    optim = model.hparams.optim
    assert net_h["frozen_stages"] == -1 and (optim["lr"], optim["reference_batch"]) == (0.015, 96)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hm, wh = model.net.eval()(x)
        hm_ref, wh_ref = released_forward(state, x)
    torch.testing.assert_close(hm, hm_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wh, wh_ref, rtol=1e-4, atol=1e-3)
    assert wh.abs().sum() > 0 and hm.std() > 0.1


def test_released_dla_hparams_read_from_the_shapes():
    shapes = dlaseg_ttfnet_layout()
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    net = released_hparams(meta, "dla34")["net"]
    assert net["neck"] == "dla_up" and net["deformable"] and "shortcut_convs" not in net
    plain = {k: v for k, v in meta.items() if "conv_offset_mask" not in k}
    assert released_hparams(plain, "dla34")["net"]["deformable"] is False
