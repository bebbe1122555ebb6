"""The typed config schema: one dataclass per group of settings, the single source of their names,
types and defaults.

The same dataclasses serve three purposes:

* **Hydra schema.** :class:`TrainConfig` is registered in Hydra's ConfigStore as ``train_schema``
  and is the first entry of ``conf/train.yaml``'s defaults list, so every YAML file and command-line
  override merges into typed nodes: an unknown key (``model.neck_channel=...``) or a value of the
  wrong type (``kernel.beta=abc``) is rejected while Hydra composes, naming the key.
* **Module arguments.** :class:`~ttfnet_lightning.training.lit_module.TTFNetModule` takes one plain dict per
  group (``net``, ``kernel``, ``loss``, ``optim``, ``decode``, ``data_info``), checked against
  these dataclasses and stored as plain dicts in the checkpoint (``load_from_checkpoint`` needs no
  Hydra); ``TTFNet(**net)`` builds the network.
* **Documentation** of every setting, below.

**torchvision's detectors** (``model.method`` one of :data:`PEERS`, chosen with the group ``method=fcos``
etc.: ``conf/method/*.yaml``) are trained by :class:`~ttfnet_lightning.training.peer_module.PeerDetectorModule`
from the groups ``peer`` (:class:`PeerNetConfig`: the detector's name from ``model.method`` and the user node
``peer``, :class:`PeerConfig`), ``optim`` (the ``schedule``, as TTFNet's), ``decode`` (``model.topk`` and
``model.score_threshold``) and ``data_info`` (:func:`peer_groups`). Of the other nodes they use the data, the
schedule, the trainer and the callbacks; ``backbone``, ``kernel`` and the TTFNet settings of ``model`` are unused.

Adding a network setting: a field in :class:`NeckHeadConfig` (user key ``model.<name>``, stored in
the checkpoint's ``net`` group) and its use in :class:`~ttfnet_lightning.core.models.TTFNet`. A kernel
setting: a field in :class:`KernelConfig` and its use in :func:`~ttfnet_lightning.core.targets.encode_targets`.

Open nodes (``data``, ``trainer``, ``logger``, ``table``, ``protocol``) are typed ``Dict[str, Any]``:
their keys belong to the object they instantiate (a DataModule, ``pytorch_lightning.Trainer``, a
logger), which rejects unknown ones itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035  (OmegaConf needs typing's generics)

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ttfnet_lightning.core.models.neck import NECK_CHANNELS, SHORTCUT_CONVS
from ttfnet_lightning.training.precision import auto_precision
from ttfnet_lightning.training.records import beside_run, job_dirname, sqlite_url
from ttfnet_lightning.training.run_options import (
    BudgetConfig,
    CallbacksConfig,
    EmaConfig,
    MultiScaleConfig,
    ProgressConfig,
    SpeedConfig,
)

__all__ = [
    "BackboneConfig",
    "NeckHeadConfig",
    "NetConfig",
    "KernelConfig",
    "LossConfig",
    "DecodeConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "ProgressConfig",
    "CallbacksConfig",
    "SpeedConfig",
    "EmaConfig",
    "MultiScaleConfig",
    "BudgetConfig",
    "LR_POLICIES",
    "DataInfo",
    "PeerConfig",
    "PeerNetConfig",
    "TrainConfig",
    "METHODS",
    "PEERS",
    "checked",
    "register_configs",
]


# ------------------------------------------------------------------------------------ network
METHODS = ("ttfnet", "centernet")  # model.method: the network's head and training objective
# model.method: torchvision's detectors trained beside TTFNet (training/peer_module.py; core.models.peers.PEERS,
# tested equal)
PEERS = ("fcos", "retinanet", "ssdlite", "faster_rcnn")
NECKS = ("ttfnet", "dla_up")  # model.neck (core.models.ttfnet.NECKS, tested equal)
LR_POLICIES = ("step", "cosine", "flat_cosine")  # schedule.lr_policy (training.optim.LR_POLICIES, tested equal)


@dataclass
class BackboneConfig:
    """Hydra group ``backbone`` (``conf/backbone/*.yaml``)."""

    name: str = "r18"  # r18 | r34 | d53 | dla34 | timm
    model: Optional[str] = None  # name=timm: the timm model (backbone.model=resnet18d); unused otherwise
    pretrained: bool = False  # ImageNet weights: torchvision (ResNets), the official file (DLA-34), timm's hub (timm)
    weights: Optional[str] = None  # a local state dict (.pth, or .safetensors), loaded strictly
    frozen_stages: int = 1  # -1: nothing frozen; 1: stem + stage 1 (paper)
    # BN of the frozen stages: eval (statistics fixed) | train (statistics move: the released DarkNet-53)
    frozen_bn: str = "eval"
    init: str = "pytorch"  # DarkNet-53's conv init: pytorch | kaiming (the released code from scratch)
    # biases of the backbone's BN layers: biases (2x LR, no decay, like every bias) | released (the
    # weights' LR and decay: mmdetection 1.x's rule for layers named bn/bnN; -> schedule.norm_groups)
    norm_groups: str = "biases"
    box_convs: Optional[int] = None  # convs of the box head; null = the paper's per-backbone value
    neck: str = "ttfnet"  # the neck of this backbone's released model (-> model.neck): ttfnet | dla_up (DLA-34)
    heatmap_channels: int = 128  # the heatmap head's width in its released model (-> model.heatmap_channels)
    lr: float = 0.016  # the paper's LR for this backbone ...
    reference_batch: int = 128  # ... per this many images (8 GPUs x 16)


@dataclass
class NeckHeadConfig:
    """Neck and heads of :class:`~ttfnet_lightning.core.models.TTFNet` (user keys ``model.*``)."""

    # ttfnet (the paper's up-sampling neck) | dla_up (the released DLA-34 configs' DLA up-sampling; backbone=dla34
    # sets it; neck_channels and shortcut_convs are TTFNet's neck's only)
    neck: str = "ttfnet"
    neck_channels: List[int] = field(default_factory=lambda: list(NECK_CHANNELS))
    shortcut_convs: List[int] = field(default_factory=lambda: list(SHORTCUT_CONVS))  # paper Table 4
    deformable: bool = True  # modulated deformable up-sampling convs (paper)
    deform_impl: str = "native"  # native (grid_sample, fast on CPU) | torchvision (ops.deform_conv2d)
    heatmap_convs: int = 2
    heatmap_channels: int = 128
    box_channels: int = 64
    wh_scale: float = 16.0  # predicted distances = relu(x) * wh_scale
    prior_prob: float = 0.01  # initial heatmap probability (last heatmap bias -log((1 - p) / p))
    # ttfnet | centernet: CenterNet's head, targets, loss and decoder on the same backbone and neck (paper
    # Table 8; core/centernet.py); set with the group method=centernet (conf/method/), which also sets its head
    method: str = "ttfnet"

    def __post_init__(self) -> None:
        if self.method in PEERS:
            raise ValueError(
                f"model.method={self.method} is torchvision's detector: PeerDetectorModule "
                "(ttfnet_lightning.training.peer_module) trains it, not TTFNetModule"
            )
        if self.method not in METHODS:  # core.models.ttfnet.METHODS (tested equal)
            raise ValueError(f"model.method must be one of {METHODS + PEERS}, got {self.method!r}")
        if self.neck not in NECKS:  # core.models.ttfnet.NECKS (tested equal)
            raise ValueError(f"model.neck must be one of {NECKS}, got {self.neck!r}")


@dataclass
class NetConfig(NeckHeadConfig):
    """Everything :class:`~ttfnet_lightning.core.models.TTFNet` is built from besides ``num_classes``
    and ``class_aware`` (which come from the data and the kernel): ``TTFNet(**net, ...)``."""

    backbone: str = "r18"
    backbone_model: Optional[str] = None  # backbone=timm: the timm model name
    pretrained: bool = False
    weights: Optional[str] = None
    frozen_stages: int = 1
    frozen_bn: str = "eval"
    backbone_init: str = "pytorch"
    box_convs: Optional[int] = None

    @classmethod
    def from_config(cls, backbone: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
        head = {f.name: model[f.name] for f in dataclasses.fields(NeckHeadConfig)}
        return checked(
            cls,
            dict(
                head,
                backbone=backbone["name"],
                backbone_model=backbone.get("model"),
                pretrained=backbone["pretrained"],
                weights=backbone["weights"],
                frozen_stages=backbone["frozen_stages"],
                frozen_bn=backbone.get("frozen_bn", "eval"),
                backbone_init=backbone.get("init", "pytorch"),
                box_convs=backbone["box_convs"],
            ),
        )


@dataclass
class PeerConfig:
    """The user node ``peer``: settings of the torchvision detectors (``method=fcos|retinanet|ssdlite|faster_rcnn``;
    :func:`~ttfnet_lightning.core.models.peers.build_peer`); unused by TTFNet and CenterNet."""

    # torchvision's ImageNet weights for the backbone (ResNet-18, MobileNetV3-Large; torchvision downloads them
    # unless they are in its cache) with frozen BN; false: from scratch with plain BN, every layer trained
    pretrained_backbone: bool = False
    # backbone stages trained (ResNet 0-5, MobileNet 0-6); null: all from scratch, torchvision's default
    # (ResNet 3, MobileNet 6) with pretrained_backbone
    trainable_layers: Optional[int] = None


@dataclass
class PeerNetConfig(PeerConfig):
    """The peer module's group ``peer``: the detector (``model.method``) and its :class:`PeerConfig`."""

    name: str = "fcos"

    def __post_init__(self) -> None:
        if self.name not in PEERS:
            raise ValueError(f"peer detector (model.method) must be one of {PEERS}, got {self.name!r}")


# ----------------------------------------------------------------------- targets, loss, decoder
@dataclass
class KernelConfig:
    """Hydra group ``kernel``: the target encoder's options (see
    :func:`~ttfnet_lightning.core.targets.encode_targets`); the defaults are the released model."""

    name: str = "ttfnet"  # a label for run names and tables; not passed to the encoder
    alpha: float = 0.54  # heatmap Gaussian: radii = alpha x half the box side
    beta: float = 0.54  # box-regression area: beta x half the box side
    wh_gaussian: bool = True  # Gaussian regression area (false: rectangle)
    gaussian_weight: Optional[bool] = None  # Gaussian sample weights; null = same as wh_gaussian
    area_weight: str = "log"  # log | sqrt | area | norm | none
    aspect_ratio: bool = True  # elliptic kernels (false: isotropic)
    class_aware: bool = False  # one box per class channel (Table 2)
    # isotropic (CenterNet) radius, used when aspect_ratio is false: the largest corner shift that
    # keeps IoU >= min_overlap; radius_formula: centernet (its released formula) | exact
    min_overlap: float = 0.7
    radius_formula: str = "centernet"


@dataclass
class LossConfig:
    """Loss weights (user keys ``model.*``)."""

    wloc: float = 1.0  # heatmap (focal) loss weight
    wreg: float = 5.0  # box (GIoU) loss weight
    plus_one: bool = True  # GIoU on boxes with +1 on x2/y2 (the released code's convention)
    alpha_f: float = 2.0  # focal loss exponents (CornerNet's modified focal loss)
    beta_f: float = 4.0


@dataclass
class DecodeConfig:
    """Decoder settings (user keys ``model.*``)."""

    topk: int = 100
    score_threshold: float = 0.01
    # how the network's boxes are read (ttfnet_lightning.core.decode.BOX_CONVENTIONS): continuous (x2 = x1 + w,
    # clamped to W) | released (the released models' x2 = x1 + w - 1, clamped to W - 1; converted checkpoints)
    box_convention: str = "continuous"

    def __post_init__(self) -> None:
        if self.box_convention not in ("continuous", "released"):  # core.decode.BOX_CONVENTIONS (tested equal)
            raise ValueError(f"model.box_convention must be continuous or released, got {self.box_convention!r}")


@dataclass
class ModelConfig(DecodeConfig, LossConfig, NeckHeadConfig):
    """The ``model`` node: network neck/heads, loss and decoder settings (not grouped)."""


# ------------------------------------------------------------------------------- optimisation
@dataclass
class OptimConfig:
    """SGD and LR schedule (module group ``optim``; see :mod:`ttfnet_lightning.training.optim`)."""

    lr: float = 0.016  # base LR for reference_batch images per step
    reference_batch: int = 128
    scale_lr: bool = True  # linear scaling: lr x total batch / reference_batch
    momentum: float = 0.9
    weight_decay: float = 4.0e-4
    bias_lr_mult: float = 2.0
    bias_decay: float = 0.0
    norm_groups: str = "biases"  # biases | released (training/optim.py; wired from backbone.norm_groups)
    warmup_steps: int = 500
    warmup_ratio: float = 0.2
    milestones: List[int] = field(default_factory=lambda: [9, 11])  # epochs: LR x gamma
    gamma: float = 0.1
    # after the warm-up: step (the paper's: x gamma at the milestones) | cosine (LR to min_lr_ratio x LR over the
    # run's optimiser steps) | flat_cosine (the full LR for flat_fraction of the steps, then that cosine)
    lr_policy: str = "step"
    min_lr_ratio: float = 0.01  # cosine policies: the last LR / LR (the step policy ends at gamma^2 = 0.01)
    flat_fraction: float = 0.5  # flat_cosine: the fraction of the run's optimiser steps at the full LR

    def __post_init__(self) -> None:
        if self.lr_policy not in LR_POLICIES:
            raise ValueError(f"schedule.lr_policy must be one of {LR_POLICIES}, got {self.lr_policy!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.flat_fraction < 1.0:
            raise ValueError(f"schedule.flat_fraction must be in [0, 1), got {self.flat_fraction}")


@dataclass
class ScheduleConfig(OptimConfig):
    """Hydra group ``schedule``: the optimiser settings plus what the trainer and data read
    (wired in ``conf/train.yaml``)."""

    name: str = "fast"
    max_epochs: int = 12
    gradient_clip_val: Optional[float] = 35.0
    # photometric distortion, expand, min-IoU crop in training (-> data.datamodule.augment); which
    # implementation: data.datamodule.augment_style (released: the released code's | torchvision)
    augment: bool = False


# -------------------------------------------------------------------------------- data, top level
@dataclass
class DataInfo:
    """What the module knows of its data (module group ``data_info``), from the DataModule."""

    num_classes: int = 1
    class_names: Optional[List[str]] = None
    input_size: List[int] = field(default_factory=lambda: [512, 512])  # (H, W), multiples of 32
    label_to_cat_id: Optional[List[int]] = None  # contiguous label -> dataset category id (COCO)
    batch_size: Optional[int] = None  # images per device and step (linear LR scaling); null: the loader's


@dataclass
class TrainConfig:
    """The whole training config (``conf/train.yaml`` and its groups merge into this)."""

    seed: int = 0
    protocol: Dict[str, Any] = field(default_factory=lambda: {"name": "paper"})
    name: str = "run"
    group: Optional[str] = None
    project: str = "ttfnet-lightning"
    tags: List[str] = field(default_factory=list)
    # the paper-table sweep this run belongs to: a dict or null (Any: OmegaConf cannot merge a
    # command-line dict into a null Optional[Dict] node)
    table: Any = None
    ckpt_path: Optional[str] = None
    optimized_metric: str = "val/AP50"
    output_dir: Optional[str] = None
    skip_finished: bool = True
    exact_resume: bool = False
    measure_fps: bool = False
    # at the end of a finished run: <run>/results.png and the error analysis of the last validation
    # in <run>/analysis/ (ttfnet_lightning.training.run_figures; the PNGs need the viz extra)
    analysis: bool = True
    export_backbone: Optional[str] = None
    pretrained_weights: Dict[str, Any] = field(default_factory=dict)  # per backbone name (protocol=cpu)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)  # torchvision's detectors (model.method in PEERS)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: Dict[str, Any] = field(default_factory=dict)
    trainer: Dict[str, Any] = field(default_factory=dict)
    logger: Optional[Dict[str, Any]] = field(default_factory=dict)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)  # group ema=none|ema|short
    multiscale: MultiScaleConfig = field(default_factory=MultiScaleConfig)  # group multiscale=none|standard
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # training-time budget (experiment=race)


def checked(cls: type, values: Mapping[str, Any], *, where: str | None = None) -> dict[str, Any]:
    """``values`` as a plain dict with ``cls``'s defaults filled in, after checking its keys
    against the dataclass ``cls`` (an unknown key raises, naming it and the known ones)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{where or cls.__name__}: unknown setting(s) {unknown}; known: {sorted(names)}")
    return dataclasses.asdict(cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}))


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore and the package's resolvers, the one place they are
    registered (idempotent; done on import of the package ``ttfnet_lightning``)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    # `${ttf_or:${output_dir},outputs/...}`: the first value unless it is null or empty
    # (oc.select falls back only for missing keys, not for null values)
    if not OmegaConf.has_resolver("ttf_or"):
        OmegaConf.register_new_resolver("ttf_or", lambda value, default: default if value in (None, "") else value)
    # `hydra.sweep.subdir: ${ttf_jobdir:${hydra.overrides.task},${table.grid...}}` in the paper-table sweeps
    if not OmegaConf.has_resolver("ttf_jobdir"):
        OmegaConf.register_new_resolver("ttf_jobdir", job_dirname)
    # `${ttf_sqlite:${hydra.sweep.dir}/optuna.db}`: the Optuna study's storage (hparams_search=beta_lr)
    if not OmegaConf.has_resolver("ttf_sqlite"):
        OmegaConf.register_new_resolver("ttf_sqlite", sqlite_url)
    # `trainer.precision: ${ttf_auto_precision:}` (trainer=auto/cpu): bf16-mixed on a CPU with native bf16
    if not OmegaConf.has_resolver("ttf_auto_precision"):
        OmegaConf.register_new_resolver("ttf_auto_precision", auto_precision)
    # `hydra.run.dir: ${ttf_beside_run:${ckpt},evaluate}/...`: evaluate writes beside the checkpoint's run
    if not OmegaConf.has_resolver("ttf_beside_run"):
        OmegaConf.register_new_resolver("ttf_beside_run", beside_run)


register_configs()
