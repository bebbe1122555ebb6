"""The benchmark report's goal table and the GPU benchmark's behaviour without CUDA (the figures
themselves are measured by `make bench`, not asserted: timing does not belong in tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402


def test_goal_rows_compare_each_figure_with_its_bound():
    results = {
        "latency": {
            "goals": {
                "SSD300 / TTFNet-R18 fp32 (goal >= 2.5)": 1.7,
                "decoder share of TTFNet-R18 fp32 (goal <= 0.05)": 0.04,
            }
        },
        "train_step": {"settings": {"512": {"target_encoding": {"share": 0.02}, "data_wait": {"share": 0.2}}}},
        "encoder": {"goals": {"encoder / memory floor, 50 boxes (goal <= 1.5)": 1.7}},
    }
    rows = {g: (m, ok) for g, m, ok in report.goals(results)}
    assert rows["SSD300 / TTFNet-R18 fp32"] == ("1.700 (goal >= 2.5)", "no")
    assert rows["decoder share of TTFNet-R18 fp32"] == ("0.040 (goal <= 0.05)", "yes")
    assert (
        rows["target encoding share of a step (512)"][1] == "yes" and rows["data wait share of a step (512)"][1] == "no"
    )
    assert rows["encoder / memory floor, 50 boxes"] == ("1.700 (goal <= 1.5)", "no")  # any benchmark's goals
    assert report.goals({}) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_benchmark_says_so_without_cuda():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout


@pytest.mark.slow  # 82 s on 2 cores beside other work (2026-12-06): every part of the GPU benchmark, on the CPU
def test_gpu_benchmark_runs_every_part_on_the_cpu(tmp_path):
    """The script has never run on a GPU (none lent); `--device cpu` runs every part but the CUDA-only calls
    (synchronize, peak memory, fp16 inference), so a part broken for any device shows here."""
    report_md, report_json = tmp_path / "gpu.md", tmp_path / "gpu.json"
    args = ["--device", "cpu", "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "1", "--jpegs", "2"]
    args += ["--variants", "fp32,bf16-cl", "--report", str(report_md), "--json", str(report_json)]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(report_json.read_text())
    assert set(figures["training"]) == {"fp32", "bf16-cl"}
    assert all(v["images_per_s"] > 0 for v in figures["training"].values())
    assert figures["data"]["device_decode_images_per_s"] > 0 and figures["encoder_decoder"]["decoder_ms"] > 0
    assert set(figures["inference"]) == {"fp32", "bf16"} and "| fp32 |" in report_md.read_text()


def test_summary_block_is_rewritten_between_its_markers(tmp_path):
    """`make bench` regenerates docs/benchmarks.md's summary from the report, and only that."""
    readme = tmp_path / "benchmarks.md"
    readme.write_text(f"# x\n\nbefore\n{report.REPORT_START}\nold figures\n{report.REPORT_END}\nafter\n")
    rep = {
        "started": "2026-12-02 15:00:00",
        "machine": "a CPU",
        "goals": [("SSD300 / TTFNet-R18 fp32", "2.700 (goal >= 2.5)", "yes")],
        "results": {
            "latency": {"ms": {"TTFNet-R18@512 fp32 (as trained)": 200.0, "torchvision ssd300_vgg16@300": 540.0}},
            "make_train": {
                "wall_seconds": 540.0,
                "train_seconds": 480.0,
                "global_step": 1116,
                "metrics": {"val/AP": 55.0, "val/AP50": 82.0},
            },
        },
    }
    assert report.update_page(readme, report.summary_block(rep))
    text = readme.read_text()
    assert (
        "old figures" not in text
        and text.startswith("# x\n\nbefore\n")
        and text.endswith(f"{report.REPORT_END}\nafter\n")
    )
    assert "| SSD300 / TTFNet-R18 fp32 | 2.700 (goal >= 2.5) | yes |" in text
    assert "| torchvision ssd300_vgg16@300 | 540.0 | 2.70x |" in text
    assert "9.0 min wall clock" in text and "AP50 82.0" in text
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not report.update_page(plain, "x") and plain.read_text() == "no markers\n"
