"""An EMA of the weights (ema=ema|short; ttfnet_lightning.training.ema.EMA): the average's values (weights and
BN buffers) against one computed by hand, validation on the average, checkpoints holding the average (also one
written during a validation), ``load_model`` giving the average, a resumed run equal to an uninterrupted one, and
its place among the run's callbacks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_TRAIN, compose
from ttfnet_lightning.training.callbacks import FiniteGuard
from ttfnet_lightning.training.checkpoints import load_model
from ttfnet_lightning.training.ema import EMA, ema_decay
from ttfnet_lightning.training.run import build_callbacks, train
from ttfnet_lightning.training.runs import CONFIG_FILE, RunMismatchError, check_same_config


def test_the_decay_ramps_up_from_the_start_step():
    assert ema_decay(0, decay=0.9, ramp_steps=0, start_step=0) == 0.9
    assert ema_decay(4, decay=0.9, ramp_steps=0, start_step=5) == 0.0  # before the start: a copy
    assert ema_decay(5, decay=0.9, ramp_steps=10, start_step=5) == pytest.approx(0.9 * (1 - math.exp(-0.1)))
    assert ema_decay(10_000, decay=0.9, ramp_steps=10, start_step=5) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(decay=1.0), "ema.decay"), (dict(ramp_steps=-1), "ema.ramp_steps"), (dict(every_n_steps=0), "ema.every")],
)
def test_bad_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMA(**kwargs)


def test_from_config_is_off_unless_enabled():
    assert EMA.from_config(None) is None and EMA.from_config({"enabled": False, "decay": 0.5}) is None
    ema = EMA.from_config({"enabled": True, "decay": 0.5, "ramp_steps": 0, "start_step": 2, "every_n_steps": 3})
    assert (ema.decay, ema.ramp_steps, ema.start_step, ema.every_n_steps) == (0.5, 0, 2, 3)


class Tiny(pl.LightningModule):
    """A linear layer, BN and a head; validation records the first layer's weights it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        self.validated: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.validated.append((self.global_step, self.net[0].weight.detach().clone()))
        return F.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


class HandAverage(pl.Callback):
    """The average by hand from the weights after each optimiser step (listed before the EMA callback); saves a
    checkpoint in the middle of the last validation."""

    def __init__(self, ema: EMA, mid_ckpt: Path, last_epoch: int) -> None:
        self.ema, self.mid_ckpt, self.last_epoch = ema, mid_ckpt, last_epoch
        self.average: dict[str, torch.Tensor] | None = None
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        d = ema_decay(step, decay=self.ema.decay, ramp_steps=self.ema.ramp_steps, start_step=self.ema.start_step)
        if self.average is None:
            self.average = dict(self.weights)
        else:
            self.average = {
                k: (d * a + (1 - d) * self.weights[k]) if a.is_floating_point() else self.weights[k]
                for k, a in self.average.items()
            }
        self.by_step[trainer.global_step] = self.average

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == self.last_epoch and batch_idx == 1 and not trainer.sanity_checking:
            trainer.save_checkpoint(self.mid_ckpt)  # as an interruption during validation would


def _fit_tiny(tmp_path: Path, ema: EMA) -> tuple[Tiny, HandAverage, pl.Trainer]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    hand = HandAverage(ema, tmp_path / "mid.ckpt", last_epoch=2)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=[hand, ema, ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1)],
    )
    model = Tiny()
    trainer.fit(model, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8))
    return model, hand, trainer


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_average_validation_and_checkpoints_hold_the_average_of_weights_and_bn_buffers(tmp_path):
    ema = EMA(decay=0.7, ramp_steps=3, start_step=2)
    model, hand, trainer = _fit_tiny(tmp_path, ema)
    # validation ran on the average of its time
    assert [s for s, _ in model.validated] == [4, 8, 12]
    for step, weight in model.validated:
        assert torch.allclose(weight, hand.by_step[step]["net.0.weight"], atol=1e-6)
        assert not torch.allclose(weight, hand.weights["net.0.weight"], atol=1e-3) or step == 12
    # the checkpoint: state_dict = the average (BN running statistics included), current_model_state = training's
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert _close(ckpt["state_dict"], hand.average)
    assert _close(ckpt["current_model_state"], hand.weights)
    assert not torch.allclose(ckpt["state_dict"]["net.1.running_mean"], hand.weights["net.1.running_mean"])
    assert ckpt["state_dict"]["net.1.num_batches_tracked"] == hand.weights["net.1.num_batches_tracked"] == 12
    assert int(ckpt["averaging_state"]["n_averaged"]) == 12
    # one written in the middle of a validation stores the same (not the two swapped)
    mid = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    assert _close(mid["state_dict"], ckpt["state_dict"])
    assert _close(mid["current_model_state"], ckpt["current_model_state"])
    # when training ends, the module holds the average
    assert _close(model.state_dict(), hand.average)


def test_the_run_callbacks_have_the_ema_after_the_finite_guard(tmp_path):
    callbacks = build_callbacks(compose("train", [*TINY_TRAIN, "ema=short"]), tmp_path)
    kinds = [type(c) for c in callbacks]
    assert EMA in kinds and kinds.index(FiniteGuard) < kinds.index(EMA)
    ema = callbacks[kinds.index(EMA)]
    assert (ema.decay, ema.ramp_steps) == (0.99, 100)
    assert EMA not in [type(c) for c in build_callbacks(compose("train", TINY_TRAIN), tmp_path)]


EMA_RUN = [*TINY_TRAIN, "ema=ema", "ema.decay=0.5", "ema.ramp_steps=0", "exact_resume=true", "seed=3"]


def test_a_resumed_run_restores_the_average_and_ends_as_an_uninterrupted_one(tmp_path):
    train(compose("train", [*EMA_RUN, f"output_dir={tmp_path / 'a'}"]))
    train(compose("train", [*EMA_RUN, "schedule.max_epochs=1", f"output_dir={tmp_path / 'b1'}"]))
    first = tmp_path / "b1" / "checkpoints" / "last.ckpt"
    train(compose("train", [*EMA_RUN, f"ckpt_path={first}", f"output_dir={tmp_path / 'b2'}"]))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert int(b["averaging_state"]["n_averaged"]) == 4
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], a["current_model_state"][k])]
    assert len(differ) > 50  # the average is not the training weights
    # load_model (evaluate, predict, export) gives the average
    loaded = load_model(tmp_path / "a" / "checkpoints" / "last.ckpt").state_dict()
    assert all(torch.equal(loaded[k], a["state_dict"][k]) for k in a["state_dict"])


def test_runs_stored_before_the_modern_options_still_compare(tmp_path):
    resolved = lambda *o: OmegaConf.to_container(compose("train", [*TINY_TRAIN, *o]), resolve=True)  # noqa: E731
    old = resolved()
    for node in ("ema", "multiscale"):
        del old[node]
    for key in ("lr_policy", "min_lr_ratio", "flat_fraction"):
        del old["schedule"][key]
    OmegaConf.save(OmegaConf.create(old), tmp_path / CONFIG_FILE)
    check_same_config(tmp_path, resolved())  # the paper's recipe: the same run
    check_same_config(tmp_path, resolved("ema.decay=0.5"))  # EMA off: its decay changes nothing
    for override, key in [("ema=short", "ema.enabled"), ("multiscale=standard", "multiscale.scales")]:
        with pytest.raises(RunMismatchError, match=key):
            check_same_config(tmp_path, resolved(override))
    with pytest.raises(RunMismatchError, match="schedule.lr_policy"):
        check_same_config(tmp_path, resolved("schedule.lr_policy=cosine"))
