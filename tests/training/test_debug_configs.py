"""The debug configs (conf/debug/*.yaml, ``debug=<name>``) compose and do what their header says."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from conftest import CONF_DIR, TINY_TRAIN, compose
from ttfnet_lightning.training.run import build_datamodule, build_module, train

DEBUG_CONFIGS = ("default", "overfit", "limit", "profiler")
# tiny data; the trainer keys are left to the debug config
_TINY = [o for o in TINY_TRAIN if not o.startswith(("schedule.max_epochs", "trainer.enable_progress_bar"))]


@pytest.mark.parametrize("name", DEBUG_CONFIGS)
def test_each_debug_config_composes_and_says_what_it_does(name):
    text = (CONF_DIR / "debug" / f"{name}.yaml").read_text()
    assert text.startswith(f"# @package _global_\n# debug={name}: ")
    cfg = compose("train", [f"debug={name}"])
    assert str(cfg.output_dir).startswith("outputs/debug/")  # not among real runs
    assert cfg.trainer.max_epochs == cfg.schedule.max_epochs  # the wiring of train.yaml still holds
    plain = compose("train")
    assert cfg.trainer != plain.trainer or cfg.schedule != plain.schedule
    # a command-line value wins over the debug config
    assert compose("train", [f"debug={name}", "output_dir=/tmp/mine"]).output_dir == "/tmp/mine"


class _Batches(pl.Callback):
    """The image ids of every training batch per epoch, and the validation batches run."""

    def __init__(self) -> None:
        self.train: dict[int, list[tuple]] = {}
        self.val: Counter[int] = Counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = tuple(m["image_id"] for m in batch["meta"])
        self.train.setdefault(trainer.current_epoch, []).append(ids)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val[trainer.current_epoch] += 1


def _fit(overrides: list[str], tmp_path) -> _Batches:
    """The composed config's Trainer (its ``trainer`` node as ``train`` builds it) on its data and module."""
    cfg = compose("train", [*_TINY, *overrides])
    dm = build_datamodule(cfg)
    seen = _Batches()
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(tmp_path),
        logger=False,
        callbacks=[seen],
        enable_progress_bar=False,
        _convert_="all",
    )
    trainer.fit(build_module(cfg, dm), datamodule=dm)
    return seen


def test_debug_default_runs_one_training_and_one_validation_batch(tmp_path):
    seen = _fit(["debug=default", "data.datamodule.num_val=24", "data.datamodule.num_train=24"], tmp_path)
    assert {e: len(b) for e, b in seen.train.items()} == {0: 1}  # of 3 batches
    assert dict(seen.val) == {0: 1}  # of 3


def test_debug_default_goes_through_the_whole_run(tmp_path):
    train(compose("train", [*_TINY, "debug=default", f"output_dir={tmp_path}"]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 1
    assert "val/AP" in results["metrics"]


def test_debug_overfit_trains_on_the_same_batches_every_epoch(tmp_path):
    # 6 batches of 8, shuffled, in a normal epoch
    seen = _fit(["debug=overfit", "data.datamodule.num_train=48", "schedule.max_epochs=3"], tmp_path)
    epochs = [seen.train[e] for e in sorted(seen.train)]
    assert len(epochs) == 3 and all(len(b) == 2 for b in epochs)
    assert epochs[0] == epochs[1] == epochs[2]
    assert len({i for b in epochs[0] for i in b}) == 16  # two different batches


def test_debug_limit_runs_few_batches_for_few_epochs(tmp_path):
    # 12 training and 8 validation batches available
    overrides = ["debug=limit", "data.datamodule.batch_size=4", "data.datamodule.num_train=48"]
    seen = _fit([*overrides, "data.datamodule.num_val=32"], tmp_path)
    assert {e: len(b) for e, b in seen.train.items()} == {0: 10, 1: 10, 2: 10}
    assert dict(seen.val) == {0: 3, 1: 3, 2: 3}


def test_debug_profiler_writes_both_profiles(tmp_path):
    overrides = ["debug=profiler", "data.datamodule.num_train=48", "trainer.limit_train_batches=5"]
    cfg = compose("train", [*_TINY, *overrides, f"output_dir={tmp_path}"])
    train(cfg)
    report = (tmp_path / "fit-profile.txt").read_text()  # Lightning's SimpleProfiler
    assert "run_training_batch" in report and "training_step" in report
    with open(tmp_path / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert "time/step_forward_ms" in columns  # callbacks.step_timer
