"""Paper-table presets (experiment=table1..6): grids, the CPU protocol, resumable sweeps, the aggregator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from conftest import compose, offline_run_bytes, subprocess_env
from ttfnet_lightning.paper.sweeps import expand_grid
from ttfnet_lightning.paper.tables import build_table
from ttfnet_lightning.paper.values import paper_values
from ttfnet_lightning.training.records import job_dirname
from ttfnet_lightning.training.runs import check_same_config

PAPER = paper_values()


def grid_jobs(table: str, protocol: str = "paper", extra: list[str] | None = None):
    """(grid overrides, composed job config) of every job the preset launches."""
    task = [f"experiment={table}", f"protocol={protocol}", *(extra or [])]
    cfg = compose("train", task)
    params = OmegaConf.to_container(compose_hydra(task).hydra.sweeper.params, resolve=True)
    assert cfg.table.name == table
    return expand_grid(params, task)


def compose_hydra(task):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hcompose("train", overrides=task, return_hydra_config=True)


def values(jobs, fn):
    return [fn(cfg) for _, cfg in jobs]


# ------------------------------------------------------------------------------- the paper grids
def test_presets_are_multiruns_with_resumable_dirs():
    for t in range(1, 7):
        h = compose_hydra([f"experiment=table{t}"]).hydra
        assert str(h.mode) == "RunMode.MULTIRUN"
        assert h.sweep.dir == f"multirun/table{t}-paper"
        assert "ttfnet_lightning.paper.tables.AggregateOnMultirunEnd" in str(h.callbacks)
    assert compose_hydra(["experiment=table2", "protocol=cpu"]).hydra.sweep.dir == "results/table2-cpu"


def test_table1_paper_grid():
    jobs = grid_jobs("table1")
    cells = values(
        jobs,
        lambda c: (
            c.kernel.area_weight,
            c.kernel.gaussian_weight if c.kernel.gaussian_weight is not None else c.kernel.wh_gaussian,
        ),
    )
    assert cells == [("none", False), ("norm", False), ("sqrt", False), ("log", False), ("sqrt", True), ("log", True)]
    for _, c in jobs:  # TTFNet-53 super-fast on COCO, Gaussian area, beta 0.54
        assert (c.backbone.name, c.data.name, c.schedule.name, c.kernel.beta, c.kernel.wh_gaussian) == (
            "d53",
            "coco",
            "fast",
            0.54,
            True,
        )
        assert c.backbone.frozen_stages == 1 and c.trainer.accelerator == "gpu"
        assert c.backbone.pretrained and c.backbone.weights is None  # DarkNet-53: the user names a local file
    assert len(PAPER["table1"]["AP"]) == len(jobs)


def test_table2_paper_grid():
    jobs = grid_jobs("table2")
    got = sorted(values(jobs, lambda c: (float(c.kernel.beta), bool(c.kernel.class_aware))))
    want = sorted((b, a) for b in PAPER["table2"]["beta"] for a in (False, True))
    assert got == want and len(jobs) == 14
    assert all(c.kernel.wh_gaussian is False and c.kernel.area_weight == "log" for _, c in jobs)  # rectangle, Norm+Log


def test_table3_paper_grid():
    jobs = grid_jobs("table3")
    got = values(jobs, lambda c: [float(c.kernel.beta), bool(c.kernel.wh_gaussian), bool(c.kernel.aspect_ratio)])
    assert got == [row[:3] for row in PAPER["table3"]["rows"]]


def test_table4_paper_grid():
    jobs = grid_jobs("table4")
    assert values(jobs, lambda c: list(c.model.shortcut_convs)) == PAPER["table4"]["shortcuts"]
    assert all(c.measure_fps for _, c in jobs)


def test_table5_paper_grid():
    jobs = grid_jobs("table5")
    got = sorted(values(jobs, lambda c: (float(c.kernel.beta), float(c.schedule.lr), str(c.schedule.name))))
    want = sorted((b, lr, s) for b in PAPER["table5"]["beta"] for lr in PAPER["table5"]["lr"] for s in ("fast", "2x"))
    assert got == want and len(jobs) == 36
    assert all(c.kernel.wh_gaussian and c.kernel.alpha == 0.54 and c.schedule.reference_batch == 96 for _, c in jobs)


def test_table6_paper_grid():
    jobs = grid_jobs("table6")
    got = sorted(values(jobs, lambda c: (str(c.schedule.name), bool(c.backbone.pretrained), str(c.backbone.name))))
    want = sorted((s, p, b) for s, p in (("2x", True), ("10x", False), ("10x", True)) for b in ("r18", "r34", "d53"))
    assert got == want
    for _, c in jobs:
        assert c.schedule.augment == (c.schedule.name == "10x")
        assert c.backbone.frozen_stages == (1 if c.backbone.pretrained else -1)
        assert c.backbone.box_convs == (1 if c.backbone.name == "r18" else 2)  # the paper's heads


# -------------------------------------------------------------------------------- CPU protocol
@pytest.mark.parametrize(
    "table,count", [("table1", 18), ("table2", 16), ("table3", 15), ("table4", 12), ("table5", 24), ("table6", 9)]
)
def test_cpu_protocol_grids(table, count):
    jobs = grid_jobs(table, "cpu")
    assert len(jobs) == count
    for _, c in jobs:
        assert c.data.name == "shapes" and c.trainer.accelerator == "cpu" and c.table.protocol == "cpu"
        assert c.data.datamodule.input_size == [128, 128]
        assert c.backbone.box_convs == 1  # R18's regression head for every backbone (protocol/cpu.yaml)
        if c.backbone.pretrained or table != "table6":
            assert c.backbone.weights == f"results/cpu-pretrained/{c.backbone.name}.pth"
        else:
            assert c.backbone.weights is None and c.backbone.frozen_stages == -1
    if table == "table5":  # reduced grid that keeps the question: LR multiples of the default LR
        mults = sorted({round(c.schedule.lr / c.backbone.lr, 2) for _, c in jobs})
        assert mults == [0.4, 0.8, 1.2, 2.4]


def test_job_dirname_uses_only_the_grid():
    grid = {"ablation": "table1/none,table1/norm", "seed": "0,1"}
    task = ["ablation=table1/norm", "seed=1", "experiment=table1", "protocol=cpu", "data.datamodule.num_workers=0"]
    assert job_dirname(task, grid) == "ablation=table1-norm,seed=1"


# -------------------------------------------------------------------------- aggregator (unit)
def fake_sweep(tmp_path: Path, table: str, ap_of, extra: list[str] | None = None, skip=()) -> Path:
    """A sweep dir as a finished sweep leaves it, with made-up metrics ``ap_of(cfg)``."""
    task = [f"experiment={table}", "protocol=cpu", *(extra or [])]
    hcfg = compose_hydra(task)
    sweep = tmp_path / f"{table}-cpu"
    sweep.mkdir()
    OmegaConf.save(hcfg, sweep / "multirun.yaml")
    params = OmegaConf.to_container(hcfg.hydra.sweeper.params, resolve=True)
    for i, (_, cfg) in enumerate(expand_grid(params, task)):
        d = sweep / job_dirname(list(cfg.hydra.overrides.task), params)
        d.mkdir()
        (d / "config_resolved.yaml").write_text("{}")
        if i in skip:
            continue
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        (d / "results.json").write_text(
            json.dumps({"status": "finished", "metrics": {"val/AP": ap_of(job), "time/train_seconds": 60.0}})
        )
    return sweep


def test_aggregator_table5_layout_mean_std_and_paper(tmp_path):
    sweep = fake_sweep(tmp_path, "table5", lambda c: 10 * c.kernel.beta + 100 * c.schedule.lr + c.seed, skip=(0,))
    table, jobs = build_table(sweep, ratio=False)
    assert len(jobs) == 24 and sum(j.status == "finished" for j in jobs) == 23
    assert table.rows == ["0.01", "0.1", "0.54"] and len(table.columns) == 4
    col = table.columns[1]  # LR 0.0128 = 0.8x -> the paper's 1.2e-2 1x column
    assert col.startswith("LR 0.0128 (0.8x) 1x")
    cell = table.cells[("0.54", col)]
    assert cell.values == pytest.approx([5.4 + 1.28, 5.4 + 1.28 + 1])
    assert cell.mean == pytest.approx(5.4 + 1.28 + 0.5) and cell.std == pytest.approx(2**-0.5)
    assert cell.paper == 32.5  # beta 0.54, 1.2e-2, 1x
    assert table.cells[("0.01", table.columns[2])].paper == 2.9  # 1.8e-2 (1.2x), 1x
    assert table.cells[("0.01", table.columns[3])].paper is None  # 2.4x: no paper column
    # the job that did not finish is marked (1 of 2 seeds)
    first = jobs[0]
    key = (
        "0.01" if first.cfg.kernel.beta == 0.01 else str(first.cfg.kernel.beta),
        [c for c in table.columns if f"LR {first.cfg.schedule.lr:g} " in c][0],
    )
    assert "(1/2)" in table.cells[key].text()
    md = table.markdown()
    assert "[32.5]" in md and "23 finished, 1 running" in md


def test_aggregator_table1_and_written_files(tmp_path):
    from ttfnet_lightning.paper.tables import aggregate

    weight = {"none": 1.0, "norm": 2.0, "sqrt": 3.0, "log": 4.0}
    sweep = fake_sweep(tmp_path, "table1", lambda c: weight[c.kernel.area_weight] + 10 * bool(c.kernel.gaussian_weight))
    table = aggregate(sweep, quiet=True)
    assert table.rows == ["+Norm", "+Sqrt", "+Log", "+Gaussian", "AP"]
    assert [table.cells[("AP", c)].mean for c in table.columns] == [1.0, 2.0, 3.0, 4.0, 13.0, 14.0]
    assert [table.cells[("AP", c)].paper for c in table.columns] == PAPER["table1"]["AP"]
    assert table.cells[("+Gaussian", "Norm+Log+Gaussian")].text() == "X"
    md = (sweep / "table.md").read_text()
    assert "| AP | 1.0 ± 0.0 [27.2] |" in md
    rows = (sweep / "table.csv").read_text().splitlines()
    assert rows[0].startswith("table,row,column,mean,std,n") and rows[0].endswith(",collapsed") and len(rows) > 6
    assert (sweep / "jobs.csv").read_text().count("finished") == 18
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    png = np.asarray(Image.open(sweep / "table.png").convert("RGB"), dtype=np.float32)  # the plot beside table.md
    assert png.shape[0] > 200 and png.shape[1] > png.shape[0] and png.std() > 20  # drawn on, not a blank page
    assert ((png.max(-1) - png.min(-1)) > 60).mean() > 0.01  # the coloured bars (ours and the paper's)


def test_aggregator_logs_its_plot_to_the_sweeps_wandb_group(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from ttfnet_lightning.paper.tables import aggregate
    from ttfnet_lightning.tables import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = fake_sweep(tmp_path, "table4", lambda c: 5.0 + c.seed)
    aggregate(sweep, ratio=False, quiet=True)  # by default: files only
    assert (sweep / "table.png").is_file() and not (sweep / "wandb").exists()
    assert (
        main([str(sweep), "--wandb"]) == 0
    )  # the jobs log to W&B (the default logger): one summary run in their group
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    keys = (b"table4/plot", b"table4/cells", b"table4-cpu", b"summary")
    data = offline_run_bytes(runs[0], keys)  # (wandb-core appends the records asynchronously)
    for key in keys:
        assert key in data, f"{key!r} not in the offline W&B run"
    (tmp_path / "csv").mkdir()
    csv_only = fake_sweep(tmp_path / "csv", "table4", lambda c: 5.0, extra=["logger=csv"])
    assert (
        main([str(csv_only), "--wandb"]) == 0 and not (csv_only / "wandb").exists()
    )  # jobs without W&B: nothing logged


def test_aggregator_marks_missing_and_failed_jobs(tmp_path):
    sweep = fake_sweep(tmp_path, "table4", lambda c: 5.0, skip=(0, 1))
    (sweep / "model.shortcut_convs=[0,0,0],seed=1" / "results.json").write_text(
        json.dumps({"status": "failed", "error": "boom"})
    )
    import shutil

    shutil.rmtree(sweep / "model.shortcut_convs=[1,1,1],seed=0")
    table, _ = build_table(sweep, ratio=False)
    assert table.cells[("AP", "(0,0,0)")].text() == "running [29.0]"  # seed 0 started, no result; seed 1 failed
    assert table.cells[("AP", "(1,1,1)")].text().startswith("5.0 (1/2)")  # seed 0's dir is gone: missing
    assert table.cells[("FPS", "(3,2,1)")].text() == "missing [54.4]"  # no fps measured in the fake results


def test_aggregator_rejects_a_plain_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="multirun.yaml"):
        build_table(tmp_path)


def test_changed_config_is_not_resumed(tmp_path):
    cfg = OmegaConf.to_container(compose("train", ["kernel.beta=0.3"]), resolve=True)
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg))
    check_same_config(tmp_path, cfg)  # same: fine
    cfg["data"]["datamodule"]["num_workers"] = 0  # does not change the result: fine
    check_same_config(tmp_path, cfg)
    cfg["kernel"]["beta"] = 0.54
    with pytest.raises(ValueError, match=r"kernel.beta: stored 0.3, now 0.54"):
        check_same_config(tmp_path, cfg)


def test_moving_the_streamed_data_does_not_block_a_resume(tmp_path):
    """data=coco_stream: the chunks copied elsewhere (another input_dir, cache_dir) are the same data;
    other data settings still are a different run."""
    cfg = OmegaConf.to_container(
        compose("train", ["data=coco_stream", "data.datamodule.input_dir=/data/a"]), resolve=True
    )
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg))
    cfg["data"]["datamodule"]["input_dir"] = "s3://bucket/a"
    cfg["data"]["datamodule"]["cache_dir"] = "/scratch/cache"
    check_same_config(tmp_path, cfg)
    cfg["data"]["datamodule"]["input_size"] = [320, 320]
    with pytest.raises(ValueError, match=r"data.datamodule.input_size"):
        check_same_config(tmp_path, cfg)


def test_a_setting_added_later_at_its_default_does_not_block_a_resume(tmp_path):
    """Runs stored before a schema field existed (e.g. kernel.radius_formula) stay resumable and
    skippable while the new field is at its default; a non-default value is a different run."""
    cfg = OmegaConf.to_container(compose("train"), resolve=True)
    old = {k: v for k, v in cfg.items()}
    old["kernel"] = {k: v for k, v in cfg["kernel"].items() if k not in ("radius_formula", "min_overlap")}
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(old))
    check_same_config(tmp_path, cfg)
    cfg["kernel"]["radius_formula"] = "exact"
    with pytest.raises(ValueError, match=r"kernel.radius_formula: stored '<absent>', now 'exact'"):
        check_same_config(tmp_path, cfg)


def test_runs_stored_before_the_released_augmentation_keep_their_meaning(tmp_path):
    """A run stored without data.datamodule.augment_style trained with torchvision's transforms:
    with augmentation on it matches augment_style=torchvision only; with augmentation off the style
    is irrelevant either way."""
    cfg = OmegaConf.to_container(compose("train", ["schedule=10x"]), resolve=True)
    old = {**cfg, "data": {**cfg["data"], "datamodule": dict(cfg["data"]["datamodule"])}}
    del old["data"]["datamodule"]["augment_style"]
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(old))
    assert cfg["data"]["datamodule"]["augment"] is True
    with pytest.raises(ValueError, match=r"augment_style: stored 'torchvision', now 'released'"):
        check_same_config(tmp_path, cfg)
    cfg["data"]["datamodule"]["augment_style"] = "torchvision"
    check_same_config(tmp_path, cfg)

    plain = OmegaConf.to_container(compose("train"), resolve=True)  # fast schedule: no augmentation
    assert plain["data"]["datamodule"]["augment"] is False
    old_plain = {**plain, "data": {**plain["data"], "datamodule": dict(plain["data"]["datamodule"])}}
    del old_plain["data"]["datamodule"]["augment_style"]
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(old_plain))
    check_same_config(tmp_path, plain)
    plain["data"]["datamodule"]["augment_style"] = "torchvision"
    check_same_config(tmp_path, plain)


# ------------------------------------------------------------------ a real mini sweep (-m, CLI)
def random_r18_weights(path: Path) -> Path:
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)
    return path


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "ttfnet_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cpu_mini_sweep_end_to_end_and_resume(tmp_path):
    weights = random_r18_weights(tmp_path / "r18.pth")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "experiment=table2",
        "protocol=cpu",
        f"hydra.sweep.dir={sweep}",
        f"pretrained_weights.r18={weights}",
        'table.grid.cpu={kernel.beta: "0.1", kernel.class_aware: "false,true", seed: "0"}',
        "data.datamodule.input_size=[64,64]",
        "data.datamodule.num_train=8",
        "data.datamodule.num_val=4",
        "data.datamodule.batch_size=4",
        "data.datamodule.num_workers=0",
        "schedule.max_epochs=1",
        "schedule.warmup_steps=1",
        "schedule.milestones=[1]",
        "logger=csv",
        "callbacks.log_val_images=0",
        # the one epoch ends between validations: train() validates and saves last.ckpt
        "trainer.check_val_every_n_epoch=2",
    ]
    proc = run_cli(args, tmp_path)
    jobs = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert jobs == [
        "kernel.beta=0.1,kernel.class_aware=False,seed=0",
        "kernel.beta=0.1,kernel.class_aware=True,seed=0",
    ], proc.stdout[-2000:]
    md = (sweep / "table.md").read_text()  # written by the Hydra callback at the end of the sweep
    assert "Table 2" in md and "2 jobs, 2 finished" in md
    row = next(line for line in md.splitlines() if line.startswith("| Agnostic AP"))
    assert "[31.0]" in row and "missing" not in row
    ratio_row = next(line for line in md.splitlines() if line.startswith("| Aware Ratio %"))
    assert "[0.09]" in ratio_row
    for d in sweep.glob("kernel*"):
        res = json.loads((d / "results.json").read_text())
        assert res["status"] == "finished" and "val/AP" in res["metrics"] and res["global_step"] == 2

    # rerun: finished jobs are skipped; an interrupted job (checkpoint, no results.json) resumes
    interrupted = sweep / "kernel.beta=0.1,kernel.class_aware=True,seed=0"
    (interrupted / "results.json").unlink()
    before = (sweep / "kernel.beta=0.1,kernel.class_aware=False,seed=0" / "results.json").stat().st_mtime_ns
    proc = run_cli(args, tmp_path)
    assert (
        "skipping" in proc.stdout and "kernel.class_aware=False" in proc.stdout.split("skipping", 1)[1].splitlines()[0]
    )
    assert f"resuming {interrupted}" in proc.stdout
    assert (sweep / "kernel.beta=0.1,kernel.class_aware=False,seed=0" / "results.json").stat().st_mtime_ns == before
    assert json.loads((interrupted / "results.json").read_text())["status"] == "finished"


def test_a_failed_job_is_marked_and_said_at_once(tmp_path):
    """A job that fails (here: its backbone weights file is missing) gets status "failed" with the
    error in its results.json (the table shows it, a rerun retries it), and the log says so when it
    happens, not only when the sweep ends."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "experiment=table2",
        "protocol=cpu",
        f"hydra.sweep.dir={sweep}",
        f"pretrained_weights.r18={tmp_path / 'absent.pth'}",
        'table.grid.cpu={kernel.beta: "0.1", kernel.class_aware: "false", seed: "0"}',
        "logger=csv",
    ]
    cmd = [sys.executable, "-m", "ttfnet_lightning.train", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    res = json.loads((sweep / "kernel.beta=0.1,kernel.class_aware=False,seed=0" / "results.json").read_text())
    assert res["status"] == "failed" and "absent.pth" in res["error"], res
    assert "job failed, marked in" in proc.stdout + proc.stderr and "absent.pth" in proc.stdout + proc.stderr


@pytest.mark.slow  # every table aggregated, ~20 s: make test stays under 15 min (make test-slow runs it)
def test_verdicts_follow_the_numbers(tmp_path):
    from ttfnet_lightning.paper.verdicts import verdicts

    # Table 1: Log + Gaussian clearly best (seed noise 0.5): reproduced
    sweep = fake_sweep(
        tmp_path,
        "table1",
        lambda c: (20.0 if c.kernel.area_weight == "log" and c.kernel.gaussian_weight else 10.0) + 0.5 * c.seed,
    )
    table, _ = build_table(sweep, ratio=False)
    v = verdicts(table)
    assert v[0].verdict == "reproduced" and v[1].verdict == "within noise"  # Norm == none here
    assert "paired by seed (n = 3)" in v[0].evidence
    # Table 5: beta 0.54 loses nothing at the largest LR, beta 0.01 loses 10 AP: reproduced;
    # the reverse is "not reproduced"
    for sign, expected in ((1, "reproduced"), (-1, "not reproduced")):
        d = tmp_path / f"t5_{sign}"
        d.mkdir()
        lr_top = 0.0384

        def ap(c, sign=sign):
            small = c.kernel.beta == 0.01 if sign > 0 else c.kernel.beta == 0.54
            return 30.0 - (10.0 if small and c.schedule.lr == lr_top else 0.0) + 0.3 * c.seed  # noqa: B023  (called within the loop)

        table, _ = build_table(fake_sweep(d, "table5", ap), ratio=False)
        at_top = [v for v in verdicts(table) if f"to LR {lr_top:g}:" in v.claim]
        assert len(at_top) == 1 and at_top[0].verdict == expected, verdicts(table)
        # judged at every LR above both rows' best: the LRs between show no difference
        assert [v.verdict for v in verdicts(table) if v.claim != at_top[0].claim] == ["within noise"] * 2, verdicts(
            table
        )


def test_table6_verdicts_with_one_seed_use_the_cpu_seed_spread(tmp_path):
    """Table 6's CPU cells have one seed each: the noise is the CPU tables' measured seed spread,
    so a 20 AP gap is reproduced and a 2 AP gap is within noise (not 'reproduced' for want of a
    spread); a backbone without results leaves the claim 'not measured'."""
    from ttfnet_lightning.paper.verdicts import CPU_SEED_SPREAD

    def ap(c, gap):
        row = {"2x": 0.0, "10x": gap}[str(c.schedule.name)] + (
            gap if c.backbone.pretrained and str(c.schedule.name) == "10x" else 0.0
        )
        return 20.0 + row

    for gap, expected in ((20.0, "reproduced"), (2.0, "within noise"), (-20.0, "not reproduced")):
        d = tmp_path / f"gap{gap}"
        d.mkdir()
        table, _ = build_table(fake_sweep(d, "table6", lambda c, gap=gap: ap(c, gap)), ratio=False)
        assert table.seed_spread == CPU_SEED_SPREAD
        assert [v.verdict for v in table.verdicts] == [expected, expected], table.verdicts
        assert "one seed per cell" in table.verdicts[0].evidence
    d = tmp_path / "partial"
    d.mkdir()
    table, _ = build_table(fake_sweep(d, "table6", lambda c: ap(c, 20.0), skip=(2, 5, 8)), ratio=False)  # D53 missing
    assert all(v.verdict == "not measured" for v in table.verdicts), table.verdicts
    assert "R18: reproduced" in table.verdicts[0].evidence and "D53: not measured" in table.verdicts[0].evidence, (
        table.verdicts[0]
    )


def test_verdicts_pair_cells_by_seed(tmp_path):
    """A seed that moves every setting alike (here by 10 AP per seed) hides a consistent +1 AP
    between two settings from an unpaired comparison; paired by seed, the +1 is resolved."""
    from ttfnet_lightning.paper.layouts import Cell, Table
    from ttfnet_lightning.paper.verdicts import compare

    def ap(c):
        return 10.0 * c.seed + (1.0 if c.kernel.area_weight == "log" and c.kernel.gaussian_weight else 0.0)

    table, _ = build_table(fake_sweep(tmp_path, "table1", ap), ratio=False)
    assert table.verdicts[0].verdict == "reproduced", table.verdicts[0]
    a, b = table.cells[("AP", "Norm+Log+Gaussian")], table.cells[("AP", "Norm+Log")]
    assert sorted(a.seeds) == [0, 1, 2]
    # the same values without seeds: unpaired, the seed spread (10 AP) swamps the +1
    bare = Table("t", "t", ["AP"], ["x", "y"], {("AP", "x"): Cell(values=a.values), ("AP", "y"): Cell(values=b.values)})
    v = compare(bare, ("AP", "x"), ("AP", "y"), "x > y")
    assert v.verdict == "within noise" and "paired" not in v.evidence


def test_table2_peak_at_an_end_is_not_a_rise_and_fall(tmp_path):
    """AP rising all the way to the largest measured beta: the claim is not measured while beta 0.9
    is missing (the peak must not be compared with itself), not reproduced once every beta ran."""
    ap = lambda c: 10.0 * c.kernel.beta + c.seed  # noqa: E731  (monotone in beta)
    partial = fake_sweep(tmp_path, "table2", ap, skip=tuple(range(12, 16)))  # the four beta 0.9 jobs
    table, _ = build_table(partial, ratio=False)
    assert [v.verdict for v in table.verdicts] == ["not measured", "not measured"]
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    table, _ = build_table(fake_sweep(full_dir, "table2", ap), ratio=False)
    assert [v.verdict for v in table.verdicts] == ["not reproduced", "not reproduced"]


def write_box_losses(job_dir: Path, losses: list[float]) -> None:
    rows = ["epoch,step,train/loss_box,val/AP"] + [f"0,{10 * i + 9},{v}," for i, v in enumerate(losses)]
    (job_dir / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_box_collapse_flags_runs_whose_box_loss_never_fell(tmp_path):
    """The beta 0.9 jobs of the CPU Table 2 ended at 0 AP with a dead wh ReLU: train/loss_box flat at
    5.03 from start to end. Such a cell gets a dagger, the table a note naming the jobs, and a
    verdict built on it says so; runs whose box loss fell are not flagged."""
    from ttfnet_lightning.paper.sweeps import box_collapse

    flat, learned = (
        [5.03, 5.02, 5.04, 5.03, 5.03, 5.02, 5.03, 5.03, 5.02, 5.03],
        [4.9, 4.0, 3.1, 2.5, 2.0, 1.8, 1.6, 1.4, 1.3, 1.3],
    )
    write_box_losses(tmp_path, flat)
    assert box_collapse(tmp_path / "metrics.csv") == pytest.approx((5.03, 5.026))
    write_box_losses(tmp_path, learned)
    assert box_collapse(tmp_path / "metrics.csv") is None
    write_box_losses(tmp_path, flat[:5])
    assert box_collapse(tmp_path / "metrics.csv") is None  # too short to judge
    assert box_collapse(tmp_path / "absent.csv") is None

    sweep = fake_sweep(
        tmp_path, "table2", lambda c: 0.0 if c.kernel.beta == 0.9 else 10.0 + 20 * c.kernel.beta + c.seed
    )
    for d in sorted(p for p in sweep.iterdir() if p.is_dir()):
        write_box_losses(d, flat if "beta=0.9" in d.name else learned)
    table, _ = build_table(sweep, ratio=False)
    assert table.cells[("Agnostic AP", "0.9")].text().startswith("0.0 ± 0.0 †")
    assert "†" not in table.cells[("Agnostic AP", "0.3")].text()
    note = next(n for n in table.notes if n.startswith("†"))
    assert note.count("beta=0.9") == 4 and "beta=0.3" not in note
    assert all("box regression never learned" in v.evidence for v in table.verdicts)


def test_fps_remeasured_for_all_models_in_one_process(tmp_path):
    import pytorch_lightning as pl

    from ttfnet_lightning.paper.speed import remeasure_fps
    from ttfnet_lightning.training.lit_module import TTFNetModule

    sweep = fake_sweep(tmp_path, "table4", lambda c: 20.0)
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    for d in jobs:
        results = json.loads((d / "results.json").read_text())
        (d / "results.json").write_text(json.dumps(results | {"fps": 1.0}))
    for d in jobs[:2]:  # two jobs with a (tiny) checkpoint; the others are left alone
        module = TTFNetModule(net={"deformable": False}, data_info={"num_classes": 2, "input_size": [32, 32]})
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
        trainer.strategy.connect(module)
        (d / "checkpoints").mkdir()
        trainer.save_checkpoint(d / "checkpoints" / "last.ckpt")
    medians = remeasure_fps(sweep, rounds=2, iters=1, warmup=1)
    assert set(medians) == {d.name for d in jobs[:2]}
    for d in jobs[:2]:
        r = json.loads((d / "results.json").read_text())
        assert (
            r["fps"] == medians[d.name] > 1.0
            and r["fps_at_end_of_training"] == 1.0
            and "interleaved" in r["fps_method"]
        )
    assert json.loads((jobs[2] / "results.json").read_text())["fps"] == 1.0
    table, _ = build_table(sweep, ratio=False)
    assert table.cells[("FPS", "(0,0,0)")].values  # the aggregator reads the new values
