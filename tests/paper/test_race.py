"""The race of detectors (experiment=race, make race; ttfnet_lightning.paper.race): the sweep it composes, the time
to each AP50 level (interpolated, an upper bound at the first validation, not reached), the per-detector summary over
seeds on a synthetic sweep, the command line, and the two-detector mini race end to end (real multirun, resumed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, subprocess_env
from ttfnet_lightning.paper.race import read_race, time_to_level, write_race
from ttfnet_lightning.paper.sweeps import expand_grid
from ttfnet_lightning.race import main as race_main
from ttfnet_lightning.training.records import job_dirname

DETECTORS = ["ttfnet", "centernet", "fcos", "retinanet", "faster_rcnn", "ssdlite"]


def compose_hydra(task: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hcompose("train", overrides=task, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_the_race_is_every_detector_by_two_seeds_on_one_budget_in_results():
    hcfg = compose_hydra(["experiment=race"])
    assert hcfg.hydra.mode.name == "MULTIRUN" and hcfg.hydra.sweep.dir == "results/race-cpu"
    assert hcfg.hydra.callbacks.paper_table._target_ == "ttfnet_lightning.paper.race.RaceOnMultirunEnd"
    params = OmegaConf.to_container(hcfg.hydra.sweeper.params, resolve=True)
    jobs = [cfg for _, cfg in expand_grid(params, ["experiment=race"])]
    assert {(c.model.method, c.seed) for c in jobs} == {(m, s) for m in DETECTORS for s in (0, 1)}
    assert [c.seed for c in jobs[: len(DETECTORS)]] == [0] * len(DETECTORS)  # every detector's seed 0 first
    assert "method=faster_rcnn,seed=1" in {job_dirname(list(c.hydra.overrides.task), params) for c in jobs}
    for c in jobs:  # one budget and make train's data for every detector, from scratch
        assert (c.budget.train_minutes, c.budget.val_every_minutes, c.budget.lr_by_time) == (12.0, 1.5, True)
        assert c.data.name == "shapes" and list(c.data.datamodule.input_size) == [128, 128]
        assert (c.data.datamodule.num_train, c.data.datamodule.num_val, c.data.datamodule.batch_size) == (1500, 200, 16)
        assert c.backbone.pretrained is False and c.backbone.weights is None and c.peer.pretrained_backbone is False
        assert c.trainer.max_epochs == 1000 and c.schedule.augment is False


# ------------------------------------------------------------------------------------------- time to a level
CURVE = [{"hours": m / 60, "val/AP50": v} for m, v in ((1.5, 20.0), (3.0, 45.0), (4.5, 60.0), (6.0, 75.0))]


def test_time_to_a_level_is_interpolated_between_the_validations_around_it():
    hours, bound = time_to_level(CURVE, 30.0)
    assert 60 * hours == pytest.approx(1.5 + 10 / 25 * 1.5) and bound is False
    assert 60 * time_to_level(CURVE, 70.0)[0] == pytest.approx(4.5 + 10 / 15 * 1.5)
    assert 60 * time_to_level(CURVE, 75.0)[0] == pytest.approx(6.0)  # reached exactly at a validation


def test_the_first_validation_is_an_upper_bound_and_a_level_never_reached_is_none():
    assert time_to_level(CURVE, 10.0) == (pytest.approx(1.5 / 60), True)
    assert time_to_level(CURVE, 80.0) is None and time_to_level([], 30.0) is None
    dip = [{"hours": 1.0, "val/AP50": 10.0}, {"hours": 2.0, "val/AP50": 40.0}, {"hours": 3.0, "val/AP50": 20.0}]
    assert time_to_level(dip, 30.0)[0] == pytest.approx(1 + 20 / 30)  # the first crossing counts


# --------------------------------------------------------------------------------------- a synthetic race
TASK = ["experiment=race_mini", 'table.grid.cpu={seed: "0,1", method: "ttfnet,centernet"}']
AP50 = {  # per (method, seed): AP50 at 1.5, 3, 4.5, 6 training minutes; None: still running (no results.json)
    ("ttfnet", 0): [20.0, 45.0, 60.0, 75.0],
    ("ttfnet", 1): [35.0, 55.0, 65.0, 72.0],
    ("centernet", 0): [5.0, 15.0, 25.0, 28.0],
    ("centernet", 1): [10.0, 32.0],
}


def _fake_race(tmp_path: Path, task: tuple[str, ...] = ()) -> Path:
    task = [*TASK, *task]
    hcfg = compose_hydra(task)
    sweep = tmp_path / "race-cpu"
    sweep.mkdir()
    OmegaConf.save(hcfg, sweep / "multirun.yaml")
    params = OmegaConf.to_container(hcfg.hydra.sweeper.params, resolve=True)
    for _, cfg in expand_grid(params, task):
        d = sweep / job_dirname(list(cfg.hydra.overrides.task), params)
        d.mkdir()
        (d / "config_resolved.yaml").write_text("{}")
        values = AP50[(str(cfg.model.method), int(cfg.seed))]
        with open(d / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(
                f, ["epoch", "step", "train/loss", "time/train_seconds", "time/step", "val/AP", "val/AP50"]
            )
            w.writeheader()
            for i, v in enumerate(values):
                w.writerow({"step": 10 * i + 5, "train/loss": 1.0})  # a training row: no validation
                seconds = 90.0 * (i + 1)
                w.writerow(
                    {
                        "step": 10 * i + 9,
                        "time/train_seconds": seconds,
                        "time/step": 10 * i + 10,
                        "val/AP": v / 2,
                        "val/AP50": v,
                    }
                )
        if len(values) == 4:  # finished
            metrics = {"val/AP50": values[-1], "val/AP": values[-1] / 2, "time/train_hours": 0.1}
            (d / "results.json").write_text(json.dumps({"status": "finished", "metrics": metrics}))
    return sweep


def test_the_race_summary_per_detector_over_seeds(tmp_path):
    sweep = _fake_race(tmp_path)
    summary = write_race(sweep, quiet=True)
    assert json.loads((sweep / "race.json").read_text())["levels"] == [30.0, 50.0, 70.0]
    ttf, cn = summary["detectors"]
    assert (ttf["label"], cn["label"]) == ("TTFNet-R18", "CenterNet-R18")
    assert ttf["final"]["val/AP50"]["mean"] == pytest.approx(73.5) and ttf["final"]["val/AP50"]["std"] == pytest.approx(
        2.1213, abs=1e-4
    )
    assert ttf["final"]["val/AP"]["per_seed"] == {"0": 37.5, "1": 36.0}
    to30 = ttf["to_AP50"]["30"]
    assert to30["per_seed"]["0"] * 60 == pytest.approx(2.1) and to30["per_seed"]["1"] * 60 == pytest.approx(1.5)
    assert to30["upper_bound"] == {"0": False, "1": True} and to30["mean"] * 60 == pytest.approx(1.8)
    assert ttf["to_AP50"]["50"]["mean"] * 60 == pytest.approx((3.5 + 2.625) / 2)
    # CenterNet: seed 1 still running -> final values of seed 0 only; 30 reached by seed 1 only; 50 by none
    assert cn["status"] == {"0": "finished", "1": "running"} and cn["final"]["val/AP50"]["per_seed"] == {"0": 28.0}
    assert (cn["to_AP50"]["30"]["reached"], cn["to_AP50"]["30"]["of"]) == (1, 2)
    assert cn["to_AP50"]["50"]["reached"] == 0 and cn["to_AP50"]["50"]["mean"] is None
    assert [r["val/AP50"] for r in cn["curves"]["1"]] == [10.0, 32.0]  # the running seed's curve, training rows out
    md = (sweep / "race.md").read_text()
    ttf_row = next(line for line in md.splitlines() if line.startswith("| TTFNet-R18"))
    assert "| 73.5 ± 2.1 |" in ttf_row and "| ≤ 1.8 ± 0.4 |" in ttf_row and "| 3.1 ± 0.6 |" in ttf_row
    cn_row = next(line for line in md.splitlines() if line.startswith("| CenterNet-R18"))
    assert "| 1/2 finished, 1 running |" in cn_row and "| 2.9 (1/2) | not reached | not reached |" in cn_row
    assert "CenterNet R18: 28.1, 26.9" in cn_row  # the paper's Table 7 row: AP, training hours
    assert (sweep / "race.png").stat().st_size > 10_000


def test_the_command_line_writes_the_race_and_refuses_what_is_not_one(tmp_path, capsys):
    sweep = _fake_race(tmp_path)
    assert race_main([str(sweep), "--levels", "20,40"]) == 0
    assert "min to AP50 20" in capsys.readouterr().out and (sweep / "race.md").is_file()
    assert race_main([str(tmp_path / "absent")]) == 2 and "multirun.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        race_main([str(sweep), "--levels", "high"])
    detectors, jobs = read_race(sweep)
    assert [d.method for d in detectors] == ["ttfnet", "centernet"] and len(jobs) == 4


def test_the_race_goes_to_wandb_only_when_its_jobs_log_there_online(tmp_path, monkeypatch):
    import ttfnet_lightning.paper.race as race_mod

    sweep = _fake_race(tmp_path, ("logger=wandb",))
    logged = []
    monkeypatch.setattr(race_mod, "log_sweep_summary", lambda cfg, out, **kw: logged.append(kw))
    monkeypatch.setattr(race_mod, "save_report_if_online", lambda *a: logged.append("report"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    write_race(sweep, wandb=True, quiet=True)
    assert logged == []  # offline: nothing
    monkeypatch.setattr(race_mod, "wandb_offline", lambda setting: False)
    write_race(sweep, wandb=True, quiet=True)
    summary, report = logged
    assert report == "report" and summary["name"] == "race" and summary["images"] == {"plot": sweep / "race.png"}
    assert len(summary["rows"]) == 4 and {r["detector"] for r in summary["rows"]} == {"TTFNet-R18", "CenterNet-R18"}
    ttf1 = next(r for r in summary["rows"] if r["detector"] == "TTFNet-R18" and r["seed"] == "1")
    assert ttf1["val/AP50"] == 72.0 and ttf1["hours_to_AP50_30"] == pytest.approx(1.5 / 60)


# ------------------------------------------------------------------------- the mini race, end to end (~1-2 min)
def _race_mini(sweep: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", "experiment=race_mini", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_the_mini_race_runs_end_to_end_and_resumes(tmp_path):
    """Two detectors (TTFNet, CenterNet), one seed, 18 s of training each with a validation about every 6 s: the
    real multirun, the budget, time-based validation and the race's files written when the sweep ends; a rerun
    skips the finished job and finishes the other without training further (its budget is spent)."""
    sweep = tmp_path / "race"
    _race_mini(sweep, tmp_path)
    jobs = {m: sweep / f"method={m},seed=0" for m in ("ttfnet", "centernet")}
    for d in jobs.values():
        results = json.loads((d / "results.json").read_text())
        assert results["status"] == "finished" and results["metrics"]["time/train_seconds"] >= 18.0
        with open(d / "metrics.csv") as f:
            val = [r for r in csv.DictReader(f) if r.get("val/AP50")]
        assert len({r["time/train_seconds"] for r in val}) >= 2  # validations at two training times at least
        assert float(val[-1]["time/step"]) == results["global_step"]  # the final model validated
    summary = json.loads((sweep / "race.json").read_text())
    assert [d["label"] for d in summary["detectors"]] == ["TTFNet-R18", "CenterNet-R18"]
    assert all(len(d["curves"]["0"]) >= 2 and d["final"]["val/AP50"]["per_seed"] for d in summary["detectors"])
    assert (sweep / "race.png").is_file() and "| CenterNet-R18 | 1/1 finished |" in (sweep / "race.md").read_text()

    steps = json.loads((jobs["centernet"] / "results.json").read_text())["global_step"]
    (jobs["centernet"] / "results.json").unlink()
    (sweep / "race.md").unlink()
    proc = _race_mini(sweep, tmp_path)
    assert f"skipping {jobs['ttfnet']}" in proc.stdout and f"resuming {jobs['centernet']}" in proc.stdout
    assert json.loads((jobs["centernet"] / "results.json").read_text())["global_step"] == steps
    assert (sweep / "race.md").is_file()


def test_the_plot_keeps_a_detectors_mean_and_legend_while_one_seed_still_runs(tmp_path):
    """A running seed whose only validation falls just before the finished seed's first used to leave no common
    span: the detector lost its bold mean and its legend entry. The mean is now the finished seeds'."""
    pytest.importorskip("matplotlib")
    from ttfnet_lightning.paper.race import Detector, SeedRun
    from ttfnet_lightning.paper.race_plot import race_figure

    def curve(hours):
        return [{"hours": h, "step": 100 * k, "val/AP": 10.0 * k, "val/AP50": 20.0 * k} for k, h in enumerate(hours, 1)]

    det = Detector("ssdlite", "SSDlite")
    det.runs = [
        SeedRun(0, "finished", tmp_path, curve([0.0250, 0.05, 0.1, 0.2])),
        SeedRun(1, "running", tmp_path, curve([0.0249])),
    ]
    fig = race_figure([det])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["SSDlite (1 seed, 1 more running)"]
    bold = [line for line in ax.get_lines() if line.get_linewidth() > 2]
    assert len(bold) == 1 and list(bold[0].get_ydata()) == [20.0, 40.0, 60.0, 80.0]
