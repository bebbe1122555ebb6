"""torchvision's detectors as peers of TTFNet (``method=fcos|retinanet|ssdlite|faster_rcnn``,
``training/peer_module.py``): the config groups, one training step and a validation of each on the built-in
data, the checkpoint (``load_model`` rebuilds the peer), what refuses a peer (export, export_backbone, TTFNetModule),
and one end-to-end ``python -m ttfnet_lightning.train method=fcos`` run with ``evaluate`` on its checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import TINY_TRAIN, compose, subprocess_env
from ttfnet_lightning.core.models.peers import PEERS
from ttfnet_lightning.training.lit_module import TTFNetModule
from ttfnet_lightning.training.peer_module import PeerDetectorModule, peer_hparams

# the built-in shapes data, small: 64 px, 8 training images in batches of 4, 4 validation images
SMALL_DATA = [
    "data.datamodule.input_size=[64,64]",
    "data.datamodule.num_train=8",
    "data.datamodule.num_val=4",
    "data.datamodule.batch_size=4",
    "data.datamodule.num_workers=0",
    "schedule.warmup_steps=1",
]


class DM:
    num_classes, class_names, input_size, label_to_cat_id, batch_size = 3, ["a", "b", "c"], [64, 64], None, 4


@pytest.mark.parametrize("name", PEERS)
def test_method_group_selects_the_peer_and_its_recipe(name):
    from ttfnet_lightning.training.run import build_module

    plain = OmegaConf.to_container(compose("train", [f"method={name}"]), resolve=True)
    assert plain["model"]["method"] == name
    assert plain["peer"] == {"pretrained_backbone": False, "trainable_layers": None}
    assert plain["name"].startswith(name.replace("ssdlite", "ssdlite_mobilenetv3")) and "r18-" not in plain["name"]
    lr, batch = {"fcos": (0.01, 16), "retinanet": (0.01, 16), "faster_rcnn": (0.02, 16), "ssdlite": (0.15, 192)}[name]
    assert (plain["schedule"]["lr"], plain["schedule"]["reference_batch"]) == (lr, batch)
    assert plain["schedule"]["bias_lr_mult"] == 1.0 and plain["schedule"]["max_epochs"] == 12  # the schedule's
    module = build_module(compose("train", [f"method={name}", "peer.trainable_layers=5"]), DM())
    assert isinstance(module, PeerDetectorModule) and module.hparams.peer["name"] == name
    assert module.hparams.peer["trainable_layers"] == 5 and module.hparams.decode["topk"] == 100
    assert module.net.input_size == (64, 64) and module.num_classes == 3


def test_ttfnet_refuses_a_peer_method_and_unknown_methods_list_every_method():
    from ttfnet_lightning.training.run import build_module

    with pytest.raises(ValueError, match="model.method=fcos is torchvision's detector: PeerDetectorModule"):
        TTFNetModule(net={"method": "fcos"}, data_info={"num_classes": 2})
    with pytest.raises(ValueError, match=r"model\.method must be one of \('ttfnet', 'centernet', 'fcos', .*got 'yolo'"):
        build_module(compose("train", ["model.method=yolo"]), DM())
    with pytest.raises(ValueError, match="decodes continuous boxes only"):
        PeerDetectorModule(peer={"name": "fcos"}, decode={"box_convention": "released"}, data_info={"num_classes": 2})
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['net'\]"):
        peer_hparams({"peer": {"name": "fcos"}, "net": {}})  # a checkpoint's hyper-parameters of both modules
    with pytest.raises(ValueError, match=r"must be one of \('fcos', 'retinanet', 'ssdlite', 'faster_rcnn'\)"):
        peer_hparams({"peer": {"name": "ttfnet"}})


def _step_and_validate(name: str, tmp_path, *overrides: str) -> tuple[PeerDetectorModule, dict, pl.Trainer]:
    """One training step and one validation batch of ``name`` on the small built-in data, through a Trainer."""
    from ttfnet_lightning.training.run import build_datamodule, build_module

    cfg = compose("train", [*SMALL_DATA, f"method={name}", *overrides])
    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    if cfg.speed.channels_last:
        module.use_channels_last()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    return module, before, trainer


@pytest.mark.parametrize("name", PEERS)
def test_one_training_step_changes_the_weights_and_a_validation_logs_ap(name, tmp_path):
    module, before, trainer = _step_and_validate(name, tmp_path)
    after = module.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    trainable = [k for k, p in module.named_parameters() if p.requires_grad]
    assert trainer.global_step == 1 and len(changed) > len(trainable) // 2, (len(changed), len(trainable))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("val/AP", "val/AP50", "val/AP75", "val/APs", "train/loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["val/AP50"] <= 100.0 and "val/loss" not in metrics  # torchvision: losses in train mode only
    terms = [k for k in metrics if k.startswith("train/loss_")]
    assert terms and all(math.isfinite(metrics[k]) for k in terms), metrics
    assert sum(metrics[k] for k in terms) == pytest.approx(metrics["train/loss"], rel=1e-4)


def test_channels_last_trains_and_validates(tmp_path):
    """``speed.channels_last=true`` (here under the machine's default precision, bf16-mixed on a CPU with bf16)."""
    module, _, trainer = _step_and_validate("ssdlite", tmp_path, "speed.channels_last=true")
    assert module.channels_last and math.isfinite(float(trainer.callback_metrics["val/AP50"]))


@torch.no_grad()
def test_detections_are_in_original_pixels_and_logging_callbacks_skip_the_heatmap():
    from ttfnet_lightning.training.wandb_media import LogValPredictions

    torch.manual_seed(0)
    module = PeerDetectorModule(peer={"name": "retinanet"}, data_info={"num_classes": 3, "input_size": [64, 64]}).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    meta = [{"orig_size": (128, 96), "image_id": 0}, {"orig_size": (64, 64), "image_id": 1}]
    raw, none = module(module.normalize(images))
    assert none is None
    dets = module.decode(raw, none, meta, (64, 64))
    assert torch.allclose(dets[0]["boxes"], raw[0]["boxes"] * torch.tensor([1.5, 2.0, 1.5, 2.0]))
    assert torch.equal(dets[1]["boxes"], raw[1]["boxes"]) and torch.equal(dets[0]["labels"], raw[0]["labels"])
    predicted = module.predict_step({"images": module.normalize(images), "meta": meta}, 0)
    assert [len(d["boxes"]) for d in predicted] == [len(d["boxes"]) for d in dets]
    assert module.predict_step({"images": torch.zeros(0, 3, 64, 64)}, 0) == []
    assert LogValPredictions().heatmaps(module, {"images": images}, images) == ([], [])


def test_checkpoint_loads_the_peer_and_export_and_backbone_export_refuse_it(tmp_path):
    from ttfnet_lightning.deploy.export import export_model
    from ttfnet_lightning.training.checkpoints import export_backbone_weights, load_model, module_hparams

    module, _, trainer = _step_and_validate("faster_rcnn", tmp_path)
    ckpt = tmp_path / "peer.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_model(ckpt)
    assert isinstance(loaded, PeerDetectorModule) and not loaded.training
    assert dict(loaded.hparams) == module_hparams(dict(module.hparams)) == dict(module.hparams)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = module.eval()(module.normalize(images))[0], loaded(loaded.normalize(images))[0]
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in ("boxes", "scores", "labels"))
    with pytest.raises(ValueError, match="export supports method=ttfnet; this checkpoint is faster_rcnn"):
        export_model(ckpt, tmp_path / "model.pt", format="torchscript")
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.json").exists()
    with pytest.raises(ValueError, match="torchvision's detector"):
        export_backbone_weights(loaded, tmp_path / "backbone.pth")
    from ttfnet_lightning.training.run import build_module

    with pytest.raises(ValueError, match="export_backbone=.*torchvision's detector"):
        build_module(compose("train", ["method=fcos", f"export_backbone={tmp_path / 'b.pth'}"]), DM())


def test_train_command_end_to_end_then_load_model_and_evaluate(tmp_path):
    """``python -m ttfnet_lightning.train method=fcos`` with tiny settings (a subprocess, as a user runs it):
    results.json with val/AP50, the end-of-run analysis, and evaluate on its checkpoint."""
    from ttfnet_lightning.training.checkpoints import load_model
    from ttfnet_lightning.training.evaluate import evaluate

    out = tmp_path / "run"
    overrides = [o for o in TINY_TRAIN if not o.startswith(("schedule.max_epochs", "analysis"))]
    cmd = [
        sys.executable,
        "-m",
        "ttfnet_lightning.train",
        "method=fcos",
        *overrides,
        "schedule.max_epochs=1",
        "trainer.limit_train_batches=2",
        "logger=none",
        f"output_dir={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and math.isfinite(results["metrics"]["val/AP50"])
    assert (out / "analysis" / "summary.json").is_file()  # the run's error analysis ran on the peer's detections
    assert OmegaConf.load(out / "config_resolved.yaml").name == "fcos_r18fpn-fast-shapes"
    ckpt = out / "checkpoints" / "last.ckpt"
    assert isinstance(load_model(ckpt), PeerDetectorModule)
    metrics = evaluate(
        compose("evaluate", [f"ckpt={ckpt}", "trainer=cpu", "speed_iters=2", f"output_dir={tmp_path / 'eval'}"])
    )
    assert metrics["num_images"] == 8 and 0.0 <= metrics["val/AP50"] <= 100.0
    assert metrics["model_only_images_per_s_batch1"] > 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["val/AP50"] == metrics["val/AP50"]
