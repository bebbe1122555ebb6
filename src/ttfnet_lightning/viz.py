"""Pictures: the paper's Figure 3 for every target encoder, the paper tables as plots, AP against
training time, and detections drawn on images.

Two halves:

* **Drawing on images, no plotting library** (torch + PIL, core dependencies): :func:`class_color`,
  :func:`colorize`, :func:`overlay_heatmap`, :func:`draw_detections`, :func:`run_model`. ``predict``,
  the W&B validation images and the notebooks use them.
* **Figures** (matplotlib, imported inside the functions only: ``pip install -e ".[viz]"``):
  :func:`targets_figure` (Figure 3), :func:`table_figure` (one per paper table, also written by the
  tables aggregator as ``table.png``), :func:`time_to_accuracy_figure`, :func:`detections_figure`, :func:`batch_figure`.
  Importing this module never imports matplotlib.

Command line (what made the figures of the README and docs/)::

    # Figure 3 from the COCO subset, else from the built-in data
    python -m ttfnet_lightning.viz targets --index 1 --dpi 70 --out docs/figures/targets.png
    python -m ttfnet_lightning.viz table results/table2-cpu --out table2.png    # = the aggregator's table.png
    python -m ttfnet_lightning.viz time results/table1-cpu --out tta.png        # AP vs training time of a sweep's runs
    python -m ttfnet_lightning.viz run outputs/<run>                            # <run>/results.png: losses, LR, val AP
    python -m ttfnet_lightning.viz detections --ckpt last.ckpt --out docs/figures/detections.png
    python -m ttfnet_lightning.viz batch protocol=cpu schedule=10x --out batch.png  # a batch as the network sees it
    python -m ttfnet_lightning.viz strip notebooks/*.ipynb                      # outputs out before committing
"""

# The command line of the figures (library code: ttfnet_lightning.core.drawing and ttfnet_lightning.paper's figures,
# plots and workbench); this module is imported by nothing.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttfnet_lightning.paper.figures import ablation_variants, figure3_variants, run_model, save_figure, targets_figure
from ttfnet_lightning.paper.plots import read_table_csv, table_figure
from ttfnet_lightning.paper.run_plots import detections_figure, sweep_runs, time_to_accuracy_figure
from ttfnet_lightning.paper.tables import build_table
from ttfnet_lightning.paper.workbench import (
    batch_figure,
    sample_images,
    strip_notebook,
    training_batches,
    validation_samples,
)
from ttfnet_lightning.training.checkpoint_data import checkpoint_datamodule
from ttfnet_lightning.training.checkpoints import load_model
from ttfnet_lightning.training.run_figures import RESULTS_PNG, results_figure

DESCRIPTION = """\
Figures, one subcommand each: the paper's Figure 3 for every target encoder (targets), a paper-table
sweep as a plot (table), AP against training time (time), a run's results.png (run), a checkpoint's
detections and heatmaps (detections), a training batch as the network sees it (batch); and strip
removes notebooks' outputs. The figures need matplotlib (pip install -e ".[viz]"); each
subcommand's options: python -m ttfnet_lightning.viz <subcommand> --help."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ttfnet_lightning.viz",
        description=DESCRIPTION,
        epilog="examples:\n" + (__doc__ or "").partition("::")[2].strip("\n"),  # the docstring's command lines
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("targets", help="Figure 3: training samples of each target encoder on a real image")
    t.add_argument("--source", default="auto", choices=["auto", "coco", "shapes"])
    t.add_argument("--coco", default=None, help="COCO root (default ../shared/data/coco-mini)")
    t.add_argument("--index", type=int, default=0, help="which of the most crowded images")
    t.add_argument("--size", type=int, default=512)
    t.add_argument("--alpha", type=float, default=0.54)
    t.add_argument("--beta", type=float, default=0.54)
    t.add_argument("--rect-beta", type=float, default=0.3)
    t.add_argument(
        "--ablations", action="store_true", help="the kernel group's other options instead of Figure 3's four"
    )
    t.add_argument("--out", default="targets.png")
    tb = sub.add_parser("table", help="a paper-table sweep (its table.csv, else built now) as a plot")
    tb.add_argument("sweep_dir")
    tb.add_argument("--out", default=None, help="default: <sweep_dir>/table.png")
    tm = sub.add_parser("time", help="AP against training time for runs or sweeps")
    tm.add_argument("paths", nargs="+")
    tm.add_argument("--metric", default="val/AP")
    tm.add_argument("--out", default="time_to_accuracy.png")
    rn = sub.add_parser("run", help="a run's results.png from its metrics.csv: losses, LR, val AP vs steps and hours")
    rn.add_argument("run_dir")
    rn.add_argument("--out", default=None, help=f"default: <run_dir>/{RESULTS_PNG}")
    d = sub.add_parser("detections", help="a checkpoint's detections and heatmaps on a few images")
    d.add_argument("--ckpt", required=True)
    d.add_argument("--num-images", type=int, default=4)
    d.add_argument("--threshold", type=float, default=0.3)
    d.add_argument("--out", default="detections.png")
    bt = sub.add_parser("batch", help="the first training batch a config produces (augmentation included), boxes drawn")
    bt.add_argument(
        "overrides", nargs="*", help="train's Hydra overrides, e.g. schedule=10x data.datamodule.input_size=[128,128]"
    )
    bt.add_argument("--num-images", type=int, default=8)
    bt.add_argument("--out", default="batch.png")
    for p in (t, tb, tm, rn, d, bt):
        p.add_argument("--dpi", type=int, default=80)
    st = sub.add_parser("strip", help="remove notebooks' outputs in place (they are stored without)")
    st.add_argument("notebooks", nargs="+")
    return ap


def _figure(args: argparse.Namespace) -> Any:
    """The figure of one subcommand (matplotlib imported by then)."""
    if args.cmd == "targets":
        samples, names, source = sample_images(
            args.source, num_images=1, image_size=args.size, coco_root=args.coco, seed=args.index
        )
        img, boxes, labels = samples[0]
        variants = (
            ablation_variants(args.alpha, args.beta, args.rect_beta)
            if args.ablations
            else figure3_variants(args.alpha, args.beta, args.rect_beta)
        )
        return targets_figure(
            img,
            boxes,
            labels,
            num_classes=len(names),
            variants=variants,
            class_names=names,
            title=f"{source} image, {len(boxes)} boxes, {args.size} px input, stride-4 output map",
        )
    if args.cmd == "table":
        sweep = Path(args.sweep_dir)
        rows = (
            read_table_csv(sweep / "table.csv")
            if (sweep / "table.csv").is_file()
            else build_table(sweep, ratio=False)[0].csv_rows()
        )
        args.out = args.out or str(sweep / "table.png")
        return table_figure(rows)
    if args.cmd == "batch":
        batches, names = training_batches(args.overrides)
        b = batches[0]
        H, W = b["images"].shape[-2:]
        return batch_figure(
            b,
            class_names=names or None,
            num_images=args.num_images,
            title=f"first training batch, {H}x{W} px: {' '.join(args.overrides) or 'defaults'}",
        )
    if args.cmd == "run":
        args.out = args.out or str(Path(args.run_dir) / RESULTS_PNG)
        return results_figure(args.run_dir)
    if args.cmd == "time":
        runs: dict[str, Path] = {}
        for p in args.paths:
            runs.update(sweep_runs(p))
        return time_to_accuracy_figure(runs, metric=args.metric)
    model = load_model(args.ckpt)  # detections, on the validation images of the data it was trained on
    samples = validation_samples(checkpoint_datamodule(args.ckpt, input_size=model.input_size), args.num_images)
    images = [s[0] for s in samples]
    dets, heat = run_model(model, images)
    return detections_figure(
        images,
        dets,
        class_names=model.class_names,
        heatmaps=heat or None,  # none: torchvision's detectors
        targets=[{"boxes": s[1], "labels": s[2]} for s in samples],
        score_threshold=args.threshold,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "strip":
        for nb in args.notebooks:
            print(f"{nb}: {'stripped' if strip_notebook(nb) else 'already without outputs'}")
        return 0
    import matplotlib

    matplotlib.use("Agg")
    out = save_figure(_figure(args), args.out, dpi=args.dpi)
    print(f"written: {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
