"""Drawing on images without matplotlib (``core.drawing``), Figure 3's target maps and the figures (tables,
time to accuracy, detections, targets; ``paper.figures``, ``paper.plots``, ``paper.workbench``) on small inputs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttfnet_lightning import viz  # the command line
from ttfnet_lightning.core import drawing
from ttfnet_lightning.core.targets import encode_targets, regression_coverage
from ttfnet_lightning.paper import figures, plots, run_plots, workbench


def needs_matplotlib():
    return pytest.importorskip("matplotlib")


# ------------------------------------------------------------------------------ drawing
def test_core_library_works_without_matplotlib(tmp_path):
    """matplotlib is an optional extra (viz): with it unimportable, the package imports, draws on
    images (predict, W&B) and the tables aggregator skips its PNG; only viz's figure functions need it."""
    code = f"""
import importlib.metadata as md
import sys


class NoMatplotlib:  # as if it were not installed: no distribution, find_spec and import fail
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {{name!r}}")


def distribution(name, _real=md.distribution):
    if name.lower() == "matplotlib":
        raise md.PackageNotFoundError(name)
    return _real(name)


md.distribution = distribution  # (torchmetrics asks the installed distributions)
sys.meta_path.insert(0, NoMatplotlib())
import torch
import ttfnet_lightning, ttfnet_lightning.training.run, ttfnet_lightning.deploy.predict
import ttfnet_lightning.training.evaluate, ttfnet_lightning.training.callbacks
import ttfnet_lightning.training.error_analysis, ttfnet_lightning.training.run_figures
import ttfnet_lightning.training.analysis_figures
from ttfnet_lightning.paper import layouts, tables
from ttfnet_lightning.core import drawing
from ttfnet_lightning.paper import figures, plots, race, race_plot, run_plots, workbench
img = drawing.draw_detections(torch.zeros(3, 32, 32, dtype=torch.uint8), torch.tensor([[2., 2., 20., 20.]]),
                              torch.tensor([1]), torch.tensor([0.9]), heatmap=torch.rand(8, 8))
assert img.shape == (3, 32, 32)
cell = layouts.Cell(values=[1.0], statuses=["finished"])
table = layouts.Table("table1", "t", ["AP"], ["none"], {{("AP", "none"): cell}})
assert tables.write_plot(table, {str(tmp_path)!r}) is None
try:
    plots.table_figure(table.csv_rows())
except ImportError:
    pass
else:
    raise AssertionError("table_figure without matplotlib")
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not (tmp_path / "table.png").exists()
    # and no module but viz mentions matplotlib (viz imports it inside its figure functions only)
    src = Path(plots.__file__).parents[1]
    users = sorted(
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if "import matplotlib" in p.read_text() or "from matplotlib" in p.read_text()
    )
    assert users == [
        "paper/figures.py",
        "paper/plots.py",
        "paper/race_plot.py",
        "paper/tables.py",
        "training/analysis_figures.py",
        "training/error_analysis.py",
        "training/run_figures.py",
        "viz.py",
    ], users
    for name in users:  # each imports it inside functions only
        assert not [
            line
            for line in (src / name).read_text().splitlines()
            if line.startswith(("import matplotlib", "from matplotlib"))
        ]


def test_class_colors_are_stable_and_distinct():
    five = drawing.class_colors(5)
    assert five == drawing.class_colors(80)[:5]  # class k's colour does not depend on the number of classes
    assert len(set(drawing.class_colors(80))) == 80
    assert all(0 <= c <= 255 for rgb in five for c in rgb)


def test_colorize_follows_inferno_and_clamps():
    rgb = drawing.colorize(torch.tensor([[-1.0, 0.0, 0.5, 1.0, 2.0]]))
    assert rgb.shape == (3, 1, 5) and rgb.dtype == torch.uint8
    assert rgb[:, 0, 1].tolist() == [0, 0, 4] and rgb[:, 0, 0].tolist() == [0, 0, 4]
    assert rgb[:, 0, 3].tolist() == [252, 255, 164] and rgb[:, 0, 4].tolist() == [252, 255, 164]
    assert rgb[:, 0, 2].tolist() == [188, 55, 84]


def test_overlay_heatmap_blends_and_resizes():
    img = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    heat = torch.zeros(10, 15)
    heat[5, 7] = 0.5
    assert torch.equal(drawing.overlay_heatmap(img, heat, alpha=0.0), img)
    out = drawing.overlay_heatmap(img, heat, alpha=0.5)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert out[:, 0, 0].tolist() == [100, 100, 102]  # heat 0: the image darkened by half (inferno's black)
    scaled = drawing.overlay_heatmap(img, heat, alpha=1.0, vmax=None)  # the peak becomes the colour map's top
    assert int(scaled[1].max()) > int(drawing.overlay_heatmap(img, heat, alpha=1.0)[1].max())


def test_draw_detections_colours_classes_and_applies_the_threshold():
    img = torch.zeros(3, 100, 120, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 30.0, 50.0, 80.0], [60.0, 30.0, 110.0, 90.0]])
    labels = torch.tensor([0, 3])
    out = drawing.draw_detections(
        img, boxes, labels, torch.tensor([0.9, 0.1]), class_names=["a", "b", "c", "d"], score_threshold=0.5, width=2
    )
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert out[:, 55, 10].tolist() == list(drawing.class_color(0))  # left edge of the kept box, class 0's colour
    assert out[:, 60, 110].sum() == 0  # the box below the threshold is not drawn
    assert out[:, 20:29, 10:40].sum() > 0  # its label tag above the box
    gt = drawing.draw_detections(
        img, boxes, labels, class_names=["a", "b", "c", "d"], colors=[(255, 255, 255)] * 4, width=1
    )
    assert gt[:, 60, 110].tolist() == [255, 255, 255]  # no scores: every box drawn, in the given colour
    heat = drawing.draw_detections(img, boxes[:0], labels[:0], torch.zeros(0), heatmap=torch.ones(5, 5))
    assert heat.float().mean() > 50  # the heatmap alone


def test_run_model_returns_detections_and_heatmaps_at_each_image_size():
    from ttfnet_lightning.training.lit_module import TTFNetModule

    model = TTFNetModule(data_info={"num_classes": 3, "input_size": [64, 64]}).eval()
    images = [
        torch.randint(0, 255, (3, 48, 80), dtype=torch.uint8),
        torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
    ]
    dets, heat = figures.run_model(model, images)
    assert len(dets) == 2 and [h.shape for h in heat] == [(16, 16), (16, 16)]
    assert all(0 <= float(h.min()) and float(h.max()) <= 1 for h in heat)
    boxes = dets[0]["boxes"]
    assert len(boxes) and float(boxes[:, 2].max()) <= 80 and float(boxes[:, 3].max()) <= 48  # the image's own pixels


# ------------------------------------------------------------------------------ targets
def test_target_maps_equal_the_encoder():
    boxes = torch.tensor([[8.0, 8.0, 56.0, 40.0], [30.0, 20.0, 62.0, 60.0], [0.0, 0.0, 20.0, 20.0]])
    labels = torch.tensor([0, 1, 1])
    m = figures.target_maps(boxes, labels, num_classes=2, image_size=(64, 64))
    hm, tgt, wt = encode_targets(boxes[None], labels[None], num_classes=2, output_size=(16, 16))
    cov = regression_coverage(boxes[None], labels[None], num_classes=2, output_size=(16, 16))
    assert (
        torch.equal(m.heatmap, hm[0].amax(0)) and torch.equal(m.weight, wt[0, 0]) and torch.equal(m.coverage, cov[0, 0])
    )
    assert m.num_samples == int((cov >= 1).sum()) and m.num_ambiguous == int((cov >= 2).sum()) > 0
    assert m.ambiguous_ratio == pytest.approx(100 * m.num_ambiguous / m.num_samples)
    # owner: the box whose coordinates the pixel regresses to
    for k in range(3):
        own = m.owner == k
        assert own.any() and (tgt[0, :, own] == boxes[k][:, None]).all()
    assert ((m.owner >= 0) == (m.weight > 0)).all()
    # each box's weights sum to log((w + 1)(h + 1)) before smaller boxes take its ambiguous pixels
    alone = figures.target_maps(boxes[:1], labels[:1], num_classes=2, image_size=(64, 64))
    assert float(alone.weight.sum()) == pytest.approx(math.log(49 * 33), rel=1e-5)


def test_class_aware_maps_count_conflicts_per_class():
    boxes = torch.tensor([[8.0, 8.0, 56.0, 56.0], [16.0, 16.0, 48.0, 48.0]])
    other = figures.target_maps(
        boxes, torch.tensor([0, 1]), num_classes=2, image_size=(64, 64), **figures.kernel_options("class_aware")
    )
    same = figures.target_maps(
        boxes, torch.tensor([1, 1]), num_classes=2, image_size=(64, 64), **figures.kernel_options("class_aware")
    )
    assert other.num_ambiguous == 0 and same.num_ambiguous > 0
    assert other.num_samples > same.num_samples  # a pixel in both areas is a sample in each class channel


def test_kernel_options_follow_the_config_group():
    assert figures.kernel_names()[0] == "ttfnet" and {"rect", "isotropic", "class_aware", "uniform", "norm"} <= set(
        figures.kernel_names()
    )
    base = figures.kernel_options()
    assert base == {
        "alpha": 0.54,
        "beta": 0.54,
        "wh_gaussian": True,
        "gaussian_weight": None,
        "area_weight": "log",
        "aspect_ratio": True,
        "class_aware": False,
    }
    assert figures.kernel_options("rect", beta=0.3) == {**base, "wh_gaussian": False, "beta": 0.3}
    with pytest.raises(ValueError, match="unknown kernel"):
        figures.kernel_options("nope")


def test_figure3_variants():
    v = figures.figure3_variants(0.54, 0.54, 0.3)
    assert list(v) == [
        "(a) CenterNet: centre pixel",
        "(b) FCOS: whole box",
        "(c) rectangle, beta=0.3",
        "(d) TTFNet, a=0.54 b=0.54",
    ]
    boxes = torch.tensor([[4.0, 4.0, 60.0, 36.0], [40.0, 30.0, 63.0, 63.0]])
    labels = torch.tensor([0, 0])
    maps = {k: figures.target_maps(boxes, labels, num_classes=1, image_size=(64, 64), **o) for k, o in v.items()}
    a = maps["(a) CenterNet: centre pixel"]
    assert a.num_samples == 2 and bool(((a.weight > 0) == (a.heatmap == 1)).all())  # one sample per box, at its peak
    whole = maps["(b) FCOS: whole box"]
    assert (
        whole.num_samples > maps["(d) TTFNet, a=0.54 b=0.54"].num_samples > maps["(c) rectangle, beta=0.3"].num_samples
    )
    assert set(figures.ablation_variants()) >= {
        "class_aware",
        "isotropic",
        "norm",
        "uniform",
        "rect, beta=0.3",
        "area weight sqrt",
    }


def test_sample_images_falls_back_to_the_built_in_data(tmp_path):
    samples, names, source = workbench.sample_images(
        "auto", num_images=2, image_size=64, coco_root=tmp_path / "no-coco"
    )
    assert source == "shapes" and len(samples) == 2 and len(names) == 5
    img, boxes, labels = samples[0]
    assert (
        img.shape == (3, 64, 64) and img.dtype == torch.uint8 and boxes.shape == (len(labels), 4) and len(labels) >= 3
    )
    with pytest.raises(ValueError, match="source"):
        workbench.sample_images("imagenet")


def test_sample_images_from_coco(coco_mini):
    samples, names, source = workbench.sample_images("coco", num_images=1, image_size=128, coco_root=coco_mini)
    img, boxes, labels = samples[0]
    assert source == "coco" and len(names) == 80 and img.shape == (3, 128, 128)
    assert 3 <= len(boxes) <= 12 and float(boxes.max()) <= 128


# ------------------------------------------------------------------------------ experiments
def write_metrics(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("epoch,step,time/step,time/train_seconds,train/loss,val/AP,val/AP50\n" + "".join(rows))
    return path


def test_read_validations_and_sweep_runs(tmp_path):
    csv_path = write_metrics(
        tmp_path / "sweep" / "kernel.beta=0.1,seed=0" / "metrics.csv",
        ["0,9,,,3.0,,\n", "0,11,12.0,36.0,,10.0,20.0\n", "1,23,24.0,72.0,,15.0,30.0\n"],
    )
    v = run_plots.read_validations(csv_path)
    assert [(r["hours"], r["step"], r["val/AP"], r["val/AP50"]) for r in v] == [
        (0.01, 12, 10.0, 20.0),
        (0.02, 24, 15.0, 30.0),
    ]
    write_metrics(tmp_path / "sweep" / "kernel.beta=0.1,seed=1" / "metrics.csv", ["0,11,12.0,30.0,,11.0,21.0\n"])
    runs = run_plots.sweep_runs(tmp_path / "sweep")
    assert list(runs) == ["kernel.beta=0.1,seed=0", "kernel.beta=0.1,seed=1"]
    assert run_plots.sweep_runs(csv_path.parent) == {"kernel.beta=0.1,seed=0": csv_path}
    assert (
        run_plots._group_label("kernel.beta=0.1,seed=1")
        == "kernel.beta=0.1"
        == run_plots._group_label("seed=0,kernel.beta=0.1")
    )


def cell(table, row, column, values, paper=None, collapsed=0):
    mean = sum(values) / len(values) if values else None
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return {
        "table": table,
        "row": row,
        "column": column,
        "mean": mean,
        "std": std,
        "n": len(values),
        "jobs": 2,
        "values": " ".join(f"{v:.4f}" for v in values),
        "paper": paper,
        "statuses": "finished finished",
        "collapsed": collapsed,
    }


FAKE_TABLES = {
    "table1": [
        cell("table1", "AP", c, [10.0 + i, 12.0 + i], p)
        for i, (c, p) in enumerate(
            zip(
                ["none", "Norm", "Norm+Sqrt", "Norm+Log", "Norm+Sqrt+Gaussian", "Norm+Log+Gaussian"],
                [27.2, 31.7, 31.2, 32.0, 31.6, 32.9],
            )
        )
    ],
    "table2": [
        cell("table2", f"{m} {k}", b, [v, v + 1], collapsed=int(b == "0.9"))
        for m in ("Agnostic", "Aware")
        for k in ("AP", "Ratio %")
        for b, v in (("0.01", 5.0), ("0.3", 9.0), ("0.9", 0.0))
    ],
    "table3": [
        cell("table3", r, c, [5.0 + i, 6.0 + i] if c == "AP" else [40.0 + i, 44.0], 32.0 + i if c == "AP" else 7.0 + i)
        for i, r in enumerate(("0.3 |  | ", "0.54 | X | X"))
        for c in ("AP", "Ratio %")
    ],
    "table4": [
        cell("table4", r, c, [20.0, 22.0] if r == "AP" else [50.0, 51.0], 30.0 if r == "AP" else 55.0)
        for c in ("(0,0,0)", "(3,2,1)")
        for r in ("AP", "FPS")
    ],
    "table5": [
        cell("table5", b, f"LR {lr:g} ({m:g}x) 1x", [10.0 * float(b) + lr, 11.0], 30.0)
        for b in ("0.01", "0.1", "0.54")
        for lr, m in ((0.0064, 0.4), (0.0384, 2.4))
    ],
    "table6": [
        cell("table6", r, c, [20.0, 21.0], 30.0) for r in ("2x pretrained", "10x scratch") for c in ("R18", "D53")
    ],
    "tableX": [cell("tableX", "AP", "a", [1.0, 2.0], 3.0)],
}


def plotted_values(ax) -> list[float]:
    """Every number an axes shows: bar heights, line and error-bar points (x and y), scatter dots."""
    from matplotlib.patches import Rectangle

    out = [float(p.get_height()) for p in ax.patches if isinstance(p, Rectangle)]
    for line in ax.lines:
        out += [float(v) for v in (*line.get_xdata(), *line.get_ydata())]
    for coll in ax.collections:
        out += [float(v) for v in coll.get_offsets().ravel()]
    return [v for v in out if math.isfinite(v)]


def shows(values: list[float], v: float) -> bool:
    return any(abs(v - w) < 1e-6 for w in values)


def png_pixels(path) -> torch.Tensor:
    """A PNG as an (H, W, 3) float tensor (palette images converted)."""
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32))


# tables whose paper values come from the cells (Tables 2 and 5 plot the paper's own curves)
PAPER_FROM_CELLS = {"table1", "table3", "table4", "tableX"}


@pytest.mark.parametrize("name", sorted(FAKE_TABLES))
def test_table_figure_draws_every_table(name, tmp_path):
    """Every cell's mean and each seed's value are drawn (a bar, a line point or a dot; Table 4: the
    mean and its std bar), and the paper's value where the cell carries it; the saved PNG has the figure's size and is
    not blank."""
    needs_matplotlib()
    import csv

    fig = plots.table_figure(FAKE_TABLES[name])
    assert fig.axes and all(ax.has_data() for ax in fig.axes if ax.get_title())
    assert name in fig.get_suptitle()
    # ours on the panels not titled "paper", the paper's on those not titled "ours" (or shared panels)
    ours = [v for ax in fig.axes if "paper" not in ax.get_title() for v in plotted_values(ax)]
    theirs = [v for ax in fig.axes if "ours" not in ax.get_title() for v in plotted_values(ax)]
    for c in FAKE_TABLES[name]:
        assert shows(ours, c["mean"]), (c["row"], c["column"], "mean", c["mean"])
        if name == "table4":  # AP against FPS: means with std bars (their caps), no seed dots
            assert shows(ours, c["mean"] + c["std"]) and shows(ours, c["mean"] - c["std"]), (
                c["row"],
                c["column"],
                "std",
            )
        for v in c["values"].split() if name != "table4" else []:
            assert shows(ours, float(v)), (c["row"], c["column"], "seed", v)
        if name in PAPER_FROM_CELLS and c["paper"] is not None:
            assert shows(theirs, c["paper"]), (c["row"], c["column"], "paper", c["paper"])
    # the same from a table.csv as the aggregator writes it
    path = tmp_path / "table.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FAKE_TABLES[name][0]))
        w.writeheader()
        w.writerows(FAKE_TABLES[name])
    assert len(plots.table_figure(path).axes) == len(fig.axes)
    png = figures.save_figure(fig, tmp_path / "t.png", dpi=40)
    assert png.read_bytes()[:4] == b"\x89PNG"
    pixels = png_pixels(png)
    w, h = fig.get_size_inches() * 40
    assert pixels.shape == (round(h), round(w), 3)
    assert pixels.std() > 20 and (pixels.mean(-1) < 100).float().mean() > 0.005  # drawn on, not a blank page


def test_time_to_accuracy_figure_with_the_papers_table7(tmp_path):
    needs_matplotlib()
    a = write_metrics(tmp_path / "a" / "metrics.csv", ["0,11,12.0,36.0,,10.0,20.0\n", "1,23,24.0,72.0,,15.0,30.0\n"])
    fig = run_plots.time_to_accuracy_figure({"seed=0": a, "seed=1": a}, metric="val/AP50")
    ours, paper = fig.axes[:2]
    assert (
        len(ours.lines) == 2
        and list(ours.lines[0].get_ydata()) == [20.0, 30.0]
        and list(ours.lines[0].get_xdata()) == [0.6, 1.2]
    )
    assert len(paper.collections) == len(plots._paper()["table7"]["rows"])
    assert len(run_plots.time_to_accuracy_figure({"x": a}, paper=False).axes) == 1


def test_targets_and_detections_figures(tmp_path):
    needs_matplotlib()
    samples, names, _ = workbench.sample_images("shapes", num_images=2, image_size=64)
    img, boxes, labels = samples[0]
    fig = figures.targets_figure(
        img, boxes, labels, num_classes=len(names), variants=figures.figure3_variants(), title="t"
    )
    assert len(fig.axes) == 12 and "samples" in fig.axes[0].get_title()
    dets = [{"boxes": s[1], "labels": s[2], "scores": torch.linspace(0.9, 0.2, len(s[2]))} for s in samples]
    fig = run_plots.detections_figure(
        [s[0] for s in samples],
        dets,
        class_names=names,
        heatmaps=[torch.rand(16, 16)] * 2,
        targets=[{"boxes": s[1], "labels": s[2]} for s in samples],
    )
    assert len(fig.axes) == 4 and "heatmap" in fig.axes[2].get_title()
    path = figures.save_figure(fig, tmp_path / "sub" / "d.png", dpi=30)
    from PIL import Image

    assert Image.open(path).mode == "P"  # palette-quantised


def test_cli_writes_the_figures(tmp_path):
    needs_matplotlib()
    out = tmp_path / "targets.png"
    assert viz.main(["targets", "--source", "shapes", "--size", "64", "--ablations", "--out", str(out)]) == 0
    pixels = png_pixels(out)  # one panel per encoder option, drawn on (not a blank page)
    assert pixels.shape[0] > 100 and pixels.shape[1] > pixels.shape[0] and pixels.std() > 20
    assert len(figures.ablation_variants()) > 4


def test_training_batch_as_the_network_sees_it(tmp_path):
    """`viz batch`: the configured datamodule's first training batch (augmentation included), its
    boxes inside the image and drawn; the CLI takes train's overrides."""
    needs_matplotlib()
    overrides = [
        "data.datamodule.input_size=[64,64]",
        "data.datamodule.num_train=8",
        "data.datamodule.num_val=4",
        "data.datamodule.batch_size=4",
        "schedule.augment=true",
    ]
    batches, names = workbench.training_batches(overrides, num_batches=2)
    assert len(batches) == 2 and names
    b = batches[0]
    assert b["images"].shape == (4, 3, 64, 64) and b["images"].dtype == torch.uint8
    real = b["labels"] >= 0
    assert real.any() and int(b["labels"].max()) < len(names)
    boxes = b["boxes"][real]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    out = tmp_path / "batch.png"
    assert viz.main(["batch", *overrides, "--num-images", "4", "--dpi", "30", "--out", str(out)]) == 0
    pixels = png_pixels(out)
    assert pixels.shape[1] > 100 and pixels.std() > 20  # the images drawn, not a blank page
    assert ((pixels.amax(-1) - pixels.amin(-1)) > 60).float().mean() > 0.01  # in colour (the coloured shapes and boxes)
