"""What a Hydra multirun varies (training/wandb_sweep.py) and the W&B names and tags that follow,
down to a real two-job sweep's offline run files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf
from test_tracking import read_offline_run, write_multirun_yaml

from conftest import TINY_TRAIN, subprocess_env
from ttfnet_lightning.training.wandb_sweep import (
    short_names,
    sweep_keys,
    sweep_keys_from,
    sweep_run_name,
    varied_overrides,
)


def test_sweep_keys_from_params_and_sweep_syntax():
    # a plain -m sweep: only the comma list and the range vary; constants, hydra.* and lists do not
    task = [
        "kernel.beta=0.1,0.54",
        "schedule.lr=0.01",
        "logger=wandb",
        "seed=range(0,2)",
        "x=[1,2]",
        "hydra.job.chdir=true",
    ]
    assert sweep_keys_from(None, task) == ["kernel.beta", "seed"]
    # a paper table: the grid in the sweeper's params, the command line constant
    assert sweep_keys_from({"kernel.beta": "0.01,0.1", "seed": "0,1"}, ["experiment=table2", "protocol=cpu"]) == [
        "kernel.beta",
        "seed",
    ]
    # Optuna's search space, a group choice and an appended key on the command line
    assert sweep_keys_from({"schedule.lr": "tag(log, interval(0.002, 0.064))"}, ["backbone=r18,r34", "+seed=0,1"]) == [
        "schedule.lr",
        "backbone",
        "seed",
    ]


def test_sweep_keys_read_multirun_yaml_relative_to_the_start_dir(tmp_path):
    sweep = write_multirun_yaml(tmp_path / "multirun" / "day", ["kernel.beta=0.1,0.54", "schedule.lr=0.01"])
    hc = OmegaConf.create(
        {"sweep": {"dir": "multirun/day"}, "runtime": {"cwd": str(tmp_path)}, "sweeper": {"params": None}}
    )
    assert sweep_keys(hc, argv=["ignored=1,2"]) == ["kernel.beta"]
    # no multirun.yaml (a sweeper that writes none): the command line given
    (sweep / "multirun.yaml").unlink()
    assert sweep_keys(hc, argv=["schedule.lr=0.01,0.02", "logger=wandb"]) == ["schedule.lr"]
    hc.sweeper.params = {"kernel.beta": "interval(0.01, 0.6)"}
    assert sweep_keys(hc, argv=[]) == ["kernel.beta"]


def test_job_names_and_varied_overrides():
    job = ["kernel.beta=0.1", "+seed=1", "schedule.lr=0.01", "logger=wandb"]
    varied = varied_overrides(job, ["kernel.beta", "seed"])
    assert varied == ["kernel.beta=0.1", "seed=1"]
    assert sweep_run_name("r18-fast", varied) == "beta=0.1,seed=1"
    assert sweep_run_name("mine", varied, prefix=True) == "mine:beta=0.1,seed=1"
    assert sweep_run_name("r18-fast", [], job_num=3) == "r18-fast#3"  # nothing varied found: the job number
    # two keys with one last part keep their whole names
    assert short_names(["model.lr", "schedule.lr", "kernel.beta"]) == {
        "model.lr": "model.lr",
        "schedule.lr": "schedule.lr",
        "kernel.beta": "beta",
    }


def test_two_job_sweep_has_distinct_names_and_swept_only_tags(tmp_path):
    """``python -m ttfnet_lightning.train -m kernel.beta=0.1,0.54 schedule.lr=0.01 logger=wandb``
    (tiny, offline): each job's W&B run is named after its beta and tagged with it only."""
    sweep = tmp_path / "sweep"
    args = [o for o in TINY_TRAIN if not o.startswith(("logger=", "schedule.max_epochs"))]
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", "-m", "kernel.beta=0.1,0.54", "schedule.lr=0.01"]
    cmd += [*args, "schedule.max_epochs=1", "logger=wandb", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = []
    for job in ("0", "1"):
        (run_dir,) = (sweep / job / "wandb").glob("offline-run-*")
        runs.append(read_offline_run(Path(run_dir)))
    assert [r["name"] for r in runs] == ["beta=0.1", "beta=0.54"]
    assert [r["tags"] for r in runs] == [["kernel.beta=0.1"], ["kernel.beta=0.54"]]
    assert {r["group"] for r in runs} == {"sweep-sweep"} and {r["job_type"] for r in runs} == {"sweep"}
    assert runs[1]["config"]["kernel.beta"] == 0.54 and runs[1]["config"]["schedule.lr"] == 0.01
