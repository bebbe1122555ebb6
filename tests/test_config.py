"""Every config group option and experiment composes, resolves and fits the code it configures."""

from __future__ import annotations

import inspect

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose
from ttfnet_lightning.lit_module import TTFNetModule
from ttfnet_lightning.targets import encode_targets


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


DATA_ROOT = {"coco": ["data.datamodule.root=/nonexistent/coco"], "voc": ["data.datamodule.root=/nonexistent/voc"]}


def resolved(overrides: list[str]) -> dict:
    cfg = compose("train", overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_default_config_is_the_readme_command():
    cfg = resolved(["backbone=r18", "schedule=fast"])
    assert cfg["data"]["name"] == "shapes"
    assert cfg["backbone"]["name"] == "r18"
    assert cfg["schedule"]["max_epochs"] == 12 and cfg["schedule"]["milestones"] == [9, 11]
    assert cfg["kernel"]["alpha"] == cfg["kernel"]["beta"] == 0.54
    assert cfg["trainer"]["gradient_clip_val"] == 35.0
    assert cfg["model"]["deformable"] is True


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in ("backbone", "schedule", "kernel", "data", "trainer", "logger") for o in options(g)]
)
def test_every_group_option_composes(group, option):
    cfg = resolved([f"{group}={option}", *DATA_ROOT.get(option if group == "data" else "", [])])
    assert cfg["name"]
    assert cfg["trainer"]["max_epochs"] == cfg["schedule"]["max_epochs"]
    assert cfg["data"]["datamodule"]["augment"] == cfg["schedule"]["augment"]


def test_schedules_match_the_paper():
    got = {s: resolved([f"schedule={s}"])["schedule"] for s in ("fast", "2x", "10x")}
    assert (got["fast"]["max_epochs"], got["fast"]["milestones"], got["fast"]["augment"]) == (12, [9, 11], False)
    assert (got["2x"]["max_epochs"], got["2x"]["milestones"], got["2x"]["augment"]) == (24, [18, 22], False)
    assert (got["10x"]["max_epochs"], got["10x"]["milestones"], got["10x"]["augment"]) == (120, [90, 110], True)
    coco = ["data=coco", "data.datamodule.root=/x"]
    r18, d53 = resolved(coco)["schedule"], resolved(["backbone=d53", *coco])["schedule"]
    assert (r18["lr"], r18["reference_batch"], r18["scale_lr"]) == (0.016, 128, True)
    assert (d53["lr"], d53["reference_batch"]) == (0.015, 96)
    # the built-in data (from scratch, CPU budget) uses the paper LR per 16 images
    assert resolved([])["schedule"]["reference_batch"] == 16


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes(option):
    cfg = resolved([f"experiment={option}", "++data.datamodule.root=/some/where"])
    assert cfg["name"]


@pytest.mark.parametrize("option", options("kernel"))
def test_kernel_presets_are_encoder_options(option):
    kernel = resolved([f"kernel={option}"])["kernel"]
    kernel.pop("name")
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, -1]])
    heatmap, box_target, reg_weight = encode_targets(boxes, labels, num_classes=3, output_size=(16, 16), **kernel)
    assert heatmap.max() == 1.0 and reg_weight.sum() > 0


def test_model_keys_are_module_arguments():
    cfg = compose("train")
    params = inspect.signature(TTFNetModule.__init__).parameters
    for key in cfg.model:
        assert key in params, f"model.{key} is not a TTFNetModule argument"
    for key in ("lr", "reference_batch", "scale_lr", "momentum", "weight_decay", "warmup_steps", "warmup_ratio", "milestones", "gamma"):
        assert key in cfg.schedule and key in params


@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_tool_configs_compose(name):
    cfg = compose(name, ["ckpt=x.ckpt", "input=img.jpg"] if name == "predict" else ["ckpt=x.ckpt"])
    OmegaConf.to_container(cfg, resolve=True)
