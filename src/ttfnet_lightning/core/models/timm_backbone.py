"""Any timm model as a backbone (``backbone=timm backbone.model=NAME``) through ``features_only``: the levels
with reductions 4, 8, 16, 32 are picked from its ``feature_info`` (needs the ``timm`` extra)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ttfnet_lightning.core.models.base import FreezableBackbone, WeightsError, load_checked, read_state_dict

log = logging.getLogger(__name__)

__all__ = ["TimmBackbone", "TIMM_EXTRA_HINT", "import_timm"]


TIMM_EXTRA_HINT = "pip install 'ttfnet-lightning[timm]' (or: pip install 'timm>=1.0')"


def import_timm() -> Any:
    """``timm``, imported on first use (the core library does not need it), or an ImportError
    naming the extra to install."""
    try:
        import timm
    except ImportError as exc:
        raise ImportError(f"backbone=timm needs the timm package, which is not installed: {TIMM_EXTRA_HINT}") from exc
    return timm


def _norm_key(key: str) -> str:
    # timm's FeatureListNet flattens nested Sequentials into names joined by "_" (stem.0 -> stem_0)
    return key.replace("_", ".")


class TimmBackbone(FreezableBackbone):
    """Any timm model as a backbone: ``timm.create_model(model, features_only=True, out_indices=...)``
    with the out indices whose ``feature_info`` reductions are 4, 8, 16 and 32 (picked automatically;
    a model without all four, e.g. a plain ViT, is refused with its reductions). Channels come from
    ``feature_info``, so the neck takes them as they are. NHWC feature maps are permuted to NCHW.

    Args:
        model: a timm model name (``timm.list_models()``), e.g. ``resnet18d``, ``mobilenetv3_large_100``,
            ``resnet50d``, ``convnext_atto``, ``efficientnet_b0``.
        pretrained: timm's default pretrained weights (Hugging Face hub, cached by timm); offline this
            fails with an error naming the ``weights=PATH`` alternative. Loaded strictly.
        weights: local state dict (``.pth``/``.bin`` or ``.safetensors``) with the key names of the timm
            classification model (what the hub holds; its classifier and other layers past the last
            feature level are ignored) or of the ``features_only`` model (what
            :func:`~ttfnet_lightning.training.checkpoints.export_backbone_weights` writes), loaded strictly.
        frozen_stages: -1 none, 0 stem (everything before the stride-4 level), 1 stem + the stride-4
            level (default), ..., 4 all. A stage ends with the module that timm names for its level.
    """

    REDUCTIONS = (4, 8, 16, 32)

    def __init__(
        self, *, model: str | None, pretrained: bool = False, weights: str | None = None, frozen_stages: int = 1
    ) -> None:
        super().__init__()
        if not model:
            raise ValueError(
                "backbone=timm needs a timm model name: backbone.model=<name>, e.g. backbone.model=resnet18d"
            )
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        timm = import_timm()
        self.model_name = model
        out_indices = self._pick_levels(timm, model)
        self.net = timm.create_model(model, features_only=True, out_indices=out_indices, pretrained=False)
        info = self.net.feature_info
        if tuple(info.reduction()) != self.REDUCTIONS:  # pragma: no cover - timm honours out_indices
            raise ValueError(f"timm model {model!r} gave reductions {info.reduction()} for out_indices {out_indices}")
        self.out_channels = tuple(int(c) for c in info.channels())
        self.nhwc = str(getattr(self.net, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.frozen_stages = frozen_stages
        self._stage_of_module = self._assign_stages()
        if weights:
            state = read_state_dict(weights)
            self._load_timm_state(timm, state, source=weights)
        elif pretrained:
            try:
                full = timm.create_model(model, pretrained=True)
            except Exception as exc:  # offline hub, no weights for this model, ...
                raise WeightsError(
                    f"could not download timm's pretrained weights for {model!r} ({type(exc).__name__}: {exc}). This "
                    f"machine may be offline: download the file elsewhere (e.g. the model's model.safetensors on the "
                    f"Hugging Face hub) and pass backbone.weights=/path/to/{model}.safetensors, or set "
                    "backbone.pretrained=false."
                ) from exc
            self._load_timm_state(timm, full.state_dict(), source=f"timm pretrained {model}", full=full)
        self._freeze()

    @classmethod
    def _pick_levels(cls, timm: Any, model: str) -> tuple[int, ...]:
        """timm out indices of the levels with reductions 4, 8, 16, 32 (from a model built on the
        meta device: no memory, no initialisation)."""
        try:
            try:
                with torch.device("meta"):
                    probe = timm.create_model(model, features_only=True, pretrained=False)
            except RuntimeError as exc:
                if "Unknown model" in str(exc):
                    raise
                probe = timm.create_model(
                    model, features_only=True, pretrained=False
                )  # a model that cannot init on meta
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(
                    f"unknown timm model {model!r} (timm.list_models('*pattern*') lists the names)"
                ) from exc
            raise
        info = probe.feature_info
        reductions, indices = list(info.reduction()), list(info.out_indices)
        if not all(r in reductions for r in cls.REDUCTIONS):
            raise ValueError(
                f"timm model {model!r} has feature levels with reductions {reductions}; TTFNet needs one each at "
                f"{list(cls.REDUCTIONS)} (a pyramid backbone: ResNets, MobileNets, EfficientNets, ConvNeXts, DLA, "
                "RegNets, ...)"
            )
        return tuple(int(indices[reductions.index(r)]) for r in cls.REDUCTIONS)

    # ----------------------------------------------------------------------- frozen stages
    def _assign_stages(self) -> dict[str, int]:
        """Stage (0 stem ... 4) of every module of the features model, in registration order: stage
        i >= 1 ends with the module timm names for the i-th level (stride 4, 8, 16, 32)."""
        names = [n for n, _ in self.net.named_modules()]
        pos = {n: i for i, n in enumerate(names)}
        starts, ends = [], []
        for level in self.net.feature_info.module_name():
            cands = [c for c in (level, level.replace(".", "_"), f"model.{level}") if c in pos]
            if not cands:  # pragma: no cover - every timm feature class names its modules
                raise ValueError(
                    f"timm model {self.model_name!r}: feature module {level!r} not found; frozen_stages cannot be "
                    "applied"
                )
            name = cands[0]
            starts.append(pos[name])
            ends.append(max(i for i, n in enumerate(names) if n == name or n.startswith(name + ".")))

        def stage(i: int) -> int:
            return 0 if i < starts[0] else min(4, 1 + sum(e < i for e in ends[:-1]))

        return {n: stage(i) for i, n in enumerate(names)}

    def _stage_modules(self) -> list[nn.Module]:
        stages: list[list[nn.Module]] = [[] for _ in range(5)]
        for name, m in self.net.named_modules():
            if not any(True for _ in m.children()):  # leaves (containers span stages)
                stages[self._stage_of_module[name]].append(m)
        return [nn.ModuleList(s) for s in stages]

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        for name, m in self.net.named_modules():
            if self._stage_of_module[name] <= self.frozen_stages:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
                if not any(True for _ in m.children()):
                    m.eval()

    # ------------------------------------------------------------------------------ weights
    def _load_timm_state(
        self, timm: Any, state: Mapping[str, Tensor], *, source: str | Path, full: nn.Module | None = None
    ) -> None:
        """Strictly load ``state`` (classification-model or features-model key names) into the
        features model; the classification model's layers past the last level are ignored."""
        own = set(self.net.state_dict())
        if full is None and not set(state) <= own:
            full = timm.create_model(self.model_name, pretrained=False)
        to_own: dict[str, str] = {}
        extra: set[str] = set()
        if full is not None:
            full_keys = list(full.state_dict())
            by_norm: dict[str, str | None] = {}
            for k in full_keys:
                by_norm[_norm_key(k)] = None if _norm_key(k) in by_norm else k  # None: ambiguous
            for k in own:
                for cand in (k, k[len("model.") :] if k.startswith("model.") else None):
                    if cand is not None and by_norm.get(_norm_key(cand)):
                        to_own[by_norm[_norm_key(cand)]] = k  # type: ignore[index]
                        break
            extra = set(full_keys) - set(to_own)  # classifier, conv_head, ... (not in the features model)
        translated: dict[str, Tensor] = {}
        for k, v in state.items():
            if k in own:
                translated[k] = v
            elif k in to_own:
                translated[to_own[k]] = v
            elif k not in extra:
                translated[k] = v  # reported as unexpected
        load_checked(self.net, translated, source=source)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = list(self.net(x))
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats
