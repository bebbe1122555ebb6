"""The W&B report of a sweep (paper/wandb_report.py), built offline from sweep folders: a plain
two-job multirun made here and the repository's measured Table 2 sweep (results/table2-cpu)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose

pytest.importorskip("wandb_workspaces")

import wandb_workspaces.reports.v2 as wr  # noqa: E402

from ttfnet_lightning.paper.wandb_report import (  # noqa: E402
    ReportOnMultirunEnd,
    build_report,
    main,
    read_sweep,
    save_report_if_online,
)

TABLE2 = REPO / "results" / "table2-cpu"


def make_sweep(root: Path, betas=(0.1, 0.54), aps=((5.0, 12.0, 9.0), (20.0, 25.0, 30.0))) -> Path:
    """A finished ``-m kernel.beta=... schedule.lr=0.01 logger=wandb`` sweep folder as Hydra and
    train() leave it: multirun.yaml, and per job .hydra/config.yaml, overrides.yaml, metrics.csv,
    results.json (val/AP per validation: ``aps``)."""
    root.mkdir(parents=True)
    task = [f"kernel.beta={','.join(map(str, betas))}", "schedule.lr=0.01", "logger=wandb"]
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": None}}}), root / "multirun.yaml"
    )
    for num, (beta, values) in enumerate(zip(betas, aps)):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"kernel.beta={beta}", "schedule.lr=0.01", "logger=wandb"]
        OmegaConf.save(compose("train", overrides), job / ".hydra" / "config.yaml")  # unresolved, as Hydra saves it
        OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
        rows = "\n".join(f"{i},{10 * (i + 1)},{ap}" for i, ap in enumerate(values))
        (job / "metrics.csv").write_text("epoch,step,val/AP\n" + rows + "\n")
        metrics = {"val/AP": values[-1], "val/AP50": values[-1] + 10, "time/train_seconds": 600.0}
        (job / "results.json").write_text(json.dumps({"status": "finished", "metrics": metrics}))
    return root


def _grids(report) -> list:
    return [b for b in report.blocks if isinstance(b, wr.PanelGrid)]


def test_report_of_a_plain_multirun(tmp_path):
    sweep = read_sweep(make_sweep(tmp_path / "2026-12-05_10-00-00"))
    assert sweep.swept == ["kernel.beta"] and sweep.varied == ["kernel.beta"] and sweep.table is None
    report = build_report(sweep)
    assert report.project == "ttfnet-lightning" and report.title == "sweep: sweep-2026-12-05_10-00-00"
    curves, parallel = _grids(report)
    # AP against training hours, the runs of the sweep's group grouped by the varied key
    (runset,) = curves.runsets
    assert runset.filters == "Group == 'sweep-2026-12-05_10-00-00' and JobType != 'summary'"
    assert runset.groupby == ["config.kernel.beta.value"]  # a flat dotted W&B config key
    assert [(p.x, p.y) for p in curves.panels] == [("time/train_hours", ["val/AP"]), ("time/train_hours", ["val/AP50"])]
    # parallel coordinates: the varied key, then the best AP and the hours to it
    (pc,) = parallel.panels
    assert isinstance(pc, wr.ParallelCoordinatesPlot) and not parallel.runsets[0].groupby
    accessors = [c._to_model().accessor for c in pc.columns]
    assert accessors == ["config:kernel.beta.value", "summary:val/AP.max", "summary:best/train_hours"]
    # the jobs' table: varied value, best (max over metrics.csv) and final AP, training minutes
    (md,) = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    lines = md.text.splitlines()
    assert lines[0] == "| job | kernel.beta | status | best val/AP | val/AP | val/AP50 | train min |"
    assert lines[2:] == [
        "| 0 | 0.1 | finished | 12.0 | 9.0 | 19.0 | 10.0 |",
        "| 1 | 0.54 | finished | 30.0 | 30.0 | 40.0 | 10.0 |",
    ]
    report._to_model()  # the spec W&B would store, built without the network (no entity: no project lookup)


def test_report_of_a_paper_table():
    """results/table2-cpu: grouped by beta and class-aware (seeds averaged), the table.md, and the
    summary run's plot and cells."""
    report = build_report(read_sweep(TABLE2), entity="someone")
    assert report.title == "table2: table2-cpu" and report.entity == "someone"
    curves, parallel, summary = _grids(report)
    assert curves.runsets[0].groupby == ["config.kernel.beta.value", "config.kernel.class_aware.value"]
    axes = [c.metric.name for c in parallel.panels[0].columns]
    assert axes == ["kernel.beta", "kernel.class_aware", "seed", "val/AP.max", "best/train_hours"]
    (md,) = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert md.text == (TABLE2 / "table.md").read_text()
    assert summary.runsets[0].filters == "Group == 'table2-cpu' and JobType == 'summary'"
    media, cells = summary.panels
    assert media.media_keys == ["table2/plot"] and cells.table_name == "table2/cells"


def test_command_line_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = make_sweep(tmp_path / "sw")
    assert main([str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ParallelCoordinatesPlot" in out and "grouped by ['config.kernel.beta.value']" in out
    assert main([str(sweep)]) == 1 and "nothing saved" in capsys.readouterr().out  # offline: not saved
    assert main([str(tmp_path / "nowhere")]) == 2 and "multirun.yaml not found" in capsys.readouterr().err
    # offline: nothing saved at the end of a sweep or an aggregation, nothing raised
    cfg = OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml")
    assert save_report_if_online(sweep, cfg) is None
    monkeypatch.setattr("ttfnet_lightning.paper.wandb_report.subprocess.call", lambda *a, **k: pytest.fail("called"))
    ReportOnMultirunEnd().on_multirun_end(OmegaConf.merge(cfg, {"hydra": {"sweep": {"dir": str(sweep)}}}))


def test_saved_when_online(tmp_path, monkeypatch):
    """Online (faked: no network here): the report is built from the sweep and saved, the empty
    entity filled with the account's default; a multirun's end starts the saving command."""
    import wandb

    import ttfnet_lightning.paper.wandb_report as mod

    sweep = make_sweep(tmp_path / "sw")
    saved = []
    monkeypatch.setattr(mod, "wandb_offline", lambda setting: False)
    monkeypatch.setattr(wandb, "Api", lambda: type("Api", (), {"default_entity": "me"})())
    monkeypatch.setattr(wr.Report, "save", lambda self, **kw: saved.append(self) or self)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.example/{self.entity}/report"))
    cfg = OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml")
    assert save_report_if_online(sweep, cfg) == "https://wandb.example/me/report"
    (report,) = saved
    assert report.entity == "me" and {rs.entity for g in _grids(report) for rs in g.runsets} == {"me"}

    calls = []
    monkeypatch.setattr(mod.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    end = ReportOnMultirunEnd()
    end.on_multirun_end(OmegaConf.merge(cfg, {"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert calls and calls[0][-2:] == ["ttfnet_lightning.paper.wandb_report", str(sweep)]
    end.on_multirun_end(OmegaConf.merge(cfg, {"table": {"name": "table2"}, "hydra": {"sweep": {"dir": "x"}}}))
    assert len(calls) == 1  # paper tables: the aggregator saves theirs
