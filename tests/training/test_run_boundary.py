"""Safe at the boundary (issue 21, parts 3 and 4): one run per output folder at a time (a lock that
a killed run does not leave stuck), every resume checked (an explicit ckpt_path like a rerun into
its folder, the data a run was trained on), a damaged checkpoint never the end, run records
written atomically and durably, and every checkpoint loaded with weights_only=True."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_TRAIN, compose, subprocess_env
from ttfnet_lightning.training.run import train

ONE_EPOCH = [o for o in TINY_TRAIN if not o.startswith("schedule.max_epochs")] + [
    "schedule.max_epochs=1",
    "callbacks.checkpoint_every_n_steps=0",
]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (the lock file aside): content and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".run.lock"
    }


# ------------------------------------------------------------------------------------ 3. the lock
HOLDER = """
import os, sys, time
from ttfnet_lightning.training.run_lock import run_lock
with run_lock(sys.argv[1]):
    child = 0
    if len(sys.argv) > 2:  # a forked child that outlives this process, as a data-loader worker can
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
    print("locked", child, flush=True)
    time.sleep(120)
"""


def start_holder(out: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    """A process that holds ``out``'s run lock (and, with ``extra``, a forked child that does not
    exit with it); returns it once it holds the lock, and the child's pid (0: none)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
    )
    line = proc.stdout.readline()
    if not line.startswith("locked"):
        proc.kill()
        raise AssertionError(f"the holder did not take the lock: {line}{proc.stdout.read()[-2000:]}")
    return proc, int(line.split()[1])


def test_a_second_run_into_a_running_folder_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config_resolved.yaml").write_text("the running run's config\n")
    (out / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    before = snapshot(out)
    holder, _ = start_holder(out)
    try:
        with pytest.raises(RuntimeError, match=r"in use by another training run") as info:
            train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
        msg = str(info.value)
        assert (
            f"pid {holder.pid} on host {socket.gethostname()}" in msg and "started 20" in msg and "command: " in msg
        ), msg
        assert snapshot(out) == before, "the refused run changed files of the running one"
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_command_line_refuses_before_hydra_writes_into_the_folder(tmp_path):
    """`python -m ttfnet_lightning.train output_dir=<a running run's folder>`: exits non-zero naming
    the running run, before Hydra writes its .hydra/ copies or log there."""
    out = tmp_path / "run"
    holder, _ = start_holder(out)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ttfnet_lightning.train", *ONE_EPOCH, f"output_dir={out}"],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=300,
        )
        assert proc.returncode != 0
        assert f"in use by another training run (pid {holder.pid}" in proc.stderr, proc.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == [".run.lock"], sorted(out.iterdir())
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    """SIGKILL: the kernel releases the lock at once, even while a forked child of the holder (a
    data-loader worker) still runs; the next run takes it."""
    from ttfnet_lightning.training.run_lock import RunLockedError, run_lock

    out = tmp_path / "run"
    holder, child = start_holder(out, "fork")
    try:
        with pytest.raises(RunLockedError), run_lock(out):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child still runs
        with run_lock(out) as lock:
            assert lock is not None and json.loads(lock.read_text())["pid"] == os.getpid()
        assert not (out / ".run.lock").exists()  # released and removed at the end
    finally:
        holder.kill()
        holder.wait()
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


def test_other_ranks_of_the_same_run_are_not_refused(tmp_path, monkeypatch):
    """Under DDP only the launching process (rank 0) locks; the other ranks of that run go on."""
    from ttfnet_lightning.training.run_lock import RunLockedError, lock_output_dir

    out = tmp_path / "run"
    holder, _ = start_holder(out)
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")
        with lock_output_dir(out) as lock:
            assert lock is None
        monkeypatch.delenv("LOCAL_RANK")
        with pytest.raises(RunLockedError), lock_output_dir(out):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_table_job_does_not_mark_the_folder_failed(tmp_path):
    """A paper-table job marks its own failure in results.json, but never a folder that another
    process is training into or that holds a run of another configuration."""
    from ttfnet_lightning.train import main

    out = tmp_path / "run"
    holder, _ = start_holder(out)
    try:
        with pytest.raises(RuntimeError, match="in use"):
            main(compose("train", [*ONE_EPOCH, f"output_dir={out}", "table={name: t}"]))
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
    finished = (out / "results.json").read_bytes()
    with pytest.raises(ValueError, match="kernel.beta"):
        main(compose("train", [*ONE_EPOCH, f"output_dir={out}", "table={name: t}", "kernel.beta=0.3"]))
    assert (out / "results.json").read_bytes() == finished


# ------------------------------------------------------------------- 4. an explicit ckpt_path is checked
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
    return out


@pytest.mark.parametrize(
    "override, match",
    [
        ("kernel.beta=0.3", r"kernel.beta: stored 0.54, now 0.3"),
        ("backbone=r34", r"backbone.name: stored 'r18', now 'r34'"),
    ],
)
def test_explicit_ckpt_path_gets_the_stored_config_check(finished_run, tmp_path, override, match):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=match) as info:
        train(compose("train", [*ONE_EPOCH, f"output_dir={tmp_path / 'new'}", f"ckpt_path={ckpt}", override]))
    assert str(ckpt) in str(info.value)


def test_a_checkpoint_without_its_config_is_checked_by_its_model_settings(finished_run, tmp_path):
    """A checkpoint written before checkpoints carried their config, copied away from its run folder."""
    ckpt = torch.load(finished_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt.pop("ttfnet_run", None)
    old = tmp_path / "elsewhere" / "old.ckpt"
    old.parent.mkdir()
    torch.save(ckpt, old)
    with pytest.raises(ValueError, match=r"kernel.beta: checkpoint 0.54, now 0.3"):
        train(compose("train", [*ONE_EPOCH, f"output_dir={tmp_path / 'new'}", f"ckpt_path={old}", "kernel.beta=0.3"]))


def test_files_that_are_not_training_checkpoints_get_clear_errors(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    with pytest.raises(
        ValueError,
        match=rf"{weights} is not a ttfnet-lightning training checkpoint but a plain state dict of 122 "
        r"tensors \(keys conv1.weight, .*backbone.weights=",
    ):
        train(compose("train", [*ONE_EPOCH, f"output_dir={tmp_path / 'a'}", f"ckpt_path={weights}"]))
    other = tmp_path / "other.ckpt"
    torch.save(
        {
            "state_dict": {"layer.weight": torch.zeros(2)},
            "pytorch-lightning_version": "2.0",
            "hyper_parameters": {"lr": 1},
        },
        other,
    )
    with pytest.raises(ValueError, match=rf"{other} is a Lightning checkpoint of another model"):
        train(compose("train", [*ONE_EPOCH, f"output_dir={tmp_path / 'b'}", f"ckpt_path={other}"]))
    assert not (tmp_path / "a" / "config_resolved.yaml").exists()


# ------------------------------------------------------------------------ 4. the data is part of a run
def _coco_split(root: Path, split: str, *, x: int) -> None:
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    for i in range(4):
        Image.new("RGB", (64, 64), (30 * i, 90, 200)).save(root / split / f"{i}.jpg")
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in range(4)],
        "annotations": [
            {"id": i + 1, "image_id": i, "category_id": 1, "bbox": [x, 8, 24, 24], "area": 576, "iscrowd": 0}
            for i in range(4)
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def _coco(root: Path, *, x: int = 8) -> Path:
    _coco_split(root, "train", x=x)
    _coco_split(root, "val", x=8)
    return root


def coco_run(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data=coco",
        f"data.datamodule.root={root}",
        "data.datamodule.train_split=train",
        "data.datamodule.val_split=val",
        "data.datamodule.input_size=[64,64]",
        "data.datamodule.batch_size=2",
        "data.datamodule.num_workers=0",
        "data.datamodule.preflight=false",
        "schedule.max_epochs=1",
        "schedule.warmup_steps=1",
        "schedule.milestones=[1]",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks.log_val_images=0",
        "callbacks.checkpoint_every_n_steps=0",
        f"output_dir={out}",
        *extra,
    ]


def test_a_run_is_not_resumed_or_skipped_on_other_data(tmp_path, capsys, caplog):
    a, moved, other = _coco(tmp_path / "a"), tmp_path / "moved", _coco(tmp_path / "b", x=12)
    shutil.copytree(a, moved)
    out = tmp_path / "run"
    train(compose("train", coco_run(a, out)))
    train(compose("train", coco_run(moved, out)))  # the same data elsewhere: skipped as before
    assert "skipping" in capsys.readouterr().out
    stored = "sha256:" + hashlib.sha256((a / "annotations" / "instances_train.json").read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"trained on other data") as info:  # a finished run
        train(compose("train", coco_run(other, out)))
    assert f"train annotations/instances_train.json: stored {stored}, now sha256:" in str(info.value), str(info.value)
    (out / "results.json").unlink()  # an interrupted run (its checkpoints remain)
    with pytest.raises(ValueError, match=r"trained on other data"):
        train(compose("train", coco_run(other, out)))
    with pytest.raises(
        ValueError, match=r"checkpoint .*last.ckpt was trained on other data"
    ):  # its checkpoint, elsewhere
        train(compose("train", coco_run(other, tmp_path / "new", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")))


def test_runs_stored_before_data_fingerprints_stay_skippable(tmp_path, capsys, caplog):
    a, other = _coco(tmp_path / "a"), _coco(tmp_path / "b", x=12)
    out = tmp_path / "run"
    train(compose("train", coco_run(a, out)))
    (out / "data_fingerprint.json").unlink(missing_ok=True)
    results = json.loads((out / "results.json").read_text())
    results.pop("data_fingerprint", None)
    (out / "results.json").write_text(json.dumps(results))
    caplog.set_level("INFO")
    train(compose("train", coco_run(other, out)))
    assert "skipping" in capsys.readouterr().out
    assert "stored before data fingerprints" in caplog.text


def test_data_fingerprints_follow_the_annotations_not_the_location(tmp_path):
    """VOC: the split list and every listed XML; a prepared stream: its metadata and chunk index;
    a copy elsewhere has the same fingerprint."""
    from ttfnet_lightning.data.datamodules import VocDataModule
    from ttfnet_lightning.data.stream import CocoStreamDataModule

    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for n in names:
            (voc / "Annotations" / f"{n}.xml").write_text(f"<annotation><filename>{n}.jpg</filename></annotation>")
    before = VocDataModule.data_fingerprint(root=voc)
    shutil.copytree(voc, tmp_path / "voc2")
    assert VocDataModule.data_fingerprint(root=tmp_path / "voc2") == before
    (voc / "Annotations" / "b.xml").write_text("<annotation><filename>other.jpg</filename></annotation>")
    after = VocDataModule.data_fingerprint(root=voc)
    assert [k for k in before if before[k] != after[k]] == ["train ImageSets/Main/train.txt + Annotations/*.xml"]

    stream = tmp_path / "stream"
    for rel in ("metadata.json", "train/index.json", "val/index.json"):
        (stream / rel).parent.mkdir(parents=True, exist_ok=True)
        (stream / rel).write_text(f'{{"{rel}": 1}}')
    before = CocoStreamDataModule.data_fingerprint(input_dir=str(stream))
    (stream / "val" / "index.json").write_text('{"chunks": []}')
    after = CocoStreamDataModule.data_fingerprint(input_dir=str(stream))
    assert [k for k in before if before[k] != after[k]] == ["val metadata.json + val/index.json"]


def test_the_voc_fingerprint_never_reads_outside_the_annotation_folder(tmp_path, monkeypatch):
    """A split list naming ``../..`` or an absolute path: the fingerprint reads no file outside
    ``Annotations/`` (the data set refuses such names by name when it is built)."""
    from ttfnet_lightning.data import fingerprint
    from ttfnet_lightning.data.datamodules import VocDataModule

    secret = tmp_path / "secret.xml"
    secret.write_text("<annotation/>")
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "a.xml").write_text("<annotation/>")
    (voc / "Annotations" / "link.xml").symlink_to(secret)
    (voc / "ImageSets" / "Main" / "train.txt").write_text(f"a\n../../secret\n{tmp_path / 'secret'}\nlink\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    read: list[Path] = []
    real_digest = fingerprint.file_digest
    monkeypatch.setattr(fingerprint, "file_digest", lambda p, **kw: read.append(Path(p)) or real_digest(p, **kw))
    VocDataModule.data_fingerprint(root=voc)
    assert read, "the fingerprint read nothing"
    outside = [p for p in read if not os.path.realpath(p).startswith(os.path.realpath(voc) + os.sep)]
    assert outside == []


# --------------------------------------------------------------------- 4. a damaged checkpoint is passed over
@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, capsys, damage):
    out = tmp_path / "run"
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
    (out / "results.json").unlink()  # as if stopped after its last validation
    last = out / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    bad = out / "checkpoints" / "latest-step3.ckpt"  # e.g. the periodic checkpoint a hard kill or a full disk cut short
    bad.write_bytes(bytes(data))
    os.utime(bad, ns=(last.stat().st_mtime_ns + 10**9,) * 2)
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
    said = capsys.readouterr()
    assert f"not resuming from {bad}: checkpoint {bad}" in said.err, said.err
    assert ("not a readable PyTorch checkpoint" if damage == "truncated" else "fails its CRC check") in said.err
    assert f"resuming {out} from {last}" in said.out
    assert json.loads((out / "results.json").read_text())["status"] == "finished"
    assert bad.read_bytes() == bytes(data)  # left as it was


# ---------------------------------------------------------------- 4. atomic, durable writes; weights_only
def test_run_records_are_written_atomically_and_durably(tmp_path, monkeypatch):
    """Every record of a run is fsync'ed under a temporary name in its folder, renamed, and the
    folder fsync'ed after the rename."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "run"
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}", f"export_backbone={tmp_path / 'bb.pth'}"]))
    for target in [
        out / "results.json",
        out / "detections_val.json",
        out / "config_resolved.yaml",
        out / "data_fingerprint.json",
        out / "checkpoints" / "last.ckpt",
        tmp_path / "bb.pth",
    ]:
        tmp = f"{target}.tmp"
        i = events.index(("replace", f"{tmp} -> {target}"))
        assert ("fsync", tmp) in events[:i], f"{target} renamed before its bytes were synced"
        assert ("fsync", str(target.parent)) in events[i + 1 :], f"{target.parent} not synced after the rename"


def test_an_export_path_that_is_a_directory_fails_before_training(tmp_path):
    with pytest.raises(IsADirectoryError, match="export_backbone="):
        train(compose("train", [*ONE_EPOCH, f"output_dir={tmp_path / 'run'}", f"export_backbone={tmp_path}"]))
    assert not (tmp_path / "run" / "checkpoints").exists() and not list(tmp_path.glob("*.tmp"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from ttfnet_lightning.core.atomic import atomic_write

    path = tmp_path / "results.json"
    path.write_text("old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_every_checkpoint_is_loaded_with_weights_only(tmp_path, monkeypatch):
    from ttfnet_lightning.training.checkpoints import load_model

    calls: list[object] = []
    real = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    out = tmp_path / "run"
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
    (out / "results.json").unlink()
    monkeypatch.setattr(torch, "load", load)
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))  # resumes from last.ckpt
    load_model(out / "checkpoints" / "last.ckpt")
    assert calls and all(c is True for c in calls), calls


def test_unsafe_checkpoints_are_refused_without_advice_to_load_them_unsafely(tmp_path):
    from ttfnet_lightning.core.models.base import load_state_dict_strict
    from ttfnet_lightning.training.checkpoints import load_model

    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "payload": socket.socket}, bad)
    with pytest.raises(
        ValueError, match=rf"checkpoint {bad} holds Python objects other than tensors .*socket.socket"
    ) as info:
        load_model(bad)
    msg = str(info.value)
    assert "weights_only" not in msg and "can still be loaded" not in msg, msg
    with pytest.raises(
        RuntimeError, match=rf"could not read backbone weights from {bad}"
    ) as info:  # backbone.weights=...
        load_state_dict_strict(torch.nn.Linear(1, 1), bad)
    msg = str(info.value)
    assert "weights_only" not in msg and "can still be loaded" not in msg, msg


# ------------------------------------------------------------------ 3. with real training processes (slow)
REAL = [o for o in TINY_TRAIN if not o.startswith(("schedule.max_epochs", "data.datamodule.num_workers"))] + [
    "schedule.max_epochs=6",
    "callbacks.checkpoint_every_n_steps=1",
    "data.datamodule.num_workers=2",
]


def start_training(out: Path, *extra: str) -> subprocess.Popen:
    """A training process into ``out``, returned once it has trained a step (a periodic checkpoint)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttfnet_lightning.train", *REAL, f"output_dir={out}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("latest-step*.ckpt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_two_trainings_into_one_folder(tmp_path):
    """The second is refused at once, naming the first; the first finishes with its own results,
    and its rerun reports it finished (before: one died in the CSV writer, the other's results
    ended up beside the first one's config)."""
    out = tmp_path / "run"
    first = start_training(out)
    second = subprocess.run(
        [sys.executable, "-m", "ttfnet_lightning.train", *REAL, "kernel.beta=0.3", f"output_dir={out}"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert second.returncode != 0 and f"in use by another training run (pid {first.pid}" in second.stderr, (
        second.stderr[-3000:]
    )
    text, _ = first.communicate(timeout=600)
    assert first.returncode == 0, text[-3000:]
    assert (
        "kernel.beta=0.3" not in (out / "results.json").read_text()
        and "beta: 0.54" in (out / "config_resolved.yaml").read_text()
    )
    again = subprocess.run(
        [sys.executable, "-m", "ttfnet_lightning.train", *REAL, f"output_dir={out}"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert again.returncode == 0 and "skipping" in again.stdout, again.stderr[-3000:]


@pytest.mark.slow
def test_a_hard_killed_training_with_workers_leaves_no_stuck_lock(tmp_path):
    """SIGKILL to the training process alone: its data-loader workers outlive it for a moment, but
    the folder is free at once."""
    from ttfnet_lightning.training.run_lock import run_lock

    out = tmp_path / "run"
    proc = start_training(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(out) as lock:
        assert lock is not None


def test_a_folder_whose_only_checkpoint_is_unreadable_starts_afresh(tmp_path, capsys):
    """train() passes over an unreadable checkpoint and starts a fresh run; Lightning must not load
    the file anyway (it did while the interruption callback was an OnExceptionCheckpoint, for which
    ``fit(ckpt_path=None)`` means "the newest checkpoint of the folder")."""
    out = tmp_path / "run"
    bad = out / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint" * 64)
    train(compose("train", [*ONE_EPOCH, f"output_dir={out}"]))
    said = capsys.readouterr()
    assert f"not resuming from {bad}" in said.err, said.err
    assert json.loads((out / "results.json").read_text())["status"] == "finished"
    assert torch.load(bad, map_location="cpu", weights_only=True)["global_step"] > 0  # a new last.ckpt
