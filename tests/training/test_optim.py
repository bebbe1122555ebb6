"""The paper's optimiser and LR schedule (ttfnet_lightning.training.optim): warm-up, epoch milestones, bias
groups and linear LR scaling, without Lightning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ttfnet_lightning.training.config import OptimConfig, checked
from ttfnet_lightning.training.optim import build_optimizer, lr_factor, param_groups, scaled_lr


def test_warmup_is_linear_from_the_ratio_to_one():
    kw = dict(steps_per_epoch=100, milestones=[], gamma=0.1, warmup_steps=500, warmup_ratio=0.2)
    assert lr_factor(0, **kw) == pytest.approx(0.2)
    assert lr_factor(250, **kw) == pytest.approx(0.6)
    assert lr_factor(499, **kw) == pytest.approx(0.2 + 0.8 * 499 / 500)
    assert lr_factor(500, **kw) == 1.0 and lr_factor(10_000, **kw) == 1.0


def test_milestones_are_epochs_and_compound():
    kw = dict(steps_per_epoch=10, milestones=[9, 11], gamma=0.1, warmup_steps=0, warmup_ratio=0.2)
    assert lr_factor(89, **kw) == 1.0  # last step of epoch 8
    assert lr_factor(90, **kw) == pytest.approx(0.1)  # first step of epoch 9
    assert lr_factor(109, **kw) == pytest.approx(0.1)
    assert lr_factor(110, **kw) == pytest.approx(0.01)
    # warm-up and a milestone at once multiply
    assert lr_factor(
        5, steps_per_epoch=1, milestones=[2], gamma=0.5, warmup_steps=10, warmup_ratio=0.0
    ) == pytest.approx(0.25)


def test_linear_scaling_rule():
    assert scaled_lr(0.016, total_batch=16, reference_batch=128) == pytest.approx(0.002)
    assert scaled_lr(0.016, total_batch=256, reference_batch=128) == pytest.approx(0.032)
    assert scaled_lr(0.016, total_batch=16, reference_batch=128, scale_lr=False) == 0.016
    with pytest.raises(ValueError, match="positive"):
        scaled_lr(0.016, total_batch=0, reference_batch=128)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_bias_groups_get_their_lr_and_decay_and_frozen_parameters_none():
    net = Tiny()
    groups = param_groups(net.named_parameters(), lr=0.01, weight_decay=4e-4, bias_lr_mult=2.0, bias_decay=0.0)
    weights, biases = groups
    assert [g["name"] for g in groups] == ["weights", "biases"]
    assert {id(p) for p in weights["params"]} == {id(net.conv.weight), id(net.bn.weight)}
    assert {id(p) for p in biases["params"]} == {id(net.conv.bias), id(net.bn.bias)}
    assert weights["lr"] == 0.01 and weights["weight_decay"] == 4e-4
    assert biases["lr"] == pytest.approx(0.02) and biases["weight_decay"] == 0.0


def test_build_optimizer_scales_warms_up_and_steps_down():
    optim = checked(
        OptimConfig, {"lr": 0.016, "reference_batch": 128, "warmup_steps": 4, "warmup_ratio": 0.5, "milestones": [2]}
    )
    net = Tiny()
    opt, sched = build_optimizer(net.named_parameters(), optim, total_batch=64, steps_per_epoch=3)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base = 0.016 * 64 / 128
    expected = [base * f for f in (0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 0.1, 0.1)]  # epoch 2 starts at step 6
    assert lrs == pytest.approx(expected)
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * lrs[-1])  # biases: 2x


def test_released_norm_groups_train_named_bn_biases_like_weights():
    """schedule.norm_groups=released (mmdetection 1.x's builder): biases of the normalisation layers it
    names bn/bnN keep the weights' LR and decay; every other bias still gets 2x LR and no decay."""
    net = Tiny()
    names = {"bn.weight", "bn.bias"}
    weights, biases = param_groups(
        net.named_parameters(), lr=0.01, weight_decay=4e-4, bias_lr_mult=2.0, bias_decay=0.0, norm_names=names
    )
    assert {id(p) for p in weights["params"]} == {id(net.conv.weight), id(net.bn.weight), id(net.bn.bias)}
    assert {id(p) for p in biases["params"]} == {id(net.conv.bias)}
    for norm_groups, bn_bias_group in (("released", 0), ("biases", 1)):
        optim = checked(OptimConfig, {"norm_groups": norm_groups})
        opt, _ = build_optimizer(net.named_parameters(), optim, total_batch=16, steps_per_epoch=3, norm_names=names)
        assert any(p is net.bn.bias for p in opt.param_groups[bn_bias_group]["params"]), norm_groups
    with pytest.raises(ValueError, match="schedule.norm_groups"):
        build_optimizer(net.named_parameters(), {**optim, "norm_groups": "bn"}, total_batch=16, steps_per_epoch=3)
