"""Sweeps on a cluster (issue 11): the SLURM launcher's configuration and the sbatch script submitit
writes from it (nothing is submitted), a two-job sweep through the submitit local launcher end to
end, a preempted submitit job that requeues and resumes from its checkpoint (slow), and the Optuna
search over kernel beta and LR whose sqlite study a re-launch continues."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, compose, subprocess_env

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="the cluster extra (hydra-submitit-launcher) is not installed"
)

# one epoch of one step per job, no sanity validation: a sweep's plumbing, not its training
JOB = [
    o
    for o in TINY_TRAIN
    if not o.startswith(
        ("schedule.max_epochs", "data.datamodule.num_train", "data.datamodule.num_val", "schedule.milestones")
    )
] + [
    "schedule.max_epochs=1",
    "data.datamodule.num_train=8",
    "data.datamodule.num_val=4",
    "schedule.milestones=[]",
    "trainer.num_sanity_val_steps=0",
]


env = subprocess_env


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ttfnet_lightning.train", *args]


def results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


# ------------------------------------------------------------------------------------ SLURM
class _Submitted(Exception):
    pass


def _sbatch_script(tmp_path: Path, monkeypatch, *overrides: str) -> tuple[object, str]:
    """The composed ``hydra.launcher`` of ``hydra/launcher=slurm`` and the sbatch script submitit
    renders for a two-job sweep with it (``sbatch`` itself is never called)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    from conftest import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(
            "train",
            overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
            return_hydra_config=True,
        )
    scripts: list[str] = []

    def submit(self, command: str):
        scripts.append(self._make_submission_file_text(command, "uid"))
        raise _Submitted

    monkeypatch.setattr(SlurmExecutor, "_submit_command", submit)
    monkeypatch.setattr(
        SlurmExecutor, "affinity", classmethod(lambda cls: 2)
    )  # "srun is on the PATH": a SLURM login node
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg  # (what Hydra's setup() gives it; launch() reads only the sweep dir from it)
    with pytest.raises(_Submitted):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    return cfg.hydra.launcher, scripts[0]


def test_slurm_launcher_config_and_its_sbatch_script(tmp_path, monkeypatch):
    launcher, script = _sbatch_script(tmp_path, monkeypatch)
    # the paper's per-job resources: 8 GPUs, one process per GPU, requeue on preemption / time-out
    assert launcher.gpus_per_node == 8 and launcher.tasks_per_node == 8 and launcher.nodes == 1
    assert launcher.max_num_timeout >= 1 and launcher.signal_delay_s >= 60
    flags = {line.split("=")[0]: line.partition("=")[2] for line in script.splitlines() if line.startswith("#SBATCH")}
    assert flags["#SBATCH --gpus-per-node"] == "8"
    assert flags["#SBATCH --ntasks-per-node"] == "8"
    assert flags["#SBATCH --cpus-per-task"] == "5"
    assert flags["#SBATCH --mem"] == "160GB"
    assert flags["#SBATCH --time"] == "480"
    assert flags["#SBATCH --nodes"] == "1"
    assert flags["#SBATCH --signal"] == "USR2@120"  # submitit's preemption signal: checkpoint + requeue
    assert "#SBATCH --requeue" in script.splitlines()
    assert flags["#SBATCH --array"] == "0-1%2"  # the sweep's two jobs as one array
    assert flags["#SBATCH --job-name"].startswith("ttfnet-")
    assert str(tmp_path / "sweep" / ".submitit") in flags["#SBATCH --output"]
    assert "srun" in script and "submitit.core._submit" in script

    # every resource is overridable from the command line
    launcher, script = _sbatch_script(
        tmp_path,
        monkeypatch,
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.nodes=2",
        "hydra.launcher.timeout_min=60",
        "hydra.launcher.mem_gb=64",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.cpus_per_task=8",
    )
    flags = {line.split("=")[0]: line.partition("=")[2] for line in script.splitlines() if line.startswith("#SBATCH")}
    assert (flags["#SBATCH --gpus-per-node"], flags["#SBATCH --ntasks-per-node"], flags["#SBATCH --nodes"]) == (
        "4",
        "4",
        "2",
    )
    assert (
        flags["#SBATCH --time"],
        flags["#SBATCH --mem"],
        flags["#SBATCH --partition"],
        flags["#SBATCH --cpus-per-task"],
    ) == ("60", "64GB", "gpu", "8")

    # trainer=ddp takes its node count from SLURM inside the job
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert compose("train", ["trainer=ddp"]).trainer.num_nodes == 2


# ------------------------------------------------------------------------ submitit, locally
# slow (about 45 s: two job processes), to keep the default suite within CI's 15 minutes; the
# default suite covers the SLURM launcher's config and script, and the Optuna search end to end
@pytest.mark.slow
def test_submitit_local_two_job_sweep(tmp_path):
    """``-m hydra/launcher=submitit_local seed=0,1``: each job runs in its own submitit process and
    trains, validates and writes its results into ``<sweep>/<job num>``."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        train_cmd("-m", "hydra/launcher=submitit_local", *JOB, "seed=0,1", f"hydra.sweep.dir={sweep}"),
        capture_output=True,
        text=True,
        env=env(),
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    seeds = []
    for job in ("0", "1"):
        res = results(sweep / job)
        assert res["status"] == "finished" and res["global_step"] == 1 and "val/AP" in res["metrics"]
        seeds.append(json.loads(json.dumps(res["overrides"])))
    assert any("seed=0" in str(s) for s in seeds) and any("seed=1" in str(s) for s in seeds)
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs)  # run by submitit


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_submitit_job_preempted_requeues_and_resumes(tmp_path):
    """SIGUSR2 (submitit's preemption signal, what SLURM sends before a preemption or the time limit)
    to a running submitit job: training stops at the end of the batch with interrupted.ckpt
    (ttfnet_lightning.training.distributed.StopOnSignal; submitit alone would exit in the middle of a step),
    submitit requeues the job, the requeued job runs the same Hydra job in the same dir and resumes
    from that checkpoint; the sweep ends successfully with the planned steps and a continuous
    metrics.csv (no step lost or repeated)."""
    sweep = tmp_path / "sweep"
    job = [
        o
        for o in JOB
        if not o.startswith(("schedule.max_epochs", "data.datamodule.num_train", "data.datamodule.batch_size"))
    ] + [
        "schedule.max_epochs=2",
        "data.datamodule.num_train=32",
        "data.datamodule.batch_size=4",
        "callbacks.checkpoint_every_n_steps=1",
        "trainer.log_every_n_steps=1",
        "exact_resume=true",
    ]
    proc = subprocess.Popen(
        train_cmd("-m", "hydra/launcher=submitit_local", *job, "seed=0", f"hydra.sweep.dir={sweep}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        cwd=tmp_path,
    )
    ckpts, deadline = sweep / "0" / "checkpoints", time.monotonic() + 600
    while not (ckpts / "latest-step2.ckpt").is_file():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    tasks = [p for p in _descendants(proc.pid) if "submitit.core._submit" in _cmdline(p)]
    assert len(tasks) == 1, [(p, _cmdline(p)) for p in _descendants(proc.pid)]
    os.kill(tasks[0], signal.SIGUSR2)
    text, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, text[-3000:]
    log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "this job is preempted" in log and "Requeued job" in log, log[-3000:]
    # (interrupted.ckpt itself is removed when the resumed run finishes: Lightning's OnExceptionCheckpoint)
    assert f"wrote {ckpts / 'interrupted.ckpt'} at global step" in log, log[-3000:]
    assert f"from {ckpts / 'interrupted.ckpt'}" in log, log[-3000:]
    res = results(sweep / "0")
    assert res["status"] == "finished" and res["global_step"] == 16  # 32 images / 4 x 2 epochs
    with open(sweep / "0" / "metrics.csv") as f:
        steps = sorted(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss"))
    assert steps == list(range(16))


# ---------------------------------------------------------------------------- Optuna search
@pytest.mark.slow  # an Optuna study over two launches, ~18 s: make test stays under 15 min (make test-slow runs it)
def test_beta_lr_search_persists_and_a_relaunch_continues_the_study(tmp_path):
    """``-m hparams_search=beta_lr``: 3 trials at tiny settings, each returning val/AP to the sweeper,
    the study in ``<sweep dir>/optuna.db``; running the command again adds trials to the same study."""
    optuna = pytest.importorskip("optuna", reason="the cluster extra (hydra-optuna-sweeper) is not installed")
    sweep = tmp_path / "search"
    cfg = compose("train", ["hparams_search=beta_lr"])
    assert cfg.optimized_metric == "val/AP"

    base = train_cmd("-m", "hparams_search=beta_lr", *JOB, f"hydra.sweep.dir={sweep}")
    first = subprocess.run(
        [*base, "hydra.sweeper.n_trials=3"], capture_output=True, text=True, env=env(), timeout=900, cwd=tmp_path
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.load_study(study_name="beta_lr", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == 3 and len(done) == 3
    for t in done:
        assert set(t.params) == {"kernel.beta", "schedule.lr"}
        assert 0.01 <= t.params["kernel.beta"] <= 0.6 and 0.002 <= t.params["schedule.lr"] <= 0.064
        # the trial's run dir is named by its values; its val/AP is what the study recorded
        run = sweep / f"kernel.beta={t.params['kernel.beta']},schedule.lr={t.params['schedule.lr']}"
        assert results(run)["metrics"]["val/AP"] == pytest.approx(t.value)
    assert (sweep / "optimization_results.yaml").is_file()

    again = subprocess.run(
        [*base, "hydra.sweeper.n_trials=1"], capture_output=True, text=True, env=env(), timeout=900, cwd=tmp_path
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    study = optuna.load_study(study_name="beta_lr", storage=storage)
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
