"""TTFNet (Liu et al., AAAI 2020) as a PyTorch Lightning library with Hydra-composed experiments.

Layers (each a package; a lower one never imports a higher one, see docs/architecture.md): ``core``
(network, target encoder, losses, decoder, inference path, drawing) -> ``data`` -> ``training`` ->
``deploy`` / ``paper``; the command-line modules (``train``, ``evaluate``, ``predict``, ``export``,
``convert``, ``tables``, ``analyze``, ``speed``, ``viz``) on top.

The public API, at the package top::

    from ttfnet_lightning import TTFNet, TTFNetModule, load_model, encode_targets, decode_detections

Each name is imported on first use (PEP 562), so that ``import ttfnet_lightning.core`` (which imports
this package first) never imports Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ttfnet_lightning.training import config as _config  # noqa: F401  (registers the config schema and resolvers with Hydra)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from ttfnet_lightning.core.decode import decode_detections
    from ttfnet_lightning.core.models import TTFNet
    from ttfnet_lightning.core.targets import encode_targets
    from ttfnet_lightning.training.checkpoints import load_model
    from ttfnet_lightning.training.lit_module import TTFNetModule

# public name -> the module that defines it
_PUBLIC = {
    "TTFNet": "ttfnet_lightning.core.models",
    "TTFNetModule": "ttfnet_lightning.training.lit_module",
    "load_model": "ttfnet_lightning.training.checkpoints",
    "encode_targets": "ttfnet_lightning.core.targets",
    "decode_detections": "ttfnet_lightning.core.decode",
}

__all__ = ["TTFNet", "TTFNetModule", "load_model", "encode_targets", "decode_detections"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once; later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
