"""The W&B logger (training/wandb_logger.py): every config key once, the best val/AP in the
summary, the model-artifact option; read back from real offline run files."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tracking import read_offline_run

from conftest import compose
from ttfnet_lightning.training.tracking import build_loggers
from ttfnet_lightning.training.wandb_logger import (
    FlatWandbLogger,
    define_wandb_metrics,
    flatten_config,
    wandb_config,
)


def test_wandb_config_drops_hydra_keys_and_wiring_copies():
    cfg = compose("train", ["logger=wandb", "kernel.beta=0.3", "schedule.max_epochs=3"])
    flat, sent = flatten_config(cfg), wandb_config(cfg)
    dropped = set(flat) - set(sent)
    assert {k for k in flat if k.endswith("_target_")} <= dropped  # trainer, data.datamodule, logger.wandb
    # conf/train.yaml's copies into the Trainer/DataModule/logger arguments: sent under their own key only
    copies = {"trainer.max_epochs", "trainer.gradient_clip_val", "data.datamodule.augment", "logger.wandb.name"}
    assert copies <= dropped and sent["schedule.max_epochs"] == 3 and sent["schedule.augment"] is False
    assert dropped == {k for k in flat if k.endswith("_target_")} | copies | {
        "logger.wandb.project",
        "logger.wandb.group",
        "logger.wandb.tags",
    }
    # a value set by hand is not a copy: kept
    own = wandb_config(compose("train", ["trainer.max_epochs=5"]))
    assert own["trainer.max_epochs"] == 5 and sent["kernel.beta"] == 0.3 and sent["backbone.name"] == "r18"


def _offline_logger(tmp_path, **kw) -> FlatWandbLogger:
    return FlatWandbLogger(project="t", save_dir=str(tmp_path), offline=True, mode="offline", **kw)


def test_summary_keeps_the_best_ap_and_where_it_was_reached(tmp_path, monkeypatch):
    """val/AP 10, 50, 30 at steps 100, 200, 300: summary val/AP max 50 (not the last 30), reached
    at step 200 after 0.2 training hours; the module's hparams are not added to the config."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = _offline_logger(tmp_path)
    lg.log_config(compose("train", ["logger=wandb"]))
    define_wandb_metrics(lg)
    lg.log_hyperparams({"net": {"backbone": "r18"}, "optim": {"lr": 0.1}})  # Lightning's call: left out
    for i, ap in enumerate([10.0, 50.0, 30.0], start=1):
        hours = 0.1 * i
        lg.log_metrics({"val/AP": ap, "val/AP50": ap + 5, "time/train_hours": hours, "time/step": 100.0 * i}, step=i)
    run_dir = Path(lg.experiment.dir).parent  # <save_dir>/wandb/offline-run-*/files
    lg.experiment.finish()
    run = read_offline_run(run_dir)
    assert run["summary"]["val/AP"] == {"max": 50.0} and run["summary"]["val/AP50"] == {"max": 55.0}
    assert run["summary"]["best/val/AP"] == 50.0 and run["summary"]["best/step"] == 200
    assert run["summary"]["best/train_hours"] == pytest.approx(0.2)
    assert "net.backbone" not in run["config"] and "optim.lr" not in run["config"]
    assert run["config"]["kernel.beta"] == 0.54


def test_log_model_is_on_online_off_offline_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _offline_logger(tmp_path)._log_model is False
    asked = _offline_logger(tmp_path, log_model=True)  # Lightning alone refuses offline + log_model
    assert asked._log_model is True and asked._wandb_init["mode"] == "offline"
    online = FlatWandbLogger(project="t", save_dir=str(tmp_path), offline=False)
    assert online._log_model is True
    with pytest.raises(ValueError, match=r"logger\.wandb\.log_model='all'"):
        _offline_logger(tmp_path, log_model="all")
    # through the config: logger.wandb.log_model (null by default)
    cfg = compose("train", ["logger=wandb", f"output_dir={tmp_path}"])
    assert cfg.logger.wandb.log_model is None
    (lg,) = [lg for lg in build_loggers(cfg, tmp_path) if isinstance(lg, FlatWandbLogger)]
    assert lg._log_model is False  # offline here


def test_only_the_monitored_checkpoint_is_logged(tmp_path, monkeypatch):
    """last.ckpt and latest-step*.ckpt (no monitor) are not registered for the artifact."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = _offline_logger(tmp_path, log_model=True)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/AP", mode="max")
    lg.after_save_checkpoint(ModelCheckpoint(dirpath=tmp_path, filename="last"))
    lg.after_save_checkpoint(best)
    assert list(lg._checkpoint_callbacks.values()) == [best]
