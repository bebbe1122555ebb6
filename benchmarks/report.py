"""Run every benchmark in one go and write one report: ``benchmarks/report.md`` (each benchmark's
command and output, and the goals of issue 10 with their measured values) and
``benchmarks/report.json`` (every figure the benchmarks export). ``make bench`` runs this.

Run it on a quiet machine: the benchmarks run one after another and nothing else should.

    python benchmarks/report.py [--out benchmarks] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402

# (name, script arguments, exports JSON)
BENCHMARKS = [
    ("latency", ["bench_latency.py"], True),
    ("train_step", ["bench_train_step.py"], True),
    ("train_speed", ["bench_train_speed.py", "--loaders"], True),  # issue 24.4: levers and the pipeline's step
    ("data", ["bench_data.py"], True),
    ("encoder", ["bench_encoder.py"], True),
    ("deterministic", ["bench_deterministic.py"], False),
    ("model", ["bench_model.py"], True),
    ("gpu", ["bench_gpu.py"], True),
    ("make_train", ["bench_make_train.py"], True),  # the real `make train`, last: ~10-15 min
]
QUICK = {
    "latency": ["--quick", "--repeats", "3"],
    "train_step": ["--only", "make-train", "--steps", "3", "--skip", "1"],
    "train_speed": ["--rounds", "1", "--steps", "2"],
    "data": ["--limit", "20"],
    "encoder": ["--repeats", "2", "--batch", "2", "--size", "128"],
    "deterministic": ["--repeats", "1"],
    "model": ["--repeats", "1", "--size", "128"],
    "gpu": [],
    "make_train": ["--max-steps", "3"],
}
REPORT_START, REPORT_END = "<!-- bench-report:start -->", "<!-- bench-report:end -->"


def goals(results: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, met?) rows from the exported figures."""
    rows = []
    # every benchmark may export {"goals": {"<what> (goal >= X)": value}}; latency's come first
    named = [
        (name, value)
        for bench in sorted(results, key=lambda b: b != "latency")
        for name, value in results[bench].get("goals", {}).items()
    ]
    for name, value in named:
        bound = name.split("goal ")[-1].rstrip(")")
        op, target = bound.split(" ")
        met = value >= float(target) if op == ">=" else value <= float(target)
        rows.append((name.split(" (goal")[0], f"{value:.3f} (goal {bound})", "yes" if met else "no"))
    for setting, s in results.get("train_step", {}).get("settings", {}).items():
        enc, wait = s["target_encoding"]["share"], s["data_wait"]["share"]
        rows.append(
            (
                f"target encoding share of a step ({setting})",
                f"{100 * enc:.2f} % (goal <= 3 %)",
                "yes" if enc <= 0.03 else "no",
            )
        )
        rows.append(
            (
                f"data wait share of a step ({setting})",
                f"{100 * wait:.2f} % (goal <= 5 %)",
                "yes" if wait <= 0.05 else "no",
            )
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument(
        "--quick", action="store_true", help="tiny settings (checks that everything runs; figures not meaningful)"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=[b[0] for b in BENCHMARKS], help="benchmarks left out")
    p.add_argument(
        "--page",
        type=Path,
        default=HERE.parent / "docs" / "benchmarks.md",
        help=f"page (docs/benchmarks.md) whose block between {REPORT_START} and {REPORT_END} "
        "is rewritten from the report (not with --quick)",
    )
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    sections, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, exports in BENCHMARKS:
            extra = QUICK.get(name, []) if args.quick else []
            if name in args.skip:
                continue
            step = results.get("train_step", {}).get("settings", {}).get("512", {}).get("total", {}).get("ms")
            if name == "data" and step:  # what the R18 step at 512 px, batch 16 measured above consumes
                extra = [*extra, "--step-ms", f"{step:.1f}"]
            json_path = Path(tmp) / f"{name}.json"
            full = [
                sys.executable,
                str(HERE / cmd[0]),
                *cmd[1:],
                *extra,
                *(["--json", str(json_path)] if exports else []),
            ]
            print(f"running {' '.join(full[1:])}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(full, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            output = proc.stdout + (f"\n[stderr]\n{proc.stderr[-3000:]}" if proc.returncode else "")
            shown = " ".join(["python", f"benchmarks/{cmd[0]}", *cmd[1:], *extra])
            sections.append(
                f"### {name}\n\n`{shown}` ({seconds:.0f} s, exit {proc.returncode})\n\n```\n{output.strip()}\n```\n"
            )
            if exports and json_path.is_file():
                results[name] = json.loads(json_path.read_text())
    report = {"machine": machine(), "started": started, "quick": args.quick, "results": results}
    rows = goals(results)
    lines = [
        f"# Benchmark report ({'QUICK: tiny settings, figures not meaningful' if args.quick else 'full'})",
        "",
        f"Machine: {machine()}. Started {started}; `python benchmarks/report.py{' --quick' if args.quick else ''}`.",
        "",
        "## Goals (issue 10)",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {m} | {ok} |" for g, m, ok in rows] + ["", "## Outputs", ""] + sections
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines))
    (args.out / "report.json").write_text(json.dumps(report | {"goals": rows}, indent=2))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    if not args.quick and args.page and args.page.is_file():
        if update_page(args.page, summary_block(report | {"goals": rows})):
            print(f"rewrote the benchmark block of {args.page}")
    return 0


def summary_block(report: dict) -> str:
    """The benchmark summary of docs/benchmarks.md, made from a report (``report.json``): machine and date, the
    goals table, the latency table and the training-step breakdown."""
    res = report["results"]
    out = [
        f"Measured by `make bench` (`python benchmarks/report.py`), started {report['started']}, on: "
        f"{report['machine']}.",
        "Full output: [`benchmarks/report.md`](../benchmarks/report.md) (figures: `benchmarks/report.json`).",
        "",
        "| goal (issue 10) | measured | met |",
        "|---|---|---|",
    ]
    out += [f"| {g} | {m} | {ok} |" for g, m, ok in report["goals"]]
    if "latency" in res:
        ms = res["latency"]["ms"]
        ref = ms.get("TTFNet-R18@512 fp32 (as trained)")
        out += [
            "",
            "Inference, batch 1, random weights, one process (`benchmarks/bench_latency.py`):",
            "",
            "| model | ms | relative to TTFNet-R18 fp32 as trained |",
            "|---|---|---|",
        ]
        out += [f"| {k} | {v:.1f} | {v / ref:.2f}x |" if ref else f"| {k} | {v:.1f} | |" for k, v in ms.items()]
    for setting, summary in res.get("train_step", {}).get("settings", {}).items():
        out += [
            "",
            f"Training step, TTFNet-R18, setting `{setting}` (`benchmarks/bench_train_step.py`): "
            + ", ".join(f"{p} {v['ms']:.0f} ms ({100 * v['share']:.1f} %)" for p, v in summary.items() if p != "total")
            + f"; total {summary['total']['ms']:.0f} ms.",
        ]
    if "data" in res:
        out += [
            "",
            "Data loading on the COCO subset, one worker (`benchmarks/bench_data.py`): "
            + ", ".join(f"{k} {v:.1f} images/s" for k, v in res["data"]["images_per_s"].items())
            + ".",
        ]
    if "make_train" in res:
        mt = res["make_train"]
        m = mt["metrics"]
        out += [
            "",
            f"`make train` (`benchmarks/bench_make_train.py`): {mt['wall_seconds'] / 60:.1f} min wall clock "
            f"({mt['train_seconds']:.0f} s training, {mt['global_step']} steps), val AP {m['val/AP']:.1f}, AP50 "
            f"{m['val/AP50']:.1f}.",
        ]
        ev = mt.get("evaluate", {})
        if "as trained" in ev and "inference path" in ev:
            out += [
                "",
                "Its checkpoint evaluated (`python -m ttfnet_lightning.evaluate ckpt=... "
                "inference.precisions=[fp32,bf16]`, "
                "100 % of the validation images): as trained (fp32) AP " + f"{ev['as trained']['val/AP']:.2f}, "
                f"{ev['as trained']['model_only_images_per_s_batch1']:.1f} images/s model-only at batch 1, "
                f"{ev['as trained']['end_to_end_images_per_s']:.1f} end to end; inference path "
                + "; ".join(
                    f"{p} AP {v['val/AP']:.2f}, {v['model_only_images_per_s_batch1']:.1f} images/s model-only at batch "
                    "1, "
                    f"{v['end_to_end_images_per_s']:.1f} end to end"
                    for p, v in ev["inference path"]["by_precision"].items()
                )
                + ".",
            ]
    return "\n".join(out)


def update_page(page: Path, block: str) -> bool:
    """Replace the text between the page's markers with ``block``; False when it has no markers."""
    text = page.read_text()
    if REPORT_START not in text or REPORT_END not in text:
        return False
    head, rest = text.split(REPORT_START, 1)
    _, tail = rest.split(REPORT_END, 1)
    page.write_text(f"{head}{REPORT_START}\n{block}\n{REPORT_END}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
