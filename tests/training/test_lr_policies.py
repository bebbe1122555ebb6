"""The cosine and flat-cosine LR policies (schedule.lr_policy; ttfnet_lightning.training.optim): values at the
start, the end and in the flat part, the warm-up composed on top, the settings' checks, and the composed config."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose
from ttfnet_lightning.training import config as config_mod
from ttfnet_lightning.training.config import OptimConfig, checked
from ttfnet_lightning.training.config_groups import module_groups
from ttfnet_lightning.training.optim import LR_POLICIES, build_optimizer, lr_factor, policy_factor

STEP = dict(steps_per_epoch=10, milestones=[9, 11], gamma=0.1)


def test_cosine_falls_from_one_to_the_min_ratio_along_half_a_cosine():
    f = lambda t: policy_factor(t, lr_policy="cosine", min_lr_ratio=0.05)  # noqa: E731
    assert f(0.0) == 1.0
    assert f(1.0) == pytest.approx(0.05)
    assert f(0.5) == pytest.approx(0.05 + 0.95 * 0.5)  # half way: the middle of the range
    assert f(0.25) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 4)))
    values = [f(i / 100) for i in range(101)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly falling
    assert f(-0.5) == 1.0 and f(2.0) == pytest.approx(0.05)  # progress clipped to [0, 1]


def test_flat_cosine_is_flat_for_its_fraction_then_a_cosine_over_the_rest():
    f = lambda t: policy_factor(t, lr_policy="flat_cosine", min_lr_ratio=0.0, flat_fraction=0.6)  # noqa: E731
    assert [f(t) for t in (0.0, 0.3, 0.59, 0.6)] == [1.0, 1.0, 1.0, 1.0]
    assert f(0.8) == pytest.approx(0.5)  # half of the cosine part (0.6 -> 1.0)
    assert f(1.0) == pytest.approx(0.0)
    assert f(0.61) < 1.0


def test_lr_factor_composes_the_warmup_with_the_policy():
    kw = dict(STEP, warmup_steps=100, warmup_ratio=0.2, total_steps=1000, min_lr_ratio=0.01)
    for policy in ("cosine", "flat_cosine"):
        for step in (0, 40, 99, 100, 500, 900, 1000):
            warm = 0.2 + 0.8 * step / 100 if step < 100 else 1.0
            expected = warm * policy_factor(step / 1000, lr_policy=policy, min_lr_ratio=0.01)
            assert lr_factor(step, lr_policy=policy, **kw) == pytest.approx(expected)
    assert lr_factor(1000, lr_policy="cosine", **kw) == pytest.approx(0.01)  # the end: min_lr_ratio
    assert lr_factor(0, lr_policy="cosine", **kw) == pytest.approx(0.2)  # the start: the warm-up's ratio
    # the milestones are the step policy's only
    assert lr_factor(95, lr_policy="flat_cosine", **kw) == pytest.approx(0.2 + 0.8 * 0.95)


def test_the_step_policy_is_unchanged_and_the_default():
    kw = dict(STEP, warmup_steps=50, warmup_ratio=0.2)
    for step in (0, 25, 89, 90, 110, 500):
        assert lr_factor(step, **kw) == lr_factor(step, lr_policy="step", total_steps=None, **kw)
    assert lr_factor(90, **kw) == pytest.approx(0.1) and lr_factor(110, **kw) == pytest.approx(0.01)
    assert OptimConfig().lr_policy == "step"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr_policy="cosin", total_steps=100), "schedule.lr_policy must be one of"),
        (dict(lr_policy="cosine", total_steps=None), "needs the run's total optimiser steps"),
        (dict(lr_policy="cosine", total_steps=float("inf")), "trainer.max_epochs"),
        (dict(lr_policy="cosine", total_steps=100, min_lr_ratio=1.5), "schedule.min_lr_ratio"),
        (dict(lr_policy="flat_cosine", total_steps=100, flat_fraction=1.0), "schedule.flat_fraction"),
    ],
)
def test_bad_policy_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_factor(3, warmup_steps=0, warmup_ratio=1.0, **STEP, **kwargs)


def test_the_schema_checks_the_policy_and_lists_the_same_policies():
    assert config_mod.LR_POLICIES == LR_POLICIES
    with pytest.raises(ValueError, match="schedule.lr_policy must be one of"):
        checked(OptimConfig, {"lr_policy": "linear"})
    with pytest.raises(ValueError, match="schedule.flat_fraction"):
        checked(OptimConfig, {"flat_fraction": -0.1})


def test_build_optimizer_runs_the_cosine_to_its_end_over_total_steps():
    net = nn.Linear(2, 2)
    optim = checked(OptimConfig, {"lr": 0.1, "reference_batch": 1, "warmup_steps": 0, "lr_policy": "cosine"})
    opt, sched = build_optimizer(net.named_parameters(), optim, total_batch=1, steps_per_epoch=5, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.01)  # after the last step: min_lr_ratio x LR
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2 * 0.01)  # biases keep their 2x
    # a run without a length fails when the optimiser is built, naming the key
    with pytest.raises(ValueError, match="schedule.lr_policy=cosine needs"):
        build_optimizer(net.named_parameters(), optim, total_batch=1, steps_per_epoch=5, total_steps=float("inf"))
    assert isinstance(opt, torch.optim.SGD)


@pytest.mark.parametrize("schedule", ["fast", "2x", "10x"])
def test_lr_policy_overrides_compose_for_every_schedule_and_reach_the_module(schedule):
    cfg = compose("train", [f"schedule={schedule}", "schedule.lr_policy=flat_cosine", "schedule.flat_fraction=0.7"])
    optim = module_groups(OmegaConf.to_container(cfg, resolve=True))["optim"]
    assert optim["lr_policy"] == "flat_cosine" and optim["flat_fraction"] == 0.7
    assert cfg.schedule.name == schedule  # the schedule's epochs and milestones are kept
    assert compose("train", [f"schedule={schedule}"]).schedule.lr_policy == "step"
