"""The paper's optimiser and LR schedule, as plain functions (no Lightning):

* SGD with two parameter groups: weights (``weight_decay``) and biases (``bias_lr_mult`` x LR,
  ``bias_decay`` x weight decay; the released code: 2x LR, no decay). ``norm_groups``: ``biases``
  puts every bias in the second group; ``released`` follows mmdetection 1.x's builder, where the
  backbone's normalisation layers named ``bn``/``bnN`` keep the weights' LR and decay for their
  biases too (:meth:`~ttfnet_lightning.core.models.base.FreezableBackbone.released_norm_names`);
* linear LR scaling: ``lr`` is the LR for ``reference_batch`` images per step, scaled to the real
  total batch (per device x devices x gradient accumulation) when ``scale_lr``;
* linear warm-up from ``warmup_ratio`` x LR over ``warmup_steps`` optimiser steps, then LR x
  ``gamma`` at each epoch in ``milestones`` (epochs of the real data loader);
* or, with ``lr_policy`` ``cosine`` / ``flat_cosine`` instead of the paper's ``step``, a cosine from LR to
  ``min_lr_ratio`` x LR over the run's total optimiser steps (``flat_cosine``: flat for the first
  ``flat_fraction`` of them), times the same warm-up (:func:`policy_factor`).

Settings: :class:`ttfnet_lightning.training.config.OptimConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "lr_factor",
    "policy_factor",
    "scaled_lr",
    "param_groups",
    "build_optimizer",
    "NORM_GROUPS",
    "LR_POLICIES",
]

NORM_GROUPS = ("biases", "released")
LR_POLICIES = ("step", "cosine", "flat_cosine")  # schedule.lr_policy (config.OptimConfig; tested equal)


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_steps: int,
    warmup_ratio: float,
    lr_policy: str = "step",
    total_steps: float | None = None,
    min_lr_ratio: float = 0.01,
    flat_fraction: float = 0.5,
) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up from ``warmup_ratio`` over
    ``warmup_steps`` steps, times ``gamma`` for each epoch milestone passed (``lr_policy="step"``),
    or times :func:`policy_factor` at ``step / total_steps`` (``cosine``, ``flat_cosine``)."""
    if lr_policy not in LR_POLICIES:
        raise ValueError(f"schedule.lr_policy must be one of {LR_POLICIES}, got {lr_policy!r}")
    if lr_policy == "step":
        epoch = step // max(steps_per_epoch, 1)
        factor = gamma ** sum(epoch >= m for m in milestones)
    else:
        if total_steps is None or not math.isfinite(total_steps) or total_steps < 1:
            raise ValueError(
                f"schedule.lr_policy={lr_policy} needs the run's total optimiser steps, got {total_steps}: "
                "give the run a length (trainer.max_epochs, or trainer.max_steps for a data set without one)"
            )
        factor = policy_factor(
            step / total_steps, lr_policy=lr_policy, min_lr_ratio=min_lr_ratio, flat_fraction=flat_fraction
        )
    if step < warmup_steps:
        factor *= warmup_ratio + (1 - warmup_ratio) * step / warmup_steps
    return factor


def policy_factor(progress: float, *, lr_policy: str, min_lr_ratio: float, flat_fraction: float = 0.5) -> float:
    """LR multiplier of the ``cosine`` and ``flat_cosine`` policies at ``progress``, the fraction of the run's
    optimiser steps done (clipped to [0, 1]): ``cosine`` falls from 1 at 0 to ``min_lr_ratio`` at 1 along half a
    cosine; ``flat_cosine`` stays at 1 until ``flat_fraction``, then falls the same way over the rest. (The
    warm-up multiplies this, as it multiplies the step policy: :func:`lr_factor`.)"""
    if lr_policy not in LR_POLICIES[1:]:
        raise ValueError(f"schedule.lr_policy must be one of {LR_POLICIES[1:]} here, got {lr_policy!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if not 0.0 <= flat_fraction < 1.0:
        raise ValueError(f"schedule.flat_fraction must be in [0, 1), got {flat_fraction}")
    start = flat_fraction if lr_policy == "flat_cosine" else 0.0
    t = min(max(float(progress), 0.0), 1.0)
    if t <= start:
        return 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * (t - start) / (1.0 - start)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


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
    total_steps: float | None = None,
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD and its per-step LR schedule from the settings ``optim`` (an :class:`OptimConfig` dict);
    ``norm_names``: the parameters ``optim["norm_groups"] == "released"`` trains like weights; ``total_steps``:
    the run's optimiser steps (the ``cosine`` and ``flat_cosine`` policies; the trainer's estimate)."""
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
    # cosine / flat_cosine (LambdaLR calls factor(0) now: a bad setting fails here, not at the first step)
    policy = {k: optim[k] for k in ("lr_policy", "min_lr_ratio", "flat_fraction") if k in optim}

    def factor(step: int) -> float:
        return lr_factor(
            step,
            steps_per_epoch=steps_per_epoch,
            milestones=milestones,
            gamma=gamma,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
            total_steps=total_steps,
            **policy,
        )

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
