"""The composed training config -> the argument groups of the Lightning modules (detectron2's ``from_config``
translation, kept apart from the schema in :mod:`~ttfnet_lightning.training.config`): :func:`module_groups` for
TTFNet / CenterNet (:class:`~ttfnet_lightning.training.lit_module.TTFNetModule`), :func:`peer_groups` for
torchvision's detectors (:class:`~ttfnet_lightning.training.peer_module.PeerDetectorModule`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ttfnet_lightning.training.config import (
    DecodeConfig,
    LossConfig,
    NetConfig,
    OptimConfig,
    PeerConfig,
    PeerNetConfig,
    checked,
)

__all__ = ["module_groups", "peer_groups"]


def _own(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of the dataclass ``cls``."""
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}


def module_groups(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The composed training config (resolved, as plain containers) -> the module's argument groups
    ``net``, ``kernel``, ``loss``, ``optim``, ``decode``, ``multiscale``: the user-facing groups ``backbone`` and
    ``model`` feed ``net``; ``model`` also holds the loss and decoder settings, ``schedule`` the
    optimiser's (the schedule's other keys, e.g. ``max_epochs``, go to the Trainer); ``multiscale`` is the user
    node, its seed the run's when null and multi-scale training is on."""
    model, schedule = cfg["model"], cfg["schedule"]
    return {
        "net": NetConfig.from_config(cfg["backbone"], model),
        "kernel": dict(cfg["kernel"]),
        "loss": _own(LossConfig, model),
        "optim": _own(OptimConfig, schedule),
        "decode": _own(DecodeConfig, model),
        "multiscale": _multiscale_group(cfg),
    }


def _multiscale_group(cfg: Mapping[str, Any]) -> dict[str, Any]:
    node = dict(cfg.get("multiscale") or {})
    if node.get("scales") and node.get("seed") is None:
        node["seed"] = int(cfg.get("seed") or 0)
    return node


def peer_groups(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The composed training config (resolved, as plain containers) of a torchvision detector
    (``model.method`` in :data:`PEERS`) -> the peer module's argument groups ``peer`` (``model.method`` and the
    ``peer`` node), ``optim`` (the ``schedule``'s optimiser settings, as :func:`module_groups`) and ``decode``
    (``model.topk``, ``model.score_threshold``, ``model.box_convention``)."""
    model, schedule = cfg["model"], cfg["schedule"]
    if (cfg.get("multiscale") or {}).get("scales"):
        raise ValueError(
            f"multiscale.scales is set, but model.method={model['method']} (torchvision's detector) resizes its "
            "images inside its own transform: multi-scale training is TTFNet's and CenterNet's (multiscale=none)"
        )
    return {
        "peer": checked(PeerNetConfig, {**_own(PeerConfig, cfg.get("peer") or {}), "name": model["method"]}),
        "optim": _own(OptimConfig, schedule),
        "decode": _own(DecodeConfig, model),
    }
