"""Every config group option and experiment composes, resolves and fits the code it configures."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose
from ttfnet_lightning.core.targets import encode_targets
from ttfnet_lightning.training.lit_module import TTFNetModule


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


DATA_ROOT = {
    "coco": ["data.datamodule.root=/nonexistent/coco"],
    "voc": ["data.datamodule.root=/nonexistent/voc"],
    "coco_stream": ["data.datamodule.input_dir=/nonexistent/stream"],
}


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
    "group,option",
    [(g, o) for g in ("backbone", "schedule", "kernel", "data", "trainer", "logger") for o in options(g)],
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


def _differences(own: object, got: object, key: str = "") -> list[str]:
    """Where the composed ``got`` does not hold what the file's ``own`` sets (interpolations aside)."""
    if isinstance(own, str) and "${" in own:
        return []
    if isinstance(own, dict):
        if not isinstance(got, dict):
            return [f"{key}: a mapping in the file, {got!r} after composing"]
        return [
            d
            for k, v in own.items()
            for d in (
                _differences(v, got[k], f"{key}.{k}".lstrip("."))
                if k in got
                else [f"{key}.{k}: not a key of the composed config"]
            )
        ]
    return [] if own == got else [f"{key}: the file sets {own!r}, composed {got!r}"]


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes_with_the_values_it_sets(option):
    """Each experiment composes, and every value its file sets (outside ``defaults`` and ``hydra``,
    interpolations aside) is the composed config's: an experiment whose setting a later default
    overrides, or one misspelt into a key nothing reads, fails here."""
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{option}.yaml"), resolve=False)
    own = {k: v for k, v in own.items() if k not in ("defaults", "hydra")}
    sets_root = "root" in own.get("data", {}).get("datamodule", {})
    cfg = resolved([f"experiment={option}", *([] if sets_root else ["++data.datamodule.root=/some/where"])])
    assert cfg["name"] and own, f"experiment {option} sets nothing of its own"
    assert _differences(own, cfg) == []


KERNEL_BASE = {
    "alpha": 0.54,
    "beta": 0.54,
    "wh_gaussian": True,
    "gaussian_weight": None,
    "area_weight": "log",
    "aspect_ratio": True,
    "class_aware": False,  # TTFNet's released kernel (the paper's alpha = beta = 0.54)
    "radius_formula": "centernet",
    "min_overlap": 0.7,
}  # the schema's defaults, used by aspect_ratio=false
KERNEL_CHANGES = {
    "ttfnet": {},
    "class_aware": {"class_aware": True},
    "isotropic": {"aspect_ratio": False},
    "norm": {"area_weight": "norm"},
    "rect": {"wh_gaussian": False},
    "uniform": {"gaussian_weight": False},
}


def _encode(**kernel):
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0], [20.0, 10.0, 60.0, 62.0], [0, 0, 0, 0]]])  # overlapping, not square
    labels = torch.tensor([[1, 2, -1]])
    return encode_targets(boxes, labels, num_classes=3, output_size=(16, 16), **kernel)


@pytest.mark.parametrize("option", options("kernel"))
def test_kernel_presets_are_encoder_options(option):
    """Each preset is TTFNet's kernel with its one documented change, and that change reaches the
    encoder: its targets differ from the released kernel's (a preset that changed nothing fails)."""
    kernel = resolved([f"kernel={option}"])["kernel"]
    assert kernel.pop("name") == option
    assert kernel == {**KERNEL_BASE, **KERNEL_CHANGES[option]}, option
    heatmap, box_target, reg_weight = _encode(**kernel)
    assert heatmap.max() == 1.0 and reg_weight.sum() > 0
    if option != "ttfnet":
        ref = _encode(**KERNEL_BASE)
        same = all(a.shape == b.shape and torch.allclose(a, b) for a, b in zip((heatmap, box_target, reg_weight), ref))
        assert not same, f"kernel={option} encodes the same targets as kernel=ttfnet"


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.neck_channel=[1]", "model.neck_channel"),
        ("kernel.beta=abc", "kernel.beta"),
        ("schedule.lr=abc", "schedule.lr"),
        ("model.deformable=maybe", "model.deformable"),
        ("backbone.frozen_stages=1.5", "backbone.frozen_stages"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types_at_compose_time(override, key):
    with pytest.raises(Exception) as info:
        compose("train", [override])
    text = f"{info.value} {info.value.__cause__}"
    assert key in text, text


def test_a_typo_in_a_config_file_is_rejected_naming_the_key():
    from ttfnet_lightning.training.config import TrainConfig

    schema = OmegaConf.structured(TrainConfig)
    with pytest.raises(Exception, match="bta"):
        OmegaConf.merge(schema, {"kernel": {"bta": 0.3}})  # what an experiment/ablation file with a typo does
    # the open nodes belong to the objects they instantiate
    OmegaConf.merge(schema, {"data": {"datamodule": {"anything": 1}}, "trainer": {"precision": "bf16-mixed"}})


def test_groups_do_not_read_each_other():
    """Only train.yaml wires one group's value into another (and experiment/protocol/ablation
    presets, which are global by design)."""
    groups = ("backbone", "schedule", "kernel", "data", "trainer", "logger", "model", "callbacks")
    for group in ("backbone", "schedule", "kernel", "data", "trainer", "logger"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            text = path.read_text()
            assert "@package _global_" not in text, f"{path} changes other groups"
            refs = [g for g in groups if g != group and "${" + g + "." in text]
            assert not refs, f"{path} reads {refs}"


def test_data_preset_lr_reference_batch_is_wired_in_train_yaml():
    assert resolved([])["schedule"]["reference_batch"] == 16  # data/shapes.yaml: reference_batch 16
    assert resolved(["data.reference_batch=null"])["schedule"]["reference_batch"] == 128  # the backbone's
    assert resolved(["data=coco", "data.datamodule.root=/x"])["schedule"]["reference_batch"] == 128
    assert resolved(["backbone=d53", "data=coco", "data.datamodule.root=/x"])["schedule"]["reference_batch"] == 96
    assert resolved(["schedule.reference_batch=64"])["schedule"]["reference_batch"] == 64


def test_schema_matches_the_code_it_configures():
    """Every schema field is an argument of what it configures, and every argument of the network,
    the loss and the encoder has a field (a setting cannot exist in one place only)."""
    from ttfnet_lightning.core.losses import TTFNetLoss
    from ttfnet_lightning.core.models import TTFNet
    from ttfnet_lightning.training.config import KernelConfig, LossConfig, NetConfig

    def args(fn, *skip):
        return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY} - set(skip)

    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert fields(NetConfig) == args(TTFNet.__init__, "num_classes", "class_aware")
    assert fields(LossConfig) == args(TTFNetLoss.__init__, "stride")
    assert fields(KernelConfig) - {"name"} == args(encode_targets, "num_classes", "output_size", "stride", "chunk_size")


def test_module_arguments_are_the_config_groups(tmp_path):
    from ttfnet_lightning.training.config import (
        DataInfo,
        DecodeConfig,
        KernelConfig,
        LossConfig,
        NetConfig,
        OptimConfig,
    )
    from ttfnet_lightning.training.run import build_module

    class DM:
        num_classes, class_names, input_size, label_to_cat_id, batch_size = 3, ["a", "b", "c"], [64, 64], None, 8

    cfg = compose("train", ["model.topk=7", "kernel.beta=0.3", "schedule.lr=0.01", "model.deformable=false"])
    module = build_module(cfg, DM())
    hp = module.hparams
    for group, cls in [
        ("net", NetConfig),
        ("kernel", KernelConfig),
        ("loss", LossConfig),
        ("optim", OptimConfig),
        ("decode", DecodeConfig),
        ("data_info", DataInfo),
    ]:
        assert set(hp[group]) == {f.name for f in dataclasses.fields(cls)}, group
    assert (hp.decode["topk"], hp.kernel["beta"], hp.optim["lr"], hp.net["deformable"]) == (7, 0.3, 0.01, False)
    assert module.num_classes == 3 and module.input_size == (64, 64) and hp.data_info["batch_size"] == 8
    with pytest.raises(TypeError, match="'wh_scal'"):
        TTFNetModule(net={"wh_scal": 2.0}, data_info={"num_classes": 3})


def test_checkpoints_of_the_previous_release_still_load(tmp_path):
    """Flat hyper-parameters (the previous TTFNetModule signature) load into the groups."""
    module = TTFNetModule(
        net={"deformable": False}, data_info={"num_classes": 3, "input_size": [64, 64]}, decode={"topk": 5}
    )
    old_hparams = {  # what a checkpoint of the previous release stores
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "input_size": [64, 64],
        "label_to_cat_id": None,
        "backbone": "r18",
        "pretrained": False,
        "weights": None,
        "frozen_stages": 1,
        "neck_channels": [256, 128, 64],
        "shortcut_convs": [3, 2, 1],
        "deformable": False,
        "deform_impl": "native",
        "heatmap_convs": 2,
        "heatmap_channels": 128,
        "box_convs": None,
        "box_channels": 64,
        "wh_scale": 16.0,
        "kernel": {"alpha": 0.54, "beta": 0.3},
        "wloc": 1.0,
        "wreg": 5.0,
        "plus_one": True,
        "lr": 0.02,
        "reference_batch": 16,
        "scale_lr": True,
        "momentum": 0.9,
        "weight_decay": 4e-4,
        "bias_lr_mult": 2.0,
        "bias_decay": 0.0,
        "warmup_steps": 500,
        "warmup_ratio": 0.2,
        "milestones": [9, 11],
        "gamma": 0.1,
        "topk": 5,
        "score_threshold": 0.01,
        "results_json": True,
    }
    import pytorch_lightning as pl

    path = tmp_path / "old.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"] = old_hparams
    torch.save(ckpt, path)
    loaded = TTFNetModule.load_from_checkpoint(str(path), map_location="cpu")
    assert (
        loaded.hparams.optim["lr"] == 0.02
        and loaded.hparams.kernel["beta"] == 0.3
        and loaded.hparams.decode["topk"] == 5
    )
    assert loaded.class_names == ["a", "b", "c"] and loaded.hparams.kernel["alpha"] == 0.54
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(TypeError, match="'lrate'"):
        TTFNetModule(num_classes=3, lrate=0.1)


def test_evaluate_config_needs_no_training_settings():
    cfg = compose("evaluate", ["ckpt=x.ckpt"])
    assert "schedule" not in cfg and "augment" not in cfg.data.datamodule


@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_tool_configs_compose(name):
    """The tool configs resolve, carry the given checkpoint and their documented defaults (the
    optimised fp32 inference path, no compile), and keep their runs out of the training output
    folders: Hydra's run dir is ``<run>/evaluate/<date>`` or ``<output>/.hydra_run``, never
    train's ``outputs/<name>/<date>``, and the working directory is not changed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    ckpt = "runs/r1/checkpoints/last.ckpt"
    overrides = ["ckpt=x.ckpt", "input=img.jpg", "output=/some/preds"] if name == "predict" else [f"ckpt={ckpt}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=overrides, return_hydra_config=True)
    run_dir, chdir, subdir = str(cfg.hydra.run.dir), cfg.hydra.job.chdir, cfg.hydra.output_subdir
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["ckpt"] == ("x.ckpt" if name == "predict" else ckpt) and chdir is False
    if name == "predict":
        assert run_dir == "/some/preds/.hydra_run" and subdir is None
        assert plain["input"] == "img.jpg" and plain["output"] == "/some/preds" and plain["draw_threshold"] is None
        assert plain["inference"] == {"optimize": True, "precision": "fp32", "compile": False}
        assert plain["device"] == "auto" and plain["draw_heatmap"] is False
    else:
        # beside the checkpoint's run, its data by default (the data config the checkpoint carries)
        assert run_dir.startswith("runs/r1/evaluate/") and len(run_dir) == len(
            "runs/r1/evaluate/2026-01-01_00-00-00"
        ), run_dir
        assert "schedule" not in plain and plain["data"]["name"] == "from_checkpoint"
        assert plain["inference"] == {"optimize": True, "precisions": ["fp32"], "compile": False}
        assert plain["input_size"] is None and plain["output_dir"] is None and plain["speed_iters"] == 20


@pytest.mark.parametrize(
    "script,args",
    [
        ("ttfnet-train", ["backbone=r34"]),
        ("ttfnet-evaluate", ["ckpt=x.ckpt"]),
        ("ttfnet-predict", ["ckpt=x.ckpt", "input=x.jpg"]),
    ],
)
def test_console_scripts_find_the_packaged_configs(script, args, tmp_path):
    """The console scripts (pyproject [project.scripts]) compose from the installed package's
    configs, from any working directory."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / script
    if not exe.is_file():
        pytest.skip(f"{script} not installed next to {sys.executable} (pip install -e . installs it)")
    proc = subprocess.run([str(exe), *args, "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("backbone:\n  name: r34" in proc.stdout) if script == "ttfnet-train" else ("ckpt: x.ckpt" in proc.stdout)
