"""A run's results.png (training/run_figures.py, ``viz run``) and the files a finished run and
``evaluate`` write: results.png, the error analysis, and both in the offline W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, compose, offline_run_bytes
from ttfnet_lightning.training.run_figures import read_metrics, results_figure, write_results_figure

pytest.importorskip("matplotlib", reason="the viz extra is not installed")

# what Lightning's CSV logger writes: one row per logging call, empty cells for the other keys
HEADER = (
    "epoch,step,time/step,time/train_hours,train/loss,train/loss_box,train/loss_heatmap,train/lr/weights,"
    "val/AP,val/AP50,val/APl"
)
ROWS = [
    ",0,,,,,,0.002,,,",
    "0,0,,,9.5,4.5,5.0,,,,",
    "0,9,,,6.0,3.0,3.0,,,,",
    ",10,,,,,,0.01,,,",
    "0,10,10.0,0.01,,,,,1.5,4.0,-1.0",
    "1,19,,,4.0,2.5,1.5,,,,",
    "1,20,20.0,0.02,,,,,3.0,9.0,-1.0",
]


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "metrics.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    return run


def test_read_metrics_pairs_each_validation_with_its_training_hours(tmp_path):
    series = read_metrics(_run(tmp_path) / "metrics.csv")
    assert series["val/AP"] == [(10, 1.5, 0.01), (20, 3.0, 0.02)]
    assert series["train/loss"] == [(0, 9.5, None), (9, 6.0, None), (19, 4.0, None)]
    assert series["train/lr/weights"] == [(0, 0.002, None), (10, 0.01, None)]
    assert "epoch" not in series and "step" not in series


def test_results_figure_panels(tmp_path):
    fig = results_figure(_run(tmp_path))
    loss, lr, by_step, by_time = fig.axes[:4]
    assert {ln.get_label() for ln in loss.get_lines()} == {"train/loss", "train/loss_box", "train/loss_heatmap"}
    assert loss.get_yscale() == "log"
    assert [ln.get_label() for ln in lr.get_lines()] == ["train/lr/weights"]
    ap = {ln.get_label(): ln for ln in by_step.get_lines()}
    assert set(ap) == {"val/AP", "val/AP50"}  # APl (-1 only) is not plotted
    assert list(ap["val/AP50"].get_xdata()) == [10, 20] and list(ap["val/AP50"].get_ydata()) == [4.0, 9.0]
    timed = {ln.get_label(): ln for ln in by_time.get_lines()}
    assert list(timed["val/AP"].get_xdata()) == pytest.approx([0.6, 1.2])  # under an hour: minutes
    assert "minutes" in by_time.get_xlabel()
    assert "AP 3.00, AP50 9.00" in fig._suptitle.get_text() and "my-run" in fig._suptitle.get_text()
    png = write_results_figure(tmp_path / "my-run", dpi=40)
    assert png == tmp_path / "my-run" / "results.png" and png.stat().st_size > 1000


def test_results_figure_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.csv at"):
        results_figure(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,val/AP\n0,1.0\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        results_figure(tmp_path)


def test_viz_run_command(tmp_path, capsys):
    from ttfnet_lightning.viz import main

    run = _run(tmp_path)
    assert main(["run", str(run), "--dpi", "40"]) == 0
    assert (run / "results.png").is_file() and "written:" in capsys.readouterr().out
    assert main(["run", str(run), "--out", str(tmp_path / "elsewhere.png"), "--dpi", "40"]) == 0
    assert (tmp_path / "elsewhere.png").is_file()


def test_finished_run_and_evaluate_write_results_png_and_the_analysis(tmp_path, monkeypatch):
    """One tiny run with ``analysis=true`` and W&B offline, then ``evaluate`` of its checkpoint."""
    from ttfnet_lightning.training.error_analysis import best_score_threshold
    from ttfnet_lightning.training.evaluate import evaluate
    from ttfnet_lightning.training.run import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    base = [o for o in TINY_TRAIN if not o.startswith(("logger=", "analysis="))]
    out = tmp_path / "run"
    train(compose("train", [*base, "analysis=true", "logger=wandb", f"output_dir={out}"]))
    assert (out / "results.png").is_file()
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["num_images"] == 8 and "ShapesDataset" in summary["ground_truth"]
    assert all((out / "analysis" / f).is_file() for f in summary["files"])
    assert best_score_threshold(out) == summary["best_score_threshold"]
    (wandb_run,) = (out / "wandb").glob("offline-run-*")
    keys = (b"analysis/results", b"analysis/per_class", b"analysis/confusion_matrix", b"analysis/pr_curves")
    data = offline_run_bytes(wandb_run, keys)
    assert all(k in data for k in keys), [k for k in keys if k not in data]

    ev = tmp_path / "ev"
    evaluate(
        compose(
            "evaluate",
            [f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "trainer=cpu", "speed_iters=2", f"output_dir={ev}"],
        )
    )
    ev_summary = json.loads((ev / "analysis" / "summary.json").read_text())
    assert ev_summary["num_images"] == 8 and ev_summary["detections"] == str(ev / "detections_val.json")
    assert (ev / "analysis" / "per_class_ap.csv").is_file()
