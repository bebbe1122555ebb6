"""What every backbone shares: strict loading of a local state dict (a mismatch lists the missing and
unexpected keys; an unreadable or unsafe file raises :class:`WeightsError` naming it) and stage freezing
(:class:`FreezableBackbone`: frozen parameters get ``requires_grad=False``, frozen modules stay in eval mode)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "WeightsError",
    "FreezableBackbone",
    "FROZEN_BN_MODES",
    "RELEASED_NORM_NAME",
    "load_state_dict_strict",
    "load_checked",
    "read_state_dict",
]


class WeightsError(RuntimeError):
    """Backbone weights could not be obtained or do not match the architecture."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":  # timm / Hugging Face hub checkpoints
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as exc:
        raise WeightsError(f"reading {path} needs the safetensors package (pip install safetensors)") from exc
    except Exception as exc:  # corrupt or non-tensor pickle (torch's advice to load it unsafely is not passed on)
        why = (
            "a corrupt file, or Python objects other than tensors (never loaded)" if "Weights only" in str(exc) else exc
        )
        raise WeightsError(f"could not read backbone weights from {path}: {type(exc).__name__}: {why}") from exc
    # accept a bare state dict or the usual checkpoint wrappers
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    state = dict(obj)
    for prefix in ("module.", "backbone."):  # DataParallel / detector checkpoints
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict_strict(module: nn.Module, path: str | Path, *, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state dict into ``module`` with strict key and shape checking.

    Keys starting with one of ``ignore_prefixes`` (e.g. a classifier ``fc.`` the backbone does not
    have) are dropped first. Anything else missing, unexpected or of the wrong shape raises
    :class:`WeightsError` naming the file and listing the offending keys.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    load_checked(module, state, source=path, ignore_prefixes=ignore_prefixes)


def load_checked(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str | Path, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``module`` after checking keys and shapes (the body of
    :func:`load_state_dict_strict`; ``source`` names the weights in the error)."""
    path = source
    state = dict(state)
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shape:

        def fmt(keys: list[str]) -> str:
            return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")

        parts = [f"backbone weights {path} do not match {type(module).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {fmt(unexpected)}")
        if shape:
            parts.append(f"shape mismatches ({len(shape)}): {fmt(shape)}")
        raise WeightsError("\n  ".join(parts))
    # every key outside ignore_prefixes was checked above; strict=False only tolerates those
    module.load_state_dict(state, strict=not ignore_prefixes)
    log.info("loaded backbone weights from %s (%d tensors)", path, len(state))


FROZEN_BN_MODES = ("eval", "train")
# mmdetection 1.x's optimiser builder (the released code): parameters whose name this matches are
# normalisation layers and keep the weights' LR and weight decay; other biases get bias_lr_mult/bias_decay
RELEASED_NORM_NAME = re.compile(r"(bn|gn)(\d+)?.(weight|bias)")


class FreezableBackbone(nn.Module):
    """Common freezing logic: subclasses list their stages (stem first) in ``self.stages``.

    ``frozen_bn``: ``eval`` (default) keeps the frozen stages' BatchNorm in eval mode (statistics fixed);
    ``train`` leaves it in the mode the caller asks for (the released DarkNet-53, ``norm_eval=False``:
    the frozen stages' running statistics keep moving while their parameters stay fixed)."""

    out_channels: tuple[int, int, int, int]
    frozen_stages: int
    frozen_bn: str = "eval"

    def _stage_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _freeze(self) -> None:
        for stage in self._stage_modules()[: self.frozen_stages + 1]:
            if self.frozen_bn == "eval":
                stage.eval()
            for p in stage.parameters():
                p.requires_grad_(False)

    def set_frozen_bn(self, mode: str) -> None:
        """``eval`` or ``train`` (see the class docstring); raises ValueError naming the key otherwise."""
        if mode not in FROZEN_BN_MODES:
            raise ValueError(f"backbone.frozen_bn must be one of {FROZEN_BN_MODES}, got {mode!r}")
        self.frozen_bn = mode
        self.train(self.training)

    def released_norm_names(self) -> set[str]:
        """Names (relative to the backbone) of the parameters the released code's optimiser treats as
        normalisation layers (:data:`RELEASED_NORM_NAME` on its parameter names). Here: the same test on
        this module's names, which equal the released ones for torchvision's ResNets (``bn1``, ``bn2``;
        not ``downsample.1``); backbones named otherwise override it."""
        return {name for name, _ in self.named_parameters() if RELEASED_NORM_NAME.search(name)}

    def train(self, mode: bool = True) -> FreezableBackbone:
        super().train(mode)
        self._freeze()  # frozen stages keep eval-mode BN whatever the caller asks (frozen_bn="eval")
        return self
