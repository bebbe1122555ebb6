"""The released TTFNet's checkpoints (ZJULearning/ttfnet, mmdetection 1.x): reading them safely, the
architecture their shapes describe, and the rename of their keys onto this library's ``TTFNet``.

A released checkpoint is an mmdetection checkpoint (``{"state_dict": ..., "meta": ..., "optimizer": ...}``) or a
bare state dict of the ``TTFNet`` detector: ``backbone.*`` (torchvision-style ResNet-18/34 names, or the released
DarknetV3's ``stem.conv``, ``layerN.M.body.K.conv``, or the DLA-34 models' ``DLASeg``: ``base.*`` (the trunk,
official DLA names) and ``dla_up.ida_i.*`` / ``ida_up.*`` (its up-sampling: ``proj_j``/``node_j`` = deformable
conv + ``actf`` BN, ``up_j`` transposed convs)) and ``bbox_head.*`` (the TTFHead: ``deconv_layers.i`` =
modulated deformable conv (``conv_offset_mask``) + BN, ``shortcut_layers.i.layers`` (none in DLA-34 models),
``hm`` and ``wh`` = ConvModules + a 1x1 conv). The mapping is a rename (:func:`target_key`); shapes are equal.
:func:`convert_state` is strict: every key of the file is mapped or knowingly dropped (the unused ``shortcut``
conv an early release built in each ``ShortcutConv2d``, the unused ``project`` of DLA's depth-2 trees), every
tensor of the model is filled (a BN's ``num_batches_tracked`` the file lacks is 0) and every shape is checked;
anything else raises :class:`ConvertError` naming the file, the first offending keys and what the file looks like.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.core.models import DLA34, TTFNet
from ttfnet_lightning.core.models.backbones import is_released_darknet, released_darknet_key

__all__ = [
    "COCO_CLASSES",
    "COCO_CATEGORY_IDS",
    "RELEASED_INPUT_SIZE",
    "ConvertError",
    "read_released",
    "detect_backbone",
    "released_hparams",
    "target_key",
    "convert_state",
]

# COCO 2017 detection: the 80 category names and ids (1..90 with gaps), in id order = label order
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))  # 10 unused
RELEASED_INPUT_SIZE = (512, 512)  # the released configs' img_scale (resize_keep_ratio=False)
_MMDET_TOP = ("meta", "optimizer")  # an mmdetection checkpoint's entries besides state_dict, dropped
_RESNET_BLOCKS = {2: "r18", 6: "r34"}  # blocks of layer3 -> the ResNet


class ConvertError(ValueError):
    """A file that is not a released TTFNet checkpoint, or does not map onto the model (the message names
    the file, the first offending keys and what the file looks like)."""


def _describe(state: Mapping[str, Any]) -> str:
    groups: dict[str, int] = {}
    for k in state:
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    first = ", ".join(list(state)[:4])
    return f"{len(state)} entries; {', '.join(f'{g}.* ({n})' for g, n in groups.items())}; first keys: {first}"


def _first(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:  # random bytes, a truncated file
            raise ConvertError(f"{path} is not a readable PyTorch file (truncated or corrupted?)") from exc
        raise ConvertError(
            f"{path} holds Python objects other than tensors and plain values ({found.group(1)}), which are never "
            "loaded (unpickling them can run code). Where the file loads, save its weights alone: "
            "torch.save({'state_dict': ckpt['state_dict']}, 'w.pth')"
        ) from exc
    except Exception as exc:  # truncated or random bytes fail in many ways
        raise ConvertError(
            f"{path} ({path.stat().st_size} bytes) is not a readable PyTorch file (truncated or corrupted?): "
            f"{type(exc).__name__}"
        ) from exc


def _not_ttfnet_hint(state: Mapping[str, Tensor]) -> str:
    if is_released_darknet(state):
        return " It looks like DarkNet-53 ImageNet weights: train with backbone=d53 backbone.weights=FILE."
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return " It looks like ResNet ImageNet weights: train with backbone=r18|r34 backbone.weights=FILE."
    return ""


def _check_classes(meta: Mapping[str, Any], source: Path) -> None:
    """mmdetection's ``meta["CLASSES"]`` (names with ``_``), when stored, must be COCO's, in order."""
    names = meta.get("CLASSES")
    if names is None:
        return
    names = [str(n).replace("_", " ") for n in names]
    if names != list(COCO_CLASSES):
        diff = [f"{i}: {a!r} vs COCO {b!r}" for i, (a, b) in enumerate(zip(names, COCO_CLASSES)) if a != b]
        raise ConvertError(
            f"{source}: its meta CLASSES are {len(names)} names, not COCO's 80 in order"
            + (f" ({_first(diff, 3)})" if diff else "")
            + "; this converter writes COCO checkpoints"
        )


def read_released(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """The state dict of a released TTFNet checkpoint (an mmdetection checkpoint or a bare state dict;
    a DataParallel ``module.`` prefix is removed), its mmdetection ``meta`` (``{}`` if none; its ``CLASSES``,
    when stored, must be COCO's) and the top-level entries dropped. Raises FileNotFoundError or
    :class:`ConvertError` (not a readable or safe file, not a TTFNet detector, other classes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released checkpoint not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    obj = _load(path)
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a state dict or an mmdetection checkpoint")
    if "pytorch-lightning_version" in obj:
        raise ConvertError(
            f"{path} is a Lightning checkpoint already (keys {_first(list(obj), 5)}): no conversion is needed "
            "for a ttfnet-lightning checkpoint; give evaluate/predict/export it as it is"
        )
    meta: dict[str, Any] = {}
    dropped: list[str] = []
    if isinstance(obj.get("state_dict"), Mapping):
        other = sorted(str(k) for k in obj if k != "state_dict" and k not in _MMDET_TOP)
        if other:
            raise ConvertError(
                f"{path}: an mmdetection checkpoint holds state_dict, meta and optimizer, this one also {other}; "
                f"the file: {_describe(obj)}"
            )
        meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
        dropped = [k for k in _MMDET_TOP if k in obj]
        obj = obj["state_dict"]
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConvertError(
            f"{path} is neither a state dict nor an mmdetection checkpoint: {_first(bad, 5)} are not tensors; "
            f"the file: {_describe(obj)}"
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not any(k.startswith("bbox_head.hm.") for k in state):
        raise ConvertError(
            f"{path} is not a released TTFNet checkpoint: no bbox_head.hm.* (the heatmap head); "
            f"the file: {_describe(state)}.{_not_ttfnet_hint(state)}"
        )
    _check_classes(meta, path)
    return state, meta, dropped


def detect_backbone(state: Mapping[str, Tensor], *, source: str | Path = "the file") -> str:
    """``"r18"``, ``"r34"``, ``"d53"`` or ``"dla34"`` (the released ``DLASeg``: ``backbone.base.*``) from the
    ``backbone.*`` keys of a released TTFNet state dict. Raises :class:`ConvertError` for any other backbone."""
    if "backbone.stem.conv.weight" in state:
        return "d53"
    if "backbone.layer1.0.conv1.weight" in state:
        if "backbone.layer1.0.conv3.weight" in state:
            raise ConvertError(f"{source}: a bottleneck ResNet (50 or deeper) backbone; r18, r34 and d53 convert")
        blocks = len({k.split(".")[2] for k in state if k.startswith("backbone.layer3.")})
        if blocks in _RESNET_BLOCKS:
            return _RESNET_BLOCKS[blocks]
        raise ConvertError(f"{source}: a ResNet with {blocks} blocks in layer3 (2: ResNet-18, 6: ResNet-34)")
    if "backbone.base.base_layer.0.weight" in state:
        return "dla34"
    raise ConvertError(
        f"{source}: backbone not recognised (r18, r34, d53, dla34 convert); the file: {_describe(state)}"
    )


def _branch(state: Mapping[str, Tensor], name: str, source: str | Path) -> tuple[int, int | None, int]:
    """(3x3 convs, their channels, output channels) of the released head branch ``bbox_head.<name>``."""
    convs = sorted(int(m[1]) for k in state if (m := re.fullmatch(rf"bbox_head\.{name}\.(\d+)\.conv\.weight", k)))
    n = len(convs)
    last = state.get(f"bbox_head.{name}.{n}.weight")
    if convs != list(range(n)) or last is None:
        raise ConvertError(
            f"{source}: bbox_head.{name} is not the released head branch ({n} ConvModules "
            f"bbox_head.{name}.i.conv, then the 1x1 conv bbox_head.{name}.{n}.weight); its keys: "
            + _first(sorted(k for k in state if k.startswith(f"bbox_head.{name}.")))
        )
    return n, (int(state[f"bbox_head.{name}.0.conv.weight"].shape[0]) if n else None), int(last.shape[0])


def released_hparams(
    state: Mapping[str, Tensor],
    backbone: str,
    *,
    source: str | Path = "the file",
    frozen_stages: int = 1,
    batch_size: int | None = 16,
    wh_scale: float = 16.0,
) -> dict[str, dict[str, Any]]:
    """The module's argument groups for a released TTFNet state dict: the head's sizes read from its shapes,
    COCO's classes, the released kernel and loss (the defaults), the backbone's LR from ``conf/backbone``,
    ``decode.box_convention="released"``. ``wh_scale`` (the configs' ``wh_offset_base``) is not in the
    weights: 16 in every released config."""
    n_hm, hm_channels, num_classes = _branch(state, "hm", source)
    n_wh, wh_channels, wh_out = _branch(state, "wh", source)
    if num_classes != len(COCO_CLASSES):
        raise ConvertError(
            f"{source}: the heatmap has {num_classes} classes (bbox_head.hm.{n_hm}.weight); the released "
            f"TTFNet models are COCO's {len(COCO_CLASSES)}, which this converter writes"
        )
    if wh_out not in (4, 4 * num_classes):
        raise ConvertError(f"{source}: bbox_head.wh.{n_wh}.weight has {wh_out} outputs, expected 4 or 4 x classes")
    cfg = OmegaConf.load(conf_dir() / "backbone" / f"{backbone}.yaml")
    net = {
        "backbone": backbone,
        "frozen_stages": frozen_stages,
        **(_dla_neck(state) if backbone == "dla34" else _ttf_neck(state, source)),
        "heatmap_convs": n_hm,
        "box_convs": n_wh,
        "wh_scale": float(wh_scale),
        **({"heatmap_channels": hm_channels} if hm_channels else {}),
        **({"box_channels": wh_channels} if wh_channels else {}),
    }
    return {
        "net": net,
        "kernel": {"class_aware": wh_out != 4},
        "loss": {},
        "optim": {"lr": float(cfg.lr), "reference_batch": int(cfg.reference_batch)},
        "decode": {"box_convention": "released"},
        "data_info": {
            "num_classes": num_classes,
            "class_names": list(COCO_CLASSES),
            "input_size": list(RELEASED_INPUT_SIZE),
            "label_to_cat_id": list(COCO_CATEGORY_IDS),
            "batch_size": batch_size,
        },
    }


def _ttf_neck(state: Mapping[str, Tensor], source: str | Path) -> dict[str, Any]:
    """The TTFNet neck's sizes from the released ``bbox_head.deconv_layers`` and ``shortcut_layers``."""
    ups = sorted(int(m[1]) for k in state if (m := re.fullmatch(r"bbox_head\.deconv_layers\.(\d+)\.0\.weight", k)))
    if ups != [0, 1, 2]:
        raise ConvertError(
            f"{source}: {len(ups)} up-sampling stages (bbox_head.deconv_layers.i.0.weight); the TTFNet neck has 3"
        )
    shortcuts = [
        len({k for k in state if re.fullmatch(rf"bbox_head\.shortcut_layers\.{i}\.layers\.\d+\.weight", k)})
        for i in range(3)
    ]
    return {
        "neck": "ttfnet",
        "neck_channels": [int(state[f"bbox_head.deconv_layers.{i}.0.weight"].shape[0]) for i in range(3)],
        "shortcut_convs": shortcuts[::-1],  # released order: from the stride-16 map; here from stride 4
    }


def _dla_neck(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The released DLA-34 model's neck: ``DLASeg``'s DLA up-sampling, deformable unless its nodes are plain."""
    return {"neck": "dla_up", "deformable": "backbone.ida_up.node_1.conv.conv_offset_mask.weight" in state}


_DROP = "<dropped>"
_DLA_NODE = r"backbone\.(dla_up\.ida_\d|ida_up)\.((?:proj|node)_\d)"
# a released DLASeg key (DLA-34 models) -> this library's TTFNet key (its trunk: backbone.base.* -> backbone.*)
_DLA_RULES = tuple(
    (re.compile(src), dst)
    for src, dst in (
        # the projections DLA34.UNUSED_OFFICIAL_KEYS names: built, never used by depth-2 trees (dla.py)
        *((rf"backbone\.base\.{re.escape(prefix)}\S+", _DROP) for prefix in DLA34.UNUSED_OFFICIAL_KEYS),
        (r"backbone\.base\.(\S+)", r"backbone.\1"),
        (rf"{_DLA_NODE}\.conv\.(weight|bias)", r"neck.\1.\2.conv.conv.\3"),
        (rf"{_DLA_NODE}\.conv\.conv_offset_mask\.(weight|bias)", r"neck.\1.\2.conv.offset_mask.\3"),
        (rf"{_DLA_NODE}\.actf\.0\.(\w+)", r"neck.\1.\2.actf.0.\3"),
        (r"backbone\.(dla_up\.ida_\d|ida_up)\.(up_\d)\.weight", r"neck.\1.\2.weight"),
    )
)
# a released TTFHead key -> this library's TTFNet key (hm and wh: _head_key)
_HEAD_RULES = tuple(
    (re.compile(rf"bbox_head\.{src}"), dst)
    for src, dst in (
        (r"deconv_layers\.([0-2])\.0\.(weight|bias)", r"neck.upsample.\1.0.conv.\2"),
        (r"deconv_layers\.([0-2])\.0\.conv_offset_mask\.(weight|bias)", r"neck.upsample.\1.0.offset_mask.\2"),
        (r"deconv_layers\.([0-2])\.1\.(\w+)", r"neck.upsample.\1.1.\2"),
        (r"shortcut_layers\.([0-2])\.layers\.(\d+)\.(weight|bias)", r"neck.shortcuts.\1.\2.\3"),
        # ShortcutConv2d of an early release built a 3x3 conv `shortcut` its forward never used
        (r"shortcut_layers\.[0-2]\.shortcut\.(weight|bias)", _DROP),
    )
)


def _head_key(key: str, n_convs: dict[str, int]) -> str | None:
    """``bbox_head.{hm,wh}.i.conv.P`` (ConvModule i < n) and ``bbox_head.{hm,wh}.n.P`` (the 1x1 conv) ->
    ``head.{heatmap,box}.{2i}.P`` (here ReLUs sit between the convs of one nn.Sequential)."""
    m = re.fullmatch(r"bbox_head\.(hm|wh)\.(\d+)\.(conv\.)?(weight|bias)", key)
    if m is None:
        return None
    i, n = int(m[2]), n_convs[m[1]]
    if (i < n) != bool(m[3]) or i > n:
        return None
    return f"head.{'heatmap' if m[1] == 'hm' else 'box'}.{2 * i}.{m[4]}"


def target_key(key: str, backbone: str, n_convs: dict[str, int]) -> str | None:
    """This library's ``TTFNet`` key for a key of the released detector (``_DROP`` for one knowingly
    dropped, None for one that has no place). ``n_convs``: the 3x3 convs of the ``hm`` and ``wh`` branches."""
    if backbone == "dla34" and key.startswith("backbone."):
        return _by_rules(key, _DLA_RULES)
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        if backbone == "d53":
            rest = released_darknet_key(rest)
        return None if rest is None else f"backbone.{rest}"
    return _by_rules(key, _HEAD_RULES) or _head_key(key, n_convs)


def _by_rules(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    """The first rule whose pattern matches the whole key: its target (``_DROP``, or the key rewritten); None."""
    for pattern, target in rules:
        if pattern.fullmatch(key):
            return target if target == _DROP else pattern.sub(target, key)
    return None


def convert_state(
    state: Mapping[str, Tensor], net: TTFNet, backbone: str, *, source: str | Path = "the file"
) -> dict[str, list[str]]:
    """Load the released ``state`` into ``net`` (built by :func:`released_hparams`' ``net`` group), strictly
    (see the module docstring); returns the keys ``dropped`` and the ``filled`` ones (``num_batches_tracked``
    the file lacks, set to 0)."""
    own = net.state_dict()
    head = net.head
    n_convs = {"hm": (len(head.heatmap) - 1) // 2, "wh": (len(head.box) - 1) // 2}  # conv, ReLU, ..., 1x1 conv
    out: dict[str, Tensor] = {}
    dropped, unmapped, twice = [], [], []
    for key, value in state.items():
        dst = target_key(key, backbone, n_convs)
        if dst == _DROP:
            dropped.append(key)
        elif dst is None or dst not in own:
            unmapped.append(key)
        elif dst in out:
            twice.append(f"{key} -> {dst}")
        else:
            out[dst] = value
    where = f"{source} (released TTFNet, backbone {backbone})"
    if unmapped or twice:
        raise ConvertError(
            f"{where}: {len(unmapped)} key(s) have no place in the model: {_first(unmapped)}"
            + (f"; mapped twice: {_first(twice)}" if twice else "")
            + f"\n  the file: {_describe(state)}"
        )
    filled = [k for k in own if k not in out and k.endswith("num_batches_tracked")]
    out.update({k: torch.zeros_like(own[k]) for k in filled})
    missing = [f"{k} {tuple(own[k].shape)}" for k in own if k not in out]
    if missing:
        raise ConvertError(f"{where}: the file has nothing for {len(missing)} tensor(s): {_first(missing)}")
    shapes = [
        f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in out.items() if v.shape != own[k].shape
    ]
    if shapes:
        raise ConvertError(f"{where}: {len(shapes)} shape mismatch(es): {_first(shapes, 5)}")
    net.load_state_dict(out, strict=True)
    return {"dropped": dropped, "filled": filled}
