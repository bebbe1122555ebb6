"""Nothing silent (issue 8): NaN/inf stops the run, failed checkpoint writes fail it, a run that
failed before training leaves nothing to resume from, bad checkpoints give clear errors, LR
milestones are epochs of the real loader, and the training clock counts every training second."""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, compose
from ttfnet_lightning.training.run import train

# 2 batches of 4 per epoch
SMALL = [o for o in TINY_TRAIN if not o.startswith(("data.datamodule.num_train", "data.datamodule.batch_size"))] + [
    "data.datamodule.num_train=8",
    "data.datamodule.batch_size=4",
    "data.datamodule.num_val=4",
    "callbacks.checkpoint_every_n_steps=0",
]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_nan_loss_stops_the_run_with_step_terms_and_images(tmp_path):
    from ttfnet_lightning.training.lit_module import NonFiniteError

    with pytest.raises(NonFiniteError) as info:
        train(compose("train", [*SMALL, "schedule.lr=1e6", f"output_dir={tmp_path}"]))
    msg = str(info.value)
    assert "global step" in msg and "images [" in msg, msg
    ckpts = list((tmp_path / "checkpoints").glob("*.ckpt")) if (tmp_path / "checkpoints").is_dir() else []
    assert not any(p.name.startswith(("best", "interrupted")) for p in ckpts), ckpts
    for p in ckpts:  # whatever was saved holds finite weights
        state = torch.load(p, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), p


def test_nan_loss_message_names_loss_terms(tmp_path, monkeypatch):
    from ttfnet_lightning.training.lit_module import NonFiniteError, TTFNetModule

    real = TTFNetModule._losses

    def nan_losses(self, batch):
        losses, out = real(self, batch)
        if self.training and self.global_step == 1:
            losses = dict(losses, loss_box=losses["loss_box"] * float("nan"), loss=losses["loss"] * float("nan"))
        return losses, out

    monkeypatch.setattr(TTFNetModule, "_losses", nan_losses)
    with pytest.raises(NonFiniteError, match=r"global step 1 .*loss_box=nan.*images \[\d"):
        train(compose("train", [*SMALL, f"output_dir={tmp_path}"]))
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()


def _immutable(path: Path) -> bool:
    """Make a directory unwritable, also for root (chattr +i); False where that is not possible."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_unwritable_checkpoint_dir_fails_the_run(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    if not _immutable(ckpts):
        pytest.skip("cannot make a directory unwritable here (root without chattr)")
    try:
        with pytest.raises(OSError, match="checkpoint"):
            train(compose("train", [*SMALL, "schedule.max_epochs=1", f"output_dir={tmp_path}"]))
    finally:
        subprocess.run(["chattr", "-i", str(ckpts)], capture_output=True)
        ckpts.chmod(0o755)
    assert "last checkpoint" not in capsys.readouterr().out


def test_checkpoint_dir_that_cannot_be_created_fails_the_run(tmp_path, capsys):
    (tmp_path / "checkpoints").write_text("a file where the checkpoint directory should be")
    with pytest.raises(OSError, match="checkpoint"):
        train(compose("train", [*SMALL, "schedule.max_epochs=1", f"output_dir={tmp_path}"]))
    out = capsys.readouterr().out
    assert "best checkpoint" not in out and "last checkpoint" not in out


def test_failure_before_training_leaves_nothing_to_resume(tmp_path):
    with pytest.raises(Exception, match="abc"):
        train(compose("train", [*SMALL, "schedule.lr=abc", f"output_dir={tmp_path}"]))
    assert not list(tmp_path.rglob("*.ckpt")), list(tmp_path.rglob("*.ckpt"))


# 40 fixed random files: the unpickler fails on random bytes in several ways (UnpicklingError,
# EOFError, IndexError, ...), each must become the clear error (seeds 0-39 include IndexError cases)
BAD_FILES = {"empty": b"", **{f"random{i}": random.Random(i).randbytes(4096) for i in range(40)}}


@pytest.mark.parametrize("name", ["empty", "random0"])
def test_bad_checkpoint_files_give_clear_errors(tmp_path, name):
    from ttfnet_lightning.training.checkpoints import load_model
    from ttfnet_lightning.training.evaluate import evaluate

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(BAD_FILES[name])
    with pytest.raises(ValueError, match=f"checkpoint {bad}"):
        load_model(bad)
    cfg = compose("evaluate", [f"ckpt={bad}", "trainer=cpu", f"output_dir={tmp_path / 'ev'}"])
    with pytest.raises(ValueError, match="bad.ckpt"):
        evaluate(cfg)


def test_random_bytes_checkpoints_all_give_the_clear_error(tmp_path):
    from ttfnet_lightning.training.checkpoints import load_model

    kinds = set()
    for name, content in BAD_FILES.items():
        bad = tmp_path / f"{name}.ckpt"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=f"checkpoint {bad}") as info:
            load_model(bad)
        kinds.add(type(info.value.__cause__).__name__)
    assert "IndexError" in kinds, kinds  # the kind that escaped before (CI failure of 2026-11-27)


def test_lr_milestones_are_epochs_of_the_real_loader_with_max_steps(tmp_path):
    """2 batches per epoch, milestone at epoch 1, max_steps=3 of 12 epochs: the LR drops at step 2
    (before: steps per epoch were estimated as 3 // 12 -> 1, the drop came at step 1)."""
    overrides = [o for o in SMALL if not o.startswith("schedule.max_epochs")]
    train(
        compose(
            "train",
            [
                *overrides,
                "schedule.max_epochs=12",
                "trainer.max_steps=3",
                "schedule.warmup_steps=0",
                "trainer.log_every_n_steps=1",
                f"output_dir={tmp_path}",
            ],
        )
    )
    lrs = [float(r["train/lr/weights"]) for r in rows(tmp_path / "metrics.csv") if r.get("train/lr/weights")]
    assert len(lrs) == 3 and lrs[0] == lrs[1] and lrs[2] == pytest.approx(lrs[0] * 0.1), lrs


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_train_seconds_count_every_training_second(tmp_path, monkeypatch):
    """A fake clock advances 10 s per training batch and 1000 s per validation batch: with two
    validations per epoch (val_check_interval=0.5) the train clock must read 10 s x steps at every
    validation (before: it stopped after the mid-epoch validation until the next epoch), and a
    crash's interrupted.ckpt holds the running segment (before: lost)."""
    import pytorch_lightning as pl

    import ttfnet_lightning.training.callbacks as cb
    import ttfnet_lightning.training.run as train_mod

    clock = FakeClock()
    monkeypatch.setattr(cb, "_clock", clock)

    class Tick(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            clock.now += 10.0
            if trainer.global_step == 7:
                raise RuntimeError("simulated crash")

        def on_validation_batch_end(self, *args):
            clock.now += 1000.0

    build = train_mod.build_callbacks
    monkeypatch.setattr(train_mod, "build_callbacks", lambda cfg, out: [Tick(), *build(cfg, out)])
    overrides = [o for o in SMALL if not o.startswith("schedule.max_epochs")]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            compose(
                "train",
                [*overrides, "schedule.max_epochs=4", "+trainer.val_check_interval=0.5", f"output_dir={tmp_path}"],
            )
        )
    val = [r for r in rows(tmp_path / "metrics.csv") if r.get("time/step")]
    steps = [float(r["time/step"]) for r in val]
    seconds = [float(r["time/train_seconds"]) for r in val]
    assert steps == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], steps
    assert seconds == [10.0 * s for s in steps], seconds
    state = torch.load(tmp_path / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=False)
    tta = next(v for k, v in state["callbacks"].items() if k.startswith("TimeToAccuracy"))
    assert tta["train_seconds"] == 70.0, tta
