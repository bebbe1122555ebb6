"""Progress in a terminal and in a batch job's log (training/progress.py, training/run_clock.py), and the
library messages a run leaves out (training/warnings_policy.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.demos.boring_classes import BoringModel

from conftest import REPO, TINY_TRAIN, subprocess_env
from ttfnet_lightning.training.progress import ParamSummary, ProgressLines, RunProgressBar, progress_callbacks
from ttfnet_lightning.training.run_clock import RunClock, format_duration, plan_run, trainer_plan
from ttfnet_lightning.training.warnings_policy import IGNORED_WARNINGS, library_messages_filtered


@pytest.mark.parametrize(
    ("batches", "accumulate", "max_epochs", "max_steps"),
    [(93, 1, 12, -1), (93, 1, 12, 400), (10, 3, 5, -1), (10, 3, 5, 7), (20, 1, -1, 130), (7, 2, 4, 1000)],
)
def test_total_steps_are_lightnings_estimate(batches, accumulate, max_epochs, max_steps):
    # Lightning's own property, run on a stand-in trainer with these settings
    stub = SimpleNamespace(
        max_epochs=max_epochs,
        max_steps=max_steps,
        train_dataloader=object(),
        num_training_batches=batches,
        accumulate_grad_batches=accumulate,
    )
    expected = pl.Trainer.estimated_stepping_batches.fget(stub)
    plan = plan_run(batches_per_epoch=batches, max_epochs=max_epochs, max_steps=max_steps, accumulate=accumulate)
    assert plan.total_steps == expected


def test_epochs_count_as_the_run_will_end():
    # max_steps ends the run in its 5th epoch: Lightning's bar says "Epoch 4/11"
    plan = plan_run(batches_per_epoch=93, max_epochs=12, max_steps=400)
    assert (plan.steps_per_epoch, plan.total_steps, plan.total_epochs) == (93, 400, 5)
    assert plan_run(batches_per_epoch=93, max_epochs=12).total_epochs == 12
    assert plan_run(batches_per_epoch=100, max_epochs=-1, max_steps=250).total_epochs == 3
    assert plan_run(batches_per_epoch=10, max_epochs=5, max_steps=-1, accumulate=4).steps_per_epoch == 3
    endless = plan_run(batches_per_epoch=float("inf"), max_epochs=-1, max_steps=-1)
    assert (endless.total_steps, endless.total_epochs) == (None, None)


class _ValidationSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.plan = None

    def on_train_start(self, trainer, pl_module):
        self.plan = trainer_plan(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_epochs": 6, "check_val_every_n_epoch": 2},
        {"max_epochs": 3, "val_check_interval": 0.5},
        {"max_epochs": 4, "accumulate_grad_batches": 3},
        {"max_epochs": 5, "max_steps": 23, "check_val_every_n_epoch": 2},
        {"max_epochs": 2, "val_check_interval": 4, "check_val_every_n_epoch": None},
    ],
)
def test_validation_steps_are_lightnings(settings, tmp_path):
    """The planned validations are those Lightning runs, plus the final model's one that train()
    adds when the schedule ends between validations."""
    seen = _ValidationSteps()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        limit_train_batches=10,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
        **settings,
    )
    trainer.fit(BoringModel())
    assert seen.plan.total_steps == trainer.global_step
    assert set(seen.plan.validation_steps) == {*seen.steps, trainer.global_step}


def test_eta_counts_training_and_validation_time():
    t = [0.0]
    clock = RunClock(now=lambda: t[0])
    plan = plan_run(batches_per_epoch=10, max_epochs=3, val_every_batches=10)
    assert plan.validation_steps == (10, 20, 30)
    clock.train_batch_end(1, 8)  # the first step: warm-up, left out
    assert clock.eta(1, plan) == (None, 0)
    for step in range(2, 11):
        t[0] += 2.0
        clock.train_batch_end(step, 8)
    assert clock.seconds_per_step == pytest.approx(2.0)
    assert clock.images_per_second == pytest.approx(4.0)
    assert clock.eta(10, plan) == (pytest.approx(20 * 2.0), 3)  # validations not timed yet: said so
    clock.validation_start(10)
    t[0] += 30.0
    assert clock.validation_end() == pytest.approx(30.0)
    assert clock.eta(10, plan) == (pytest.approx(20 * 2.0 + 2 * 30.0), 0)  # the one at step 10: done
    t[0] += 2.0
    clock.train_batch_end(11, 8)
    assert clock.seconds_per_step == pytest.approx(2.0)  # the validation is not training time
    assert clock.eta(11, plan) == (pytest.approx(19 * 2.0 + 2 * 30.0), 0)
    assert format_duration(3 * 3600 + 62.4) == "3:01:02"
    assert format_duration(27 * 3600) == "27:00:00"


def _fit_boring(tmp_path, callbacks, **settings) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        **settings,
    )
    trainer.fit(BoringModel())
    return trainer


def test_lines_come_every_n_seconds_and_at_the_first_step_and_the_end(tmp_path):
    lines: list[str] = []
    t = [0.0]

    def tick() -> float:
        t[0] += 1.0  # each reading of the clock: one second later
        return t[0]

    bar = ProgressLines(every_seconds=1e9, now=tick, write=lines.append)
    _fit_boring(tmp_path, [bar], max_epochs=5, max_steps=6)
    train = [line for line in lines if " train: " in line]
    assert len(train) == 1 and "step 1/6 (17%)" in train[0] and "epoch 1/2" in train[0]
    validations = [line for line in lines if " validation: " in line]
    assert len(validations) == 1 and "after step 4, epoch 1/2" in validations[0]  # not the sanity check
    # left: the final model's validation (max_steps ended the epoch early), timed like the one at step 4
    assert "train end: step 6/6 (100%) | epoch 2/2" in lines[-1] and re.search(r"ETA 0:00:0\d$", lines[-1])

    lines.clear()
    _fit_boring(tmp_path, [ProgressLines(every_seconds=0, now=tick, write=lines.append)], max_epochs=2)
    steps = [int(m.group(1)) for line in lines if (m := re.search(r" train: step (\d+)/8 ", line))]
    assert steps == list(range(1, 9))
    lrs = [float(m.group(1)) for line in lines if (m := re.search(r"\| lr ([\d.e-]+) \|", line))]
    assert len(lrs) == 9 and lrs[0] == 0.1 and lrs[-1] < lrs[0]  # BoringModel's SGD, its StepLR
    assert re.search(r"ETA \d+:\d\d:\d\d", lines[-1])


def test_terminal_bar_shows_epochs_lr_and_run_eta(tmp_path, capsys):
    _fit_boring(tmp_path, [RunProgressBar(), ParamSummary()], max_epochs=5, max_steps=6)
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and "Epoch 1/4" not in out and "Epoch 4" not in out
    assert "lr=0.1" in out and "ETA=" in out
    assert "Total params" in out and "FLOPs" not in out and "Flops" not in out


def test_progress_choice(monkeypatch):
    trainer = {"enable_progress_bar": True}
    kinds = lambda cbs: [type(c) for c in cbs]  # noqa: E731
    assert kinds(progress_callbacks({}, trainer, isatty=True)) == [ParamSummary, RunProgressBar]
    assert kinds(progress_callbacks({}, trainer, isatty=False)) == [ParamSummary, ProgressLines]
    assert kinds(progress_callbacks({"mode": "lines"}, trainer, isatty=True))[-1] is ProgressLines
    assert kinds(progress_callbacks({"mode": "bar"}, trainer, isatty=False))[-1] is RunProgressBar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    lines = progress_callbacks({"every_seconds": 5}, trainer)[-1]
    assert isinstance(lines, ProgressLines) and lines.every_seconds == 5.0
    assert kinds(progress_callbacks({}, {"enable_progress_bar": False})) == [ParamSummary]
    assert progress_callbacks({}, {"enable_progress_bar": False, "enable_model_summary": False}) == []
    with pytest.raises(ValueError, match=r"callbacks\.progress\.mode='tqdm'"):
        progress_callbacks({"mode": "tqdm"}, trainer)
    with pytest.raises(ValueError, match=r"callbacks\.progress\.every_seconds=-1"):
        progress_callbacks({"every_seconds": -1}, trainer)


def test_warning_filters_only_inside_a_run():
    messages = [
        (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated, use ..."),
        (UserWarning, "The number of training batches (2) is smaller than the logging interval Trainer(...)"),
        (UserWarning, "Found 15 module(s) in eval mode at the start of training. This may ..."),
    ]
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        for category, message in messages:
            warnings.warn(message, category, stacklevel=1)
        with library_messages_filtered():
            for category, message in messages:
                warnings.warn(message, category, stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
        for category, message in messages:
            warnings.warn(message, category, stacklevel=1)
    assert [str(w.message) for w in outside].count("another warning") == 1
    assert len(outside) == 2 * len(messages) + 1  # the filtered ones printed before and after the run
    # importing the training code installs none of them
    assert not any(f[1] is not None and f[1].pattern == p for f in warnings.filters for p, *_ in IGNORED_WARNINGS)


# a batch job: stdout to a pipe; 4 batches per epoch, max_steps ends the run in the first of 5 epochs
_JOB = [
    *(o for o in TINY_TRAIN if not o.startswith(("trainer.enable_progress_bar", "data.datamodule.batch_size"))),
    "data.datamodule.batch_size=4",
    "schedule.max_epochs=5",
    "trainer.max_steps=3",
    "callbacks.progress.every_seconds=0",
]
# what a run printed before (issue 23): each must be gone
_GONE = {
    "stderr": [
        "was called without a model",
        "LeafSpec",
        "smaller than the logging interval",
        "could not find the monitored key",
        "litlogger",
        "Loading `train_dataloader`",
        "`weights_only` was not set",
        "model summary callbacks",
    ],
    "stdout": ["FLOPs", "Flops", "\r"],
}


@pytest.fixture(scope="module")
def batch_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", *_JOB, f"output_dir={out}", f"hydra.run.dir={out}"]
    # stdout and stderr to pipes, not a terminal
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_batch_job_log_has_plain_progress_lines(batch_job):
    lines = batch_job.stdout.splitlines()
    train = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d train: step", line)]
    assert [re.search(r"step (\d+)/(\d+)", line).groups() for line in train] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all("| epoch 1/1 |" in line for line in train)  # not Lightning's 0/4
    assert all(re.search(r"loss [\d.]+ loss_heatmap [\d.]+ loss_box [\d.]+ \| lr [\d.e-]+ \|", s) for s in train)
    assert "ETA ?" in train[0] and re.search(r"img/s \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d", train[1])
    assert any(" train end: step 3/3 (100%)" in line for line in lines)
    # the final model's validation (max_steps ended the epoch early): its AP in the log
    assert any(re.search(r" validation: after step 3, epoch 1/1: val/AP [\d.]+ val/AP50", line) for line in lines)


@pytest.mark.parametrize("stream", ["stderr", "stdout"])
def test_batch_job_prints_none_of_the_fixed_warnings(batch_job, stream):
    text = getattr(batch_job, stream)
    assert [s for s in _GONE[stream] if s in text] == [], text[-3000:]
