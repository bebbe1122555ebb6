"""``method=centernet``: the config group, a tiny training run through ``train(cfg)``, the checkpoint
(``load_model`` rebuilds CenterNet) and the export's refusal."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_TRAIN, compose
from ttfnet_lightning.core.models.head import CenterNetHead, TTFHead
from ttfnet_lightning.training.lit_module import TTFNetModule


class DM:
    num_classes, class_names, input_size, label_to_cat_id, batch_size = 3, ["a", "b", "c"], [64, 64], None, 8


def test_method_group_sets_centernet_and_its_head():
    from ttfnet_lightning.training.run import build_module

    default = OmegaConf.to_container(compose("train", []), resolve=True)
    assert default["model"]["method"] == "ttfnet" and default["model"]["heatmap_convs"] == 2
    assert not default["name"].endswith("centernet")
    for backbone in ("r18", "r34"):
        cfg = compose("train", [f"backbone={backbone}", "schedule=fast", "method=centernet"])
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert plain["model"]["method"] == "centernet"
        assert (plain["model"]["heatmap_convs"], plain["model"]["heatmap_channels"]) == (1, 64)
        assert plain["backbone"]["box_convs"] == 1  # also for r34 (whose TTFNet head has 2)
        assert plain["name"] == f"{backbone}-fast-shapes-centernet"
        module = build_module(cfg, DM())
        assert module.hparams.net["method"] == "centernet" and isinstance(module.net.head, CenterNetHead)
        assert module.objective.terms == ("loss_heatmap", "loss_wh", "loss_offset")
    assert isinstance(build_module(compose("train", []), DM()).net.head, TTFHead)


def test_unknown_method_is_refused_naming_the_key():
    from ttfnet_lightning.training.run import build_module

    # (fcos, retinanet, ssdlite, faster_rcnn: torchvision's detectors, tests/training/test_peer_training.py)
    with pytest.raises(ValueError, match=r"model\.method must be one of \('ttfnet', 'centernet', 'fcos', .*got 'yolo'"):
        build_module(compose("train", ["model.method=yolo"]), DM())
    with pytest.raises(ValueError, match="model.box_convention=released"):
        TTFNetModule(net={"method": "centernet"}, decode={"box_convention": "released"}, data_info={"num_classes": 2})


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_centernet_training_run_logs_its_losses_and_checkpoints_a_centernet_model(tmp_path, monkeypatch):
    import ttfnet_lightning.training.run as run_mod
    from ttfnet_lightning.deploy.export import export_model
    from ttfnet_lightning.training.checkpoints import load_model

    built = []
    real_build = run_mod.build_module
    monkeypatch.setattr(run_mod, "build_module", lambda cfg, dm: built.append(real_build(cfg, dm)) or built[-1])
    overrides = [*TINY_TRAIN, "method=centernet", "trainer.log_every_n_steps=1", f"output_dir={tmp_path}"]
    run_mod.train(compose("train", overrides))

    rows = _rows(tmp_path / "metrics.csv")
    for term in ("train/loss", "train/loss_heatmap", "train/loss_wh", "train/loss_offset"):
        values = [float(r[term]) for r in rows if r.get(term)]
        assert values and all(math.isfinite(v) for v in values), term
    assert not any(r.get("train/loss_box") for r in rows)
    aps = [float(r["val/AP"]) for r in rows if r.get("val/AP")]
    assert len(aps) == 2 and all(math.isfinite(v) and v >= 0 for v in aps)  # one validation per epoch

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    loaded = load_model(ckpt)
    assert loaded.hparams.net["method"] == "centernet" and isinstance(loaded.net.head, CenterNetHead)
    trained = built[0].cpu().eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    meta = [{"orig_size": (128, 96)}, {"orig_size": (64, 64)}]
    with torch.no_grad():
        out_t, out_l = trained(trained.normalize(images)), loaded(loaded.normalize(images))
        dets_t = trained.decode(*out_t, meta, (64, 64))
        dets_l = loaded.decode(*out_l, meta, (64, 64))
    assert all(torch.equal(a, b) for a, b in zip(out_t, out_l))
    for a, b in zip(dets_t, dets_l):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ValueError, match="export supports method=ttfnet; this checkpoint is centernet"):
        export_model(ckpt, tmp_path / "model.pt", format="torchscript")
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.json").exists()
