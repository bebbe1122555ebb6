"""The paper's optimiser and LR schedule, as plain functions (no Lightning):

* SGD with two parameter groups: weights (``weight_decay``) and biases (``bias_lr_mult`` x LR,
  ``bias_decay`` x weight decay; the released code: 2x LR, no decay). ``norm_groups``: ``biases``
  puts every bias in the second group; ``released`` follows mmdetection 1.x's builder, where the
  backbone's normalisation layers named ``bn``/``bnN`` keep the weights' LR and decay for their
  biases too (:meth:`~ttfnet_lightning.core.models.base.FreezableBackbone.released_norm_names`);
* linear LR scaling: ``lr`` is the LR for ``reference_batch`` images per step, scaled to the real
  total batch (per device x devices x gradient accumulation) when ``scale_lr``;
* linear warm-up from ``warmup_ratio`` x LR over ``warmup_steps`` optimiser steps, then LR x
  ``gamma`` at each epoch in ``milestones`` (epochs of the real data loader).

Settings: :class:`ttfnet_lightning.training.config.OptimConfig`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["lr_factor", "scaled_lr", "param_groups", "build_optimizer", "NORM_GROUPS"]

NORM_GROUPS = ("biases", "released")


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_steps: int,
    warmup_ratio: float,
) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up from ``warmup_ratio`` over
    ``warmup_steps`` steps, times ``gamma`` for each epoch milestone passed."""
    epoch = step // max(steps_per_epoch, 1)
    factor = gamma ** sum(epoch >= m for m in milestones)
    if step < warmup_steps:
        factor *= warmup_ratio + (1 - warmup_ratio) * step / warmup_steps
    return factor


def scaled_lr(lr: float, *, total_batch: int, reference_batch: int, scale_lr: bool = True) -> float:
    """The LR for ``total_batch`` images per optimiser step: ``lr`` x total_batch / reference_batch
    (linear scaling rule) when ``scale_lr``, else ``lr``."""
    if total_batch < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be positive (total_batch {total_batch}, reference_batch {reference_batch})")
    return float(lr) * total_batch / reference_batch if scale_lr else float(lr)


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    bias_lr_mult: float,
    bias_decay: float,
    norm_names: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Two SGD groups of the trainable parameters, named for Lightning's ``LearningRateMonitor``
    (``train/lr/weights``, ``train/lr/biases``): weights, then biases (names ending in ``.bias``
    and not in ``norm_names``, whose biases are trained like weights)."""
    decay, no_decay = [], []
    norm_names = set(norm_names)
    for name, p in named_parameters:
        if p.requires_grad:
            (no_decay if name.endswith(".bias") and name not in norm_names else decay).append(p)
    return [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
        {"params": no_decay, "lr": lr * bias_lr_mult, "weight_decay": weight_decay * bias_decay, "name": "biases"},
    ]


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    optim: Mapping[str, Any],
    *,
    total_batch: int,
    steps_per_epoch: int,
    norm_names: Collection[str] = (),
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD and its per-step LR schedule from the settings ``optim`` (an :class:`OptimConfig` dict);
    ``norm_names``: the parameters ``optim["norm_groups"] == "released"`` trains like weights."""
    norm_groups = optim.get("norm_groups", "biases")
    if norm_groups not in NORM_GROUPS:
        raise ValueError(f"schedule.norm_groups must be one of {NORM_GROUPS}, got {norm_groups!r}")
    lr = scaled_lr(
        optim["lr"], total_batch=total_batch, reference_batch=optim["reference_batch"], scale_lr=optim["scale_lr"]
    )
    groups = param_groups(
        named_parameters,
        lr=lr,
        weight_decay=optim["weight_decay"],
        bias_lr_mult=optim["bias_lr_mult"],
        bias_decay=optim["bias_decay"],
        norm_names=norm_names if norm_groups == "released" else (),
    )
    opt = torch.optim.SGD(groups, lr=lr, momentum=optim["momentum"])
    milestones, gamma = list(optim["milestones"]), float(optim["gamma"])
    warmup_steps, warmup_ratio = int(optim["warmup_steps"]), float(optim["warmup_ratio"])

    def factor(step: int) -> float:
        return lr_factor(
            step,
            steps_per_epoch=steps_per_epoch,
            milestones=milestones,
            gamma=gamma,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
        )

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
