"""The training-time budget (budget.*; ttfnet_lightning.training.time_budget): the LR as a function of the fraction of
the budget used, the settings' checks, time-based validation, and a tiny run on a fake clock that stops at the
budget, follows the time-fraction LR, keeps its budget over an interruption and trains no further step once it is
spent."""

from __future__ import annotations

import csv
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY_TRAIN, compose
from ttfnet_lightning.training.run import train
from ttfnet_lightning.training.time_budget import (
    FAST_MILESTONES,
    BudgetLR,
    TrainingTimeBudget,
    budget_callbacks,
    budget_lr_factor,
    budget_trainer_kwargs,
)


# ----------------------------------------------------------------------------------------- pure functions
def test_step_policy_steps_at_the_fast_schedules_fractions_after_the_warmup():
    f = lambda t: budget_lr_factor(t, warmup_fraction=0.2, warmup_ratio=0.2)  # noqa: E731
    assert f(0.0) == pytest.approx(0.2)
    assert f(0.1) == pytest.approx(0.6)  # half the warm-up: half way from 0.2 to 1
    assert f(0.2) == 1.0 and f(0.74) == 1.0
    assert f(0.75) == pytest.approx(0.1)  # 9/12 of the budget, as epoch 9 of 12
    assert f(11 / 12 - 1e-6) == pytest.approx(0.1) and f(11 / 12) == pytest.approx(0.01)
    assert f(1.5) == pytest.approx(0.01) and f(-1.0) == pytest.approx(0.2)  # clipped to [0, 1]
    assert FAST_MILESTONES == pytest.approx((0.75, 11 / 12))


def test_cosine_policies_run_over_the_budget_with_the_warmup_on_top():
    cos = lambda t, **kw: budget_lr_factor(t, lr_policy="cosine", min_lr_ratio=0.0, **kw)  # noqa: E731
    assert cos(0.0) == 1.0 and cos(0.5) == pytest.approx(0.5) and cos(1.0) == pytest.approx(0.0)
    assert cos(0.05, warmup_fraction=0.1, warmup_ratio=0.0) == pytest.approx(0.5 * cos(0.05))
    flat = budget_lr_factor(0.4, lr_policy="flat_cosine", flat_fraction=0.5)
    assert flat == 1.0 and budget_lr_factor(0.75, lr_policy="flat_cosine", min_lr_ratio=0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"milestones": [9, 11]}, "budget.milestones are fractions"),
        ({"warmup_fraction": 1.0}, "budget.warmup_fraction"),
        ({"lr_policy": "linear"}, "schedule.lr_policy"),
    ],
)
def test_bad_settings_name_their_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        budget_lr_factor(0.5, **kwargs)


# ------------------------------------------------------------------------------------------ from the config
def test_no_budget_no_callbacks_and_no_trainer_change():
    cfg = compose("train", [])
    assert cfg.budget.train_minutes is None and cfg.budget.val_every_minutes is None
    assert budget_callbacks(cfg) == [] and budget_trainer_kwargs(cfg) == {}


def test_the_budget_builds_its_callbacks_from_budget_and_schedule():
    cfg = compose("train", ["budget.train_minutes=2", "budget.warmup_fraction=0.25", "schedule.gamma=0.5"])
    stop, lr = budget_callbacks(cfg)
    assert isinstance(stop, TrainingTimeBudget) and stop.seconds == 120.0
    assert isinstance(lr, BudgetLR) and lr.seconds == 120.0
    assert lr.policy["warmup_fraction"] == 0.25 and lr.policy["gamma"] == 0.5 and lr.policy["lr_policy"] == "step"
    assert lr.policy["milestones"] == pytest.approx([0.75, 11 / 12])
    only_stop = budget_callbacks(compose("train", ["budget.train_minutes=2", "budget.lr_by_time=false"]))
    assert [type(c) for c in only_stop] == [TrainingTimeBudget]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budget.train_minutes=-1", "budget.train_minutes must be positive"),
        ("budget.val_every_minutes=0", "budget.val_every_minutes must be positive"),
        ("budget.milestones=[0.9,0.5]", "budget.milestones must be increasing"),
    ],
)
def test_a_bad_budget_setting_fails_naming_its_key(override, message):
    cfg = compose("train", ["budget.train_minutes=1", override])
    with pytest.raises(ValueError, match=message):
        budget_callbacks(cfg)
        budget_trainer_kwargs(cfg)


def test_val_every_minutes_is_lightnings_time_based_validation_in_every_epoch():
    cfg = compose("train", ["budget.val_every_minutes=1.5", "trainer.check_val_every_n_epoch=3"])
    kwargs = budget_trainer_kwargs(cfg)
    assert kwargs == {"val_check_interval": timedelta(seconds=90), "check_val_every_n_epoch": 1}
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **kwargs)
    assert trainer._val_check_time_interval == 90.0 and trainer.check_val_every_n_epoch == 1
    both = compose("train", ["budget.val_every_minutes=1.5", "+trainer.val_check_interval=0.5"])
    with pytest.raises(ValueError, match="trainer.val_check_interval"):
        budget_trainer_kwargs(both)


# ------------------------------------------------------------------------------ a tiny run on a fake clock
# 2 batches of 4 per epoch, a validation after each epoch, the LR logged at every step
SMALL = [o for o in TINY_TRAIN if not o.startswith(("data.datamodule.num_train", "data.datamodule.batch_size"))] + [
    "data.datamodule.num_train=8",
    "data.datamodule.batch_size=4",
    "data.datamodule.num_val=4",
    "callbacks.checkpoint_every_n_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "schedule.max_epochs=50",  # a cap: the budget ends the run
    "budget.train_minutes=0.8333333333333334",  # 50 s of the fake clock: 10 s per step -> stops after step 5
    "budget.warmup_fraction=0.3",
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _run(tmp_path: Path, monkeypatch, crash_at: int | None = None, extra: tuple[str, ...] = ()) -> None:
    """``train`` with a fake training clock advancing 10 s per training step (``crash_at``: raise after that step)."""
    import ttfnet_lightning.training.callbacks as cb
    import ttfnet_lightning.training.run as train_mod

    clock = FakeClock()
    monkeypatch.setattr(cb, "_clock", clock)

    class Tick(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            clock.now += 10.0
            if trainer.global_step == crash_at:
                raise RuntimeError("simulated crash")

    monkeypatch.setattr(
        train_mod, "build_callbacks", lambda cfg, out, build=train_mod.build_callbacks: [Tick(), *build(cfg, out)]
    )
    train(compose("train", [*SMALL, *extra, f"output_dir={tmp_path}"]))


def test_the_budget_stops_training_validates_the_final_model_and_sets_the_lr_by_time(tmp_path, monkeypatch, capsys):
    _run(tmp_path, monkeypatch, extra=("trainer.enable_progress_bar=true", "callbacks.progress.mode=lines"))
    out = capsys.readouterr().out.splitlines()
    lines = [line.split(" train: ", 1)[1] for line in out if " train: " in line]
    # progress: no total steps or epochs (max_epochs is only a cap), the budget's training time left as the ETA
    assert lines and all(line.startswith("step ") and "/" not in line.split("|")[0] for line in lines), lines
    assert "of training budget" in lines[-1], lines
    rows = _rows(tmp_path / "metrics.csv")
    val = [(float(r["time/step"]), float(r["time/train_seconds"])) for r in rows if r.get("time/step")]
    # a validation after each epoch (steps 2, 4), and at once when the budget stops the run mid-epoch (step 5)
    assert val == [(2.0, 20.0), (4.0, 40.0), (5.0, 50.0)], val
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 5 and results["metrics"]["time/train_seconds"] == 50.0
    # LR before step k (k = 0..4): fraction 10k / 50 of the budget; warm-up over 0.3, x0.1 from 0.75
    lrs = [
        float(r["train/lr/weights"]) for r in sorted(rows, key=lambda r: int(r["step"])) if r.get("train/lr/weights")
    ]
    assert len(lrs) == 5, lrs
    base = lrs[0] / 0.2
    assert [v / base for v in lrs] == pytest.approx([0.2, 0.2 + 0.8 * 0.2 / 0.3, 1.0, 1.0, 0.1]), lrs
    # the progress lines show the budget's LR, not the step-based scheduler's it replaces (warm-up: 0.208 at step 5)
    end = [line for line in out if " train end: " in line]
    shown = float(re.search(r"\| lr ([0-9.e+-]+) \|", end[-1])[1])
    assert shown == pytest.approx(base * 0.01, rel=1e-3), end  # the budget spent: x0.1 twice


def test_the_budget_holds_over_an_interruption_and_a_spent_one_trains_no_step(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, monkeypatch, crash_at=3)
    state = torch.load(tmp_path / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=False)
    assert next(v for k, v in state["callbacks"].items() if k.startswith("TimeToAccuracy"))["train_seconds"] == 30.0
    _run(tmp_path, monkeypatch)  # resumes at step 3 with 30 s: 2 more steps
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 5 and results["metrics"]["time/train_seconds"] == 50.0
    trained = len([r for r in _rows(tmp_path / "metrics.csv") if r.get("train/loss")])

    (tmp_path / "results.json").unlink()  # the finished run again, its budget spent: validated, not trained
    _run(tmp_path, monkeypatch)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 5 and results["metrics"]["time/train_seconds"] == 50.0
    assert len([r for r in _rows(tmp_path / "metrics.csv") if r.get("train/loss")]) == trained
