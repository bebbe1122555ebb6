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
    ("data", ["bench_data.py"], True),
    ("encoder", ["bench_encoder.py"], True),
    ("deterministic", ["bench_deterministic.py"], False),
    ("model", ["bench_model.py"], True),
    ("gpu", ["bench_gpu.py"], True),
]
QUICK = {"latency": ["--quick", "--repeats", "3"], "train_step": ["--only", "make-train", "--steps", "3", "--skip", "1"],
         "data": ["--limit", "20"], "encoder": ["--repeats", "2", "--batch", "2", "--size", "128"], "deterministic": ["--repeats", "1"],
         "model": ["--repeats", "1", "--size", "128"], "gpu": []}


def goals(results: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, met?) rows from the exported figures."""
    rows = []
    # every benchmark may export {"goals": {"<what> (goal >= X)": value}}; latency's come first
    named = [(name, value) for bench in sorted(results, key=lambda b: b != "latency")
             for name, value in results[bench].get("goals", {}).items()]
    for name, value in named:
        bound = name.split("goal ")[-1].rstrip(")")
        op, target = bound.split(" ")
        met = value >= float(target) if op == ">=" else value <= float(target)
        rows.append((name.split(" (goal")[0], f"{value:.3f} (goal {bound})", "yes" if met else "no"))
    for setting, s in results.get("train_step", {}).get("settings", {}).items():
        enc, wait = s["target_encoding"]["share"], s["data_wait"]["share"]
        rows.append((f"target encoding share of a step ({setting})", f"{100 * enc:.2f} % (goal <= 3 %)", "yes" if enc <= 0.03 else "no"))
        rows.append((f"data wait share of a step ({setting})", f"{100 * wait:.2f} % (goal <= 5 %)", "yes" if wait <= 0.05 else "no"))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--quick", action="store_true", help="tiny settings (checks that everything runs; figures not meaningful)")
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    sections, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, exports in BENCHMARKS:
            extra = QUICK.get(name, []) if args.quick else []
            json_path = Path(tmp) / f"{name}.json"
            full = [sys.executable, str(HERE / cmd[0]), *cmd[1:], *extra, *(["--json", str(json_path)] if exports else [])]
            print(f"running {' '.join(full[1:])}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(full, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            output = proc.stdout + (f"\n[stderr]\n{proc.stderr[-3000:]}" if proc.returncode else "")
            shown = " ".join(["python", f"benchmarks/{cmd[0]}", *cmd[1:], *extra])
            sections.append(f"### {name}\n\n`{shown}` ({seconds:.0f} s, exit {proc.returncode})\n\n```\n{output.strip()}\n```\n")
            if exports and json_path.is_file():
                results[name] = json.loads(json_path.read_text())
    report = {"machine": machine(), "started": started, "quick": args.quick, "results": results}
    rows = goals(results)
    lines = [f"# Benchmark report ({'QUICK: tiny settings, figures not meaningful' if args.quick else 'full'})", "",
             f"Machine: {machine()}. Started {started}; `python benchmarks/report.py{' --quick' if args.quick else ''}`.", "",
             "## Goals (issue 10)", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {ok} |" for g, m, ok in rows] + ["", "## Outputs", ""] + sections
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines))
    (args.out / "report.json").write_text(json.dumps(report | {"goals": rows}, indent=2))
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
