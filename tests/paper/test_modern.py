"""The modern training options' sweep (experiment=modern, make modern): it composes into 5 options x 3 seeds at
one budget, each option changes what it should (in the composed config and the built objects), its table (mean ±
std, paired differences, each seed), and one tiny training run per option."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, TINY_TRAIN, compose
from ttfnet_lightning.paper.modern import BASELINE, option_of
from ttfnet_lightning.paper.sweeps import expand_grid
from ttfnet_lightning.paper.tables import aggregate, build_table
from ttfnet_lightning.training.config_groups import module_groups
from ttfnet_lightning.training.ema import EMA
from ttfnet_lightning.training.multiscale import MultiScale
from ttfnet_lightning.training.optim import lr_factor
from ttfnet_lightning.training.records import job_dirname
from ttfnet_lightning.training.run import build_callbacks, train

TASK = ["experiment=modern"]
OPTIONS = {"step": BASELINE, "ema": "ema", "cosine": "cosine", "flat_cosine": "flat_cosine", "multiscale": "multiscale"}


def compose_hydra(task: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hcompose("train", overrides=task, return_hydra_config=True)


@pytest.fixture(scope="module")
def sweep_jobs():
    hcfg = compose_hydra(TASK)
    params = OmegaConf.to_container(hcfg.hydra.sweeper.params, resolve=True)
    return hcfg, params, expand_grid(params, TASK)


def test_the_sweep_is_five_options_by_three_seeds_at_one_budget_in_results(sweep_jobs):
    hcfg, params, jobs = sweep_jobs
    assert hcfg.hydra.mode.name == "MULTIRUN" and hcfg.hydra.sweep.dir == "results/modern-cpu"
    assert len(jobs) == 15
    cfgs = [cfg for _, cfg in jobs]
    assert Counter(option_of(c) for c in cfgs) == dict.fromkeys(OPTIONS.values(), 3)
    assert {(option_of(c), c.seed) for c in cfgs} == {(o, s) for o in OPTIONS.values() for s in (0, 1, 2)}
    names = {job_dirname(list(c.hydra.overrides.task), params) for c in cfgs}
    assert "ablation=modern-ema,seed=2" in names and len(names) == 15
    for c in cfgs:  # make train's setting, the same optimiser steps for every job
        assert (c.backbone.name, c.backbone.pretrained, c.backbone.weights) == ("r18", False, None)
        assert (c.schedule.name, c.schedule.max_epochs, list(c.schedule.milestones)) == ("fast", 12, [9, 11])
        assert c.data.name == "shapes" and list(c.data.datamodule.input_size) == [128, 128]
        assert (c.data.datamodule.num_train, c.data.datamodule.batch_size) == (1000, 16)
        assert c.schedule.warmup_steps == 335 and c.schedule.lr == c.backbone.lr


def _by_option(jobs) -> dict[str, object]:
    return {option_of(cfg): cfg for _, cfg in jobs if cfg.seed == 0}


def test_each_option_changes_what_it_should(sweep_jobs):
    _, _, jobs = sweep_jobs
    resolved = {
        option: OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
        for option, cfg in _by_option(jobs).items()
    }
    policies = {"cosine": "cosine", "flat_cosine": "flat_cosine"}
    rest = lambda schedule: {k: v for k, v in schedule.items() if k not in ("lr_policy", "flat_fraction")}  # noqa: E731
    for option, cfg in resolved.items():
        groups = module_groups(cfg)
        assert groups["optim"]["lr_policy"] == policies.get(option, "step")
        assert rest(cfg["schedule"]) == rest(resolved[BASELINE]["schedule"])  # nothing else of the schedule
        ema = EMA.from_config(cfg["ema"])
        assert (ema is not None) == (option == "ema")
        ms = MultiScale.from_group(groups["multiscale"], cfg["data"]["datamodule"]["input_size"])
        assert (ms is not None) == (option == "multiscale")
        assert cfg["data"] == resolved[BASELINE]["data"] and cfg["model"] == resolved[BASELINE]["model"]
    assert EMA.from_config(resolved["ema"]["ema"]).decay == 0.99
    ms = MultiScale.from_group(module_groups(resolved["multiscale"])["multiscale"], [128, 128])
    assert ms.sizes == [(96, 96), (128, 128), (160, 160)] and ms.seed == 0
    assert resolved["flat_cosine"]["schedule"]["flat_fraction"] == 0.5


def _fake_sweep(tmp_path: Path, ap50_of) -> Path:
    hcfg = compose_hydra(TASK)
    sweep = tmp_path / "modern-cpu"
    sweep.mkdir()
    OmegaConf.save(hcfg, sweep / "multirun.yaml")
    params = OmegaConf.to_container(hcfg.hydra.sweeper.params, resolve=True)
    for _, cfg in expand_grid(params, TASK):
        d = sweep / job_dirname(list(cfg.hydra.overrides.task), params)
        d.mkdir()
        (d / "config_resolved.yaml").write_text("{}")
        ap50 = ap50_of(option_of(cfg), int(cfg.seed))
        if ap50 is None:
            continue  # not finished
        metrics = {"val/AP50": ap50, "val/AP": ap50 / 2, "time/train_seconds": 300.0}
        results = {"status": "finished", "metrics": metrics, "global_step": 744}
        (d / "results.json").write_text(json.dumps(results))
    return sweep


def test_the_table_has_mean_std_paired_differences_and_each_seed(tmp_path):
    gain = {BASELINE: 0.0, "ema": 1.0, "cosine": 2.0, "flat_cosine": -1.0, "multiscale": 3.0}

    def ap50(option: str, seed: int) -> float | None:
        if option == "multiscale" and seed == 2:
            return None
        return 60.0 + 10 * seed + gain[option] + (0.5 if option == "cosine" and seed == 1 else 0.0)

    sweep = _fake_sweep(tmp_path, ap50)
    table, jobs = build_table(sweep, ratio=False)
    assert table.name == "modern" and len(jobs) == 15
    assert table.rows == [BASELINE, "ema", "cosine", "flat_cosine", "multiscale"]
    assert table.columns[:4] == ["AP50", "AP", "ΔAP50", "ΔAP"] and "AP50 seed 2" in table.columns
    base = table.cells[(BASELINE, "AP50")]
    assert base.values == [60.0, 70.0, 80.0] and base.mean == 70.0 and base.std == pytest.approx(10.0)
    assert table.cells[("ema", "AP")].mean == pytest.approx(35.5)
    # paired by seed: the seeds' spread cancels
    assert table.cells[("ema", "ΔAP50")].values == pytest.approx([1.0, 1.0, 1.0])
    cosine = table.cells[("cosine", "ΔAP50")]
    assert cosine.mean == pytest.approx(2.0 + 0.5 / 3) and cosine.std == pytest.approx(0.2887, abs=1e-3)
    assert table.cells[("multiscale", "ΔAP50")].values == pytest.approx([3.0, 3.0])  # seed 2 not finished
    assert table.cells[("multiscale", "AP50 seed 2")].text() == "running"
    assert table.cells[("flat_cosine", "AP50 seed 1")].text() == "69.0"
    assert (BASELINE, "ΔAP50") not in table.cells
    md = table.markdown()
    # 1000 images / batch 16 = 62 full batches (the partial one dropped) x 12 epochs
    assert "744 optimiser steps per job (every job the same)" in md and "14 finished, 1 running" in md
    assert "(2/3)" in md  # multi-scale: 2 of 3 seeds
    stopped_early = next(sweep.glob("*modern-ema,seed=1*")) / "results.json"
    stopped_early.write_text(json.dumps({**json.loads(stopped_early.read_text()), "global_step": 700}))
    assert "700, 744 optimiser steps per job (the jobs differ" in build_table(sweep, ratio=False)[0].markdown()
    aggregate(sweep, quiet=True)
    rows = list(csv.DictReader(open(sweep / "table.csv")))
    assert {r["row"] for r in rows} >= set(table.rows) and (sweep / "table.md").is_file()
    if importlib.util.find_spec("matplotlib") is not None:  # the viz extra: the option bars and paired differences
        assert (sweep / "table.png").is_file()


# --------------------------------------------------------------------------- one tiny run per option
def _logged_lrs(out: Path) -> list[float]:
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/lr/weights")]
    return [float(r["train/lr/weights"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.parametrize("option", list(OPTIONS))
def test_one_tiny_run_per_option(option, tmp_path, monkeypatch):
    from ttfnet_lightning.training import multiscale

    seen = []
    resize = multiscale.resize_batch
    monkeypatch.setattr(multiscale, "resize_batch", lambda b, size: seen.append(tuple(size)) or resize(b, size))
    size = ["data.datamodule.input_size=[128,128]"] if option == "multiscale" else []  # 64 px: too small for it
    out = tmp_path / option
    overrides = [*TINY_TRAIN, *size, f"ablation=modern/{option}", "trainer.log_every_n_steps=1"]
    cfg = compose("train", overrides)
    assert option_of(cfg) == OPTIONS[option]
    train(compose("train", [*overrides, f"output_dir={out}"]))
    assert json.loads((out / "results.json").read_text())["status"] == "finished"
    # the LR of each of the 4 steps (2 epochs x 2 batches, warm-up 2 steps) follows its policy over 4 steps
    policy = {"cosine": "cosine", "flat_cosine": "flat_cosine"}.get(option, "step")
    kw = dict(steps_per_epoch=2, milestones=[1], gamma=0.1, warmup_steps=2, warmup_ratio=0.2, total_steps=4)
    factors = [lr_factor(s, lr_policy=policy, **kw) for s in range(4)]
    lrs = _logged_lrs(out)
    assert [lr / lrs[0] for lr in lrs] == pytest.approx([f / factors[0] for f in factors])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ("current_model_state" in ckpt) == (option == "ema")
    if option == "multiscale":
        assert set(seen) <= {(96, 96), (128, 128), (160, 160)} and len(seen) == 4  # training batches only
    else:
        assert seen == []
    assert any(isinstance(c, EMA) for c in build_callbacks(cfg, tmp_path)) == (option == "ema")
