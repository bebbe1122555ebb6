"""Interruptions lose nothing (issue 8), tested with real signals on real training processes:
SIGTERM writes a checkpoint and exits non-zero (and stops a whole sweep), SIGUSR1 under SLURM
saves and requeues, a hard kill resumes from the newest periodic checkpoint, and an interrupted,
resumed seeded run ends with exactly the weights and metrics of an uninterrupted one."""

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
import torch

from conftest import TINY_TRAIN, subprocess_env

# 4 batches of 4 per epoch, 2 epochs, a latest-step checkpoint after every step (the test's
# "training has started" marker and a hard kill's resume point)
RUN = [
    o
    for o in TINY_TRAIN
    if not o.startswith(("data.datamodule.num_train", "data.datamodule.batch_size", "data.datamodule.num_val"))
] + [
    "data.datamodule.num_train=16",
    "data.datamodule.batch_size=4",
    "data.datamodule.num_val=4",
    "callbacks.checkpoint_every_n_steps=1",
    "trainer.log_every_n_steps=1",
    "hydra.job.chdir=false",
    "exact_resume=true",
]
TIME_COLUMNS = ("time/train_seconds", "time/train_hours")


env = subprocess_env


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ttfnet_lightning.train", *RUN, f"output_dir={out}", *extra]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", env()), timeout=900, **kw)


def latest_step(out: Path) -> int:
    steps = [int(p.stem.removeprefix("latest-step")) for p in (out / "checkpoints").glob("latest-step*.ckpt")]
    return max(steps, default=-1)


def logged_steps(out: Path) -> set[int]:
    """Steps whose training-loss row is in ``metrics.csv`` on disk now (the LR monitor writes its
    own row of a step earlier, at the step's start)."""
    try:
        with open(out / "metrics.csv") as f:
            return {int(r["step"]) for r in csv.DictReader(f) if r.get("step") and r.get("train/loss")}
    except (OSError, KeyError, ValueError):
        return set()


def start_and_signal(
    cmd: list[str],
    out: Path,
    sig: int,
    *,
    after_step: int,
    env_: dict[str, str] | None = None,
    row_logged: bool = False,
) -> subprocess.Popen:
    """Start a training process and send it ``sig`` once the latest-step checkpoint of
    ``after_step`` exists (training has really started) and, with ``row_logged``, once
    ``metrics.csv`` holds the row of the step before that checkpoint; returns the process, still
    running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_ or env())
    deadline = time.monotonic() + 600
    while latest_step(out) < after_step or (row_logged and latest_step(out) - 1 not in logged_steps(out)):
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {after_step}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within 600 s")
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    text, _ = proc.communicate(timeout=600)
    return proc.returncode, text


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def metrics(out: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-clock columns."""
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same weights and buffers, and the same metrics.csv rows (steps, epochs,
    losses, LR, AP; the wall-clock columns aside)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ma, mb = metrics(a), metrics(b)
    assert ma == mb, "metrics.csv rows differ"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted seeded run (data loaded in the main process)."""
    out = tmp_path_factory.mktemp("reference")
    proc = run(command(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sigterm_mid_epoch_checkpoints_exits_nonzero_and_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    proc = start_and_signal(command(out), out, signal.SIGTERM, after_step=2)
    rc, text = finish(proc)
    assert rc != 0, f"SIGTERM exited with status 0:\n{text[-3000:]}"
    ckpt = out / "checkpoints" / "interrupted.ckpt"
    assert ckpt.is_file(), text[-3000:]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    step = state["global_step"]
    assert 2 <= step < 8, step  # stopped before the end (mid-epoch when step != 4)
    assert "run the same command again" in text
    again = run(command(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout and "interrupted.ckpt" in again.stdout
    assert_same_run(reference, out)
    # the wall clock of both sessions: the first up to its interrupt checkpoint, then the second's
    first = next(v for k, v in state["callbacks"].items() if k.startswith("TimeToAccuracy"))
    done, ref = (json.loads((p / "results.json").read_text()) for p in (out, reference))
    assert (done["sessions"], ref["sessions"], first["sessions"]) == (2, 1, 1)
    assert done["wall_seconds_total"] == pytest.approx(first["wall_seconds"] + done["wall_seconds_last_session"])
    assert first["wall_seconds"] > first["train_seconds"] > 0
    assert ref["wall_seconds_total"] == ref["wall_seconds_last_session"]


def test_hard_kill_resumes_from_the_latest_step_checkpoint_exactly(reference, tmp_path):
    out = tmp_path / "run"
    # Lightning writes a step's metrics row just after the step's periodic checkpoint; a kill in
    # between (a few ms) loses that row for good, as the resumed run does not train the step
    # again (known, docs/training.md "Interruptions, failures and SLURM"): the kill waits for the row
    proc = start_and_signal(command(out), out, signal.SIGKILL, after_step=3, row_logged=True)
    rc, _ = finish(proc)
    assert rc == -signal.SIGKILL
    newest = latest_step(out)
    again = run(command(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"latest-step{newest}.ckpt" in again.stdout, again.stdout[-2000:]
    assert_same_run(reference, out)


def test_two_seeded_runs_give_identical_metrics_with_default_workers(reference, tmp_path):
    """Same machine, default thread count, the data set's default worker count (2)."""
    out = tmp_path / "again"
    proc = run([c for c in command(out) if not c.startswith("data.datamodule.num_workers")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the reference loads data in the main process: augmentations seeded per sample make the
    # worker count irrelevant
    assert_same_run(reference, out)


def test_sigterm_stops_the_whole_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", "-m", "seed=0,1", *RUN, f"hydra.sweep.dir={sweep}"]
    proc = start_and_signal(cmd, sweep / "0", signal.SIGTERM, after_step=1)
    rc, text = finish(proc)
    assert rc != 0, text[-3000:]
    assert not (sweep / "1").exists(), "the sweep went on with its next job after SIGTERM"


def test_sigterm_to_the_process_group_with_workers_is_an_interruption(tmp_path):
    """SIGTERM to the whole process group (what SLURM's scancel, `kill -- -PGID` or a container
    stop send): the data-loader workers die with the training process, and the loader reports
    their death at once. The run is still an interruption (exit 143, interrupted.ckpt), not a
    failed job, and the sweep stops (it once marked the job failed and went on with the next)."""
    sweep = tmp_path / "sweep"
    run_ = [o for o in RUN if not o.startswith("data.datamodule.num_workers")] + ["data.datamodule.num_workers=2"]
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", "-m", "seed=0,1", *run_, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True
    )
    deadline = time.monotonic() + 600
    while latest_step(sweep / "0") < 1:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, text = finish(proc)
    assert rc == 143, text[-3000:]
    assert (sweep / "0" / "checkpoints" / "interrupted.ckpt").is_file(), text[-3000:]
    assert not (sweep / "0" / "results.json").exists(), "the interrupted job was recorded as finished or failed"
    assert not (sweep / "1").exists(), "the sweep went on with its next job after SIGTERM"


def test_slurm_sigusr1_saves_and_requeues_then_sigterm(tmp_path):
    """Lightning's SLURMEnvironment (auto_requeue): SIGUSR1 -> hpc_ckpt_1.ckpt in the output dir
    and `scontrol requeue <job id>` (a stand-in scontrol records its arguments); the SIGTERM that
    SLURM sends next stops the run non-zero, and the rerun resumes from the newest checkpoint."""
    out = tmp_path / "run"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    scontrol.chmod(0o755)
    slurm = env() | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "ttfnet",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }
    proc = start_and_signal(
        command(out, "callbacks.checkpoint_every_n_steps=1"), out, signal.SIGUSR1, after_step=1, env_=slurm
    )
    deadline = time.monotonic() + 300
    while (
        not (record.is_file() and list(out.glob("hpc_ckpt_*.ckpt")))
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, text = finish(proc)
    assert list(out.glob("hpc_ckpt_*.ckpt")), text[-3000:]
    assert record.read_text().split() == ["requeue", "4242"]
    assert rc != 0, text[-3000:]
    again = run(command(out), env=slurm)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout


def test_sigterm_during_validation_reruns_that_validation_after_resume(tmp_path, monkeypatch):
    """A real SIGTERM (sent by the process to itself after the first of two validation batches of
    epoch 0): the resumed run validates epoch 0 again over all its images, then trains on, ending
    exactly like an uninterrupted run (Lightning alone would skip that validation)."""
    import pytorch_lightning as pl

    import ttfnet_lightning.training.run as train_mod
    from conftest import compose

    overrides = [o for o in RUN if not o.startswith(("data.datamodule.num_train", "data.datamodule.num_val", "hydra."))]
    overrides += ["data.datamodule.num_train=8", "data.datamodule.num_val=8", "callbacks.checkpoint_every_n_steps=0"]

    def run_in_process(out: Path) -> None:
        train_mod.train(compose("train", [*overrides, f"output_dir={out}"]))

    run_in_process(tmp_path / "reference")

    class TermDuringValidation(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking and trainer.current_epoch == 0 and batch_idx == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    real = train_mod.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(train_mod, "build_callbacks", lambda cfg, o: [*real(cfg, o), TermDuringValidation()])
        with pytest.raises(SystemExit) as info:
            run_in_process(out)
    assert info.value.code != 0
    assert (out / "checkpoints" / "interrupted.ckpt").is_file()
    assert not (out / "checkpoints" / "last.ckpt").exists()  # the validation did not finish
    run_in_process(out)
    epochs = [r["epoch"] for r in metrics(out) if r.get("val/loss")]
    assert epochs == ["0", "1"], epochs
    assert_same_run(tmp_path / "reference", out)  # incl. val/loss over all 8 images, bitwise


# runs the train command as ``python -m`` would, then writes whether torch's deterministic mode was on
# when the process ended (Lightning turns it on for trainer.deterministic=true and never off)
_PROBE = """
import atexit, json, runpy, sys, torch
before, probe = torch.are_deterministic_algorithms_enabled(), sys.argv[1]
atexit.register(lambda: open(probe, "w").write(json.dumps([before, torch.are_deterministic_algorithms_enabled()])))
sys.argv = ["ttfnet_lightning.train", *sys.argv[2:]]
runpy.run_module("ttfnet_lightning.train", run_name="__main__")
"""


def test_deterministic_algorithms_change_nothing_on_cpu(reference, tmp_path):
    """`trainer.deterministic=true` reaches torch (torch.use_deterministic_algorithms is on for the
    run, off before it), runs every op of a training run under it and gives bitwise the reference's
    weights and metrics: on CPU the default kernels are already deterministic (its cost:
    docs/training.md)."""
    out, probe = tmp_path / "deterministic", tmp_path / "probe.json"
    cmd = command(out, "trainer.deterministic=true")
    proc = run([sys.executable, "-c", _PROBE, str(probe), *cmd[3:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(probe.read_text()) == [False, True]
    assert_same_run(reference, out)
