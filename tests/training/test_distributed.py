"""Several processes (issue 11, Lightning DDP): ``trainer=ddp`` / ``trainer=ddp_cpu`` compose, the LR
follows the real total batch, the validation mAP and the COCO results JSON count every validation
image exactly once across ranks (the distributed sampler pads), and real 2-process CPU runs (gloo):
a short one in the default suite, a 2-process vs 1-process comparison and a SIGTERM/resume under
``slow``."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, TINY_TRAIN, compose, subprocess_env
from ttfnet_lightning.training.optim import lr_factor, scaled_lr

env = subprocess_env


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def by_step(table: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in table if r.get(key) not in (None, "")}


# --------------------------------------------------------------------------------- configs, LR
def test_ddp_trainer_configs_and_lr_scaling_by_world_size(monkeypatch):
    from hydra.utils import instantiate

    from ttfnet_lightning.training.run import build_datamodule, build_module

    # trainer=ddp: Lightning's DDP on GPUs, SyncBatchNorm an option, nodes from SLURM
    cfg = compose("train", ["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == "auto"
    assert cfg.trainer.sync_batchnorm is False and cfg.trainer.num_nodes == 1
    monkeypatch.setenv("SLURM_NNODES", "4")
    assert (
        compose("train", ["trainer=ddp", "trainer.sync_batchnorm=true"]).trainer.num_nodes == 4
    )  # an int, as Lightning wants
    monkeypatch.delenv("SLURM_NNODES")

    # trainer=ddp_cpu, 2 processes x 2 nodes (no launch: the Trainer knows its world already)
    cfg = compose(
        "train",
        [
            *TINY_TRAIN,
            "trainer=ddp_cpu",
            "trainer.num_nodes=2",
            "trainer.accumulate_grad_batches=3",
            "data.datamodule.batch_size=4",
        ],
    )
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 2
    trainer = instantiate(cfg.trainer, logger=False, _convert_="all")
    assert trainer.world_size == 4 and type(trainer.strategy).__name__ == "DDPStrategy"
    dm = build_datamodule(cfg)
    model = build_module(cfg, dm)
    model.trainer = trainer
    assert model.total_batch_size() == 4 * 4 * 3  # per device x world size x accumulation
    expected = scaled_lr(cfg.schedule.lr, total_batch=48, reference_batch=cfg.schedule.reference_batch)
    assert expected == pytest.approx(cfg.schedule.lr * 48 / 16)


def test_launch_rank_from_the_launchers_environment(monkeypatch):
    """Who writes the run's files before the Trainer exists: rank 0 of torchrun, srun, Lightning."""
    from ttfnet_lightning.training.distributed import launch_rank

    for key in ("RANK", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert launch_rank() == 0  # a plain run, or Lightning's main process
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_rank() == 1  # a child started by Lightning
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert launch_rank() != 0  # the main process of another node
    for key in ("LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launch_rank() == 3  # srun
    monkeypatch.setenv("RANK", "5")
    assert launch_rank() == 5  # torchrun


def test_exact_order_sharded_into_the_micro_batches_of_one_process():
    """exact_resume under DDP: each step's batches of the W processes are one process's W
    micro-batches (same order), equally many per process, and a resume skips whole steps."""
    from ttfnet_lightning.training.data_order import EpochSampler

    one = [i for i, _ in EpochSampler(21, 7, batch_size=8)]
    assert sorted(one) == list(range(21))
    for drop_last in (True, False):
        shards = [EpochSampler(21, 7, rank=r, world_size=2, batch_size=4, drop_last=drop_last) for r in range(2)]
        got = [[i for i, _ in s] for s in shards]
        assert [len(g) for g in got] == [len(s) for s in shards] == ([8, 8] if drop_last else [12, 12])
        for step in range(2):  # the two full steps: rank 0 then rank 1 = one process's 8 in order
            assert got[0][4 * step : 4 * step + 4] + got[1][4 * step : 4 * step + 4] == one[8 * step : 8 * step + 8]
        if not drop_last:  # the last, partial step padded with the first samples
            assert got[0][8:] + got[1][8:] == one[16:21] + one[:3]
    resumed = EpochSampler(21, 7, rank=1, world_size=2, batch_size=4, drop_last=True)
    resumed.skip = 8  # one step (4 x 2) trained before the checkpoint
    assert [i for i, _ in resumed] == one[12:16]


# ------------------------------------------------------------------ validation counted once
def _metric_worker(rank: int, world: int, init_file: str, out_file: str, data: dict) -> None:
    """One rank: its shard of the validation images as Lightning's DistributedSampler gives it
    (padded to a multiple of the world size with the first images, rank r takes r::world), the
    mAP metric and the COCO results gathered to rank 0."""
    from ttfnet_lightning.training.callbacks import CocoResultsWriter
    from ttfnet_lightning.training.distributed import dedupe_by_image, gather_to_rank_zero
    from ttfnet_lightning.training.lit_module import build_map_metric

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = len(data["ids"])
    total = math.ceil(n / world) * world
    mine = (list(range(n)) + list(range(total - n)))[rank::world]
    metric, writer = build_map_metric(), CocoResultsWriter()
    for start in range(0, len(mine), 2):  # batches of 2
        idx = mine[start : start + 2]
        preds, gts, ids = [data["preds"][i] for i in idx], [data["gts"][i] for i in idx], [data["ids"][i] for i in idx]
        metric.update(preds, gts, image_ids=ids)
        writer.add(preds, [{"image_id": i} for i in ids], None)
    res = metric.compute()
    per_rank = gather_to_rank_zero(SimpleNamespace(world_size=world, global_rank=rank), writer.results)
    if rank == 0:
        torch.save(
            {
                "metric": {k: v for k, v in res.items() if k != "classes"},
                "json": dedupe_by_image(per_rank),
                "raw": [r for results in per_rank for r in results],
            },
            out_file,
        )
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _synthetic(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    preds, gts = [], []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 8 + torch.rand(3, 2, generator=g) * 16], 1)
        labels = torch.randint(0, 2, (3,), generator=g)
        gts.append({"boxes": boxes, "labels": labels})
        noisy = boxes + torch.randn(3, 4, generator=g) * 3
        fp = torch.cat([xy[:1] + 20, xy[:1] + 30], 1)  # a false positive per image
        preds.append(
            {
                "boxes": torch.cat([noisy, fp]),
                "scores": torch.rand(4, generator=g),
                "labels": torch.cat([labels, labels[:1]]),
            }
        )
    return {"preds": preds, "gts": gts, "ids": [100 + i for i in range(n)]}


def test_metric_and_coco_json_count_each_image_once_across_two_processes(tmp_path):
    """2 gloo processes, 7 images (one padded repeat): the gathered mAP equals the single-process mAP
    of the 7 images exactly, the COCO JSON holds each image's detections once."""
    from ttfnet_lightning.training.lit_module import build_map_metric

    data = _synthetic(7)
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(_metric_worker, args=(2, str(tmp_path / "init"), str(out), data), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)

    single = build_map_metric()
    single.update(data["preds"], data["gts"], image_ids=data["ids"])
    ref = single.compute()
    for key, value in got["metric"].items():
        assert torch.allclose(value.float(), ref[key].float(), atol=1e-6), (key, value, ref[key])
    padded = build_map_metric()  # what the padded shards give when nothing is dropped: the test can tell
    padded.update(data["preds"] + data["preds"][:1], data["gts"] + data["gts"][:1])
    assert not torch.allclose(padded.compute()["map"], ref["map"])

    per_image = {}
    for r in got["json"]:
        per_image.setdefault(r["image_id"], []).append(r)
    assert sorted(per_image) == data["ids"] and all(len(v) == 4 for v in per_image.values())  # 4 detections each, once
    assert len(got["raw"]) == 8 * 4  # the padded repeat was there before the dedupe


# --------------------------------------------------------------------- a real 2-process run
DDP_RUN = [
    o for o in TINY_TRAIN if not o.startswith(("trainer=", "data.datamodule.batch_size", "data.datamodule.num_val"))
] + [
    "trainer=ddp_cpu",
    "data.datamodule.batch_size=4",
    "data.datamodule.num_val=7",
    "trainer.log_every_n_steps=1",
    "model.score_threshold=0.0",  # every image has detections: the JSON shows each image once
    # the same training order as one process (sharded: each step's two batches are one process's two
    # micro-batches with accumulate_grad_batches=2)
    "exact_resume=true",
]
# the same run on one process with the same total batch (4 images x 2 accumulated)
ONE_PROCESS = [o for o in DDP_RUN if not o.startswith("trainer=")] + [
    "trainer=cpu",
    "trainer.accumulate_grad_batches=2",
]


def _run(args: list[str], out: Path, cwd: Path, timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    """A training run in its own process; one thread per process (as Lightning sets for each DDP
    process on a CPU), so that 1-process and 2-process runs round alike."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ttfnet_lightning.train", *args, f"output_dir={out}"],
        capture_output=True,
        text=True,
        env=env() | {"OMP_NUM_THREADS": "1"},
        timeout=timeout,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, time.perf_counter() - t0


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {
        k: v.float() for k, v in state.items() if v.is_floating_point() and "running_" not in k
    }  # (BN running stats: rank 0's)


def _relative_differences(a: Path, b: Path) -> list[float]:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return [float((wa[k] - wb[k]).norm() / (wb[k].norm() + 1e-12)) for k in wa]


def _each_image_once(run: Path, num_images: int) -> list[dict]:
    dets = json.loads((run / "detections_val.json").read_text())
    keys = [(d["image_id"], d["category_id"], tuple(d["bbox"]), d["score"]) for d in dets]
    assert len(keys) == len(set(keys)), "an image's detections appear twice"
    assert {d["image_id"] for d in dets} <= set(range(num_images))
    return dets


@pytest.mark.slow  # two DDP processes, ~21 s: make test stays under 15 min (make test-slow runs it)
def test_two_process_run_matches_one_process_with_the_same_total_batch(tmp_path):
    """``trainer=ddp_cpu`` (2 processes, gloo, 4 images each) against one process with 4 images x 2
    accumulated (total batch 8 both): the same LR at every step (that of the total batch 8), the
    same weights after 4 steps (to float rounding: gloo's all-reduce and one thread per process),
    the same val/AP; metrics and results written once; ``detections_val.json`` holds each of the 7
    validation images once (Lightning's sampler pads rank 1 with image 0)."""
    two, one = tmp_path / "two", tmp_path / "one"
    proc, _ = _run(DDP_RUN, two, tmp_path)
    assert "total batch 8" in proc.stdout + proc.stderr
    _run(ONE_PROCESS, one, tmp_path)

    table = rows(two / "metrics.csv")
    lr = by_step(table, "train/lr/weights")
    base = scaled_lr(
        0.016, total_batch=8, reference_batch=16
    )  # r18's LR per 16 images (data/shapes.yaml), 4 x 2 images
    for step, value in lr.items():
        f = lr_factor(
            step, steps_per_epoch=2, milestones=[1], gamma=0.1, warmup_steps=2, warmup_ratio=0.2
        )  # 16 images / 8 per step
        assert value == pytest.approx(base * f, rel=1e-6), (step, value)
    assert sorted(lr) == [0, 1, 2, 3] and by_step(rows(one / "metrics.csv"), "train/lr/weights") == pytest.approx(
        lr, rel=1e-9
    )
    assert sorted(by_step(table, "val/AP")) == [1, 3]  # one row per validation (rank 0 logs)

    diffs = _relative_differences(two, one)
    assert max(diffs) < 1e-3, max(diffs)  # measured: 5e-5 (median 1e-9)

    r2, r1 = (json.loads((d / "results.json").read_text()) for d in (two, one))
    assert r2["status"] == "finished" and r2["global_step"] == r1["global_step"] == 4
    assert abs(r2["metrics"]["val/AP"] - r1["metrics"]["val/AP"]) <= 0.5
    dets = _each_image_once(two, 7)
    assert sorted({d["image_id"] for d in dets}) == list(range(7))


# ------------------------------------------------------------------------------------- slow
# The CPU protocol (protocol=cpu: 320 images of 128 px, the CPU-pretrained ResNet-18 backbone with
# stem + stage 1 frozen, tracked in git; 240 steps of 16 images) on 2 processes of 8 images and on
# one process with 8 x 2 accumulated, in the same order (exact_resume): the same computation, so
# the same AP up to float rounding (gloo's all-reduce order), which 240 steps amplify a little.
# Measured on the 2-core development machine (quiet): val/AP 8.03 (2 processes, 108 s training) vs
# 8.01 (one process, 163 s). One process with batch 16 (BatchNorm statistics over 16 images instead
# of 8) reaches 28.95: per-process BatchNorm, not DDP, makes that difference; trainer=ddp offers
# sync_batchnorm=true on GPUs.
PRETRAINED = REPO / "results" / "cpu-pretrained" / "r18.pth"
COMPARE = [
    "protocol=cpu",
    f"backbone.weights={PRETRAINED}",
    "logger=csv",
    "callbacks.log_val_images=0",
    "exact_resume=true",
    "data.datamodule.batch_size=8",
]
AP_TOLERANCE = 0.5  # AP points (measured difference: 0.02)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_two_processes_match_one_process_on_the_cpu_protocol(tmp_path):
    """The CPU protocol on 2 processes and on one (same data, order and total batch 16): the same LR
    at every step, val/AP within AP_TOLERANCE of a trained model's (> 3), each of the 100
    validation images once in the 2-process JSON. Prints both APs and times."""
    if not PRETRAINED.is_file():
        pytest.skip(f"{PRETRAINED} (the CPU protocol's backbone, tracked in git) is missing")
    one, two = tmp_path / "one", tmp_path / "two"
    _, t1 = _run([*COMPARE, "trainer=cpu", "trainer.accumulate_grad_batches=2"], one, tmp_path, timeout=3000)
    _, t2 = _run([*COMPARE, "trainer=ddp_cpu"], two, tmp_path, timeout=3000)
    r1, r2 = (json.loads((d / "results.json").read_text())["metrics"] for d in (one, two))
    print(
        f"\n1 process:   val/AP {r1['val/AP']:.2f} AP50 {r1['val/AP50']:.2f}, wall {t1:.1f} s, train "
        f"{r1['time/train_seconds']:.1f} s"
    )
    print(
        f"2 processes: val/AP {r2['val/AP']:.2f} AP50 {r2['val/AP50']:.2f}, wall {t2:.1f} s, train "
        f"{r2['time/train_seconds']:.1f} s"
    )
    lr1, lr2 = (by_step(rows(d / "metrics.csv"), "train/lr/weights") for d in (one, two))
    assert len(lr1) >= 24 and lr1 == pytest.approx(lr2, rel=1e-9)  # logged every 10 steps
    assert r1["val/AP"] > 3.0, "the comparison needs a trained model"
    assert abs(r1["val/AP"] - r2["val/AP"]) <= AP_TOLERANCE
    assert abs(r1["val/AP50"] - r2["val/AP50"]) <= 2 * AP_TOLERANCE
    _each_image_once(two, 100)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_two_process_run_sigterm_then_resume(tmp_path):
    """SIGTERM to a 2-process run's main process only (SLURM signals every task; here the processes
    must agree through ttfnet_lightning.training.distributed.StopOnSignal): both stop after the same step,
    interrupted.ckpt is written, the run exits non-zero and leaves no process behind; the same
    command resumes and finishes at the planned step, its metrics.csv continuous. (With Lightning's
    own handler this deadlocked in a gloo broadcast.)"""
    out = tmp_path / "run"
    run = [o for o in DDP_RUN if not o.startswith("data.datamodule.num_train")] + [
        "data.datamodule.num_train=48",
        "callbacks.checkpoint_every_n_steps=1",
    ]
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", *run, f"output_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=tmp_path)
    deadline = time.monotonic() + 600
    while not list((out / "checkpoints").glob("latest-step2.ckpt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0, text[-3000:]
    assert (out / "checkpoints" / "interrupted.ckpt").is_file(), text[-3000:]
    for pid in children:  # the other rank ended too
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    stopped = torch.load(out / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=False)[
        "global_step"
    ]
    assert 2 <= stopped < 12

    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 12  # 48 images / (4 x 2) x 2 epochs
    assert sorted(by_step(rows(out / "metrics.csv"), "train/loss")) == list(range(12))


@pytest.mark.slow
def test_ddp_jobs_inside_a_multirun(tmp_path):
    """``-m trainer=ddp_cpu seed=0,1`` (Hydra's basic launcher, one process for the sweep): each job
    starts its own second rank with the job's command (not the sweep's, which Lightning would run
    again) and ends its process group, so the next job starts afresh."""
    sweep = tmp_path / "sweep"
    run = [
        o
        for o in DDP_RUN
        if not o.startswith(("schedule.max_epochs", "data.datamodule.num_train", "schedule.milestones"))
    ] + [
        "schedule.max_epochs=1",
        "data.datamodule.num_train=8",
        "schedule.milestones=[]",
        "trainer.num_sanity_val_steps=0",
    ]
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", "-m", *run, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (proc.stdout + proc.stderr).count("total batch 8") == 4  # 2 jobs x 2 ranks
    for job in ("0", "1"):
        assert json.loads((sweep / job / "results.json").read_text())["global_step"] == 1
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # rank 1 ran as this job
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # and started no sweep of its own
