"""``make train`` measured as a user runs it: ``python -m ttfnet_lightning.train backbone=r18
schedule=fast`` (the built-in data, TTFNet-R18, fast schedule) in a fresh output dir, its wall clock
(process start to exit, i.e. with imports, every validation and the checkpoints) and its final AP.

Goals (issue 10): at most 10 minutes of wall clock on the 2-core development CPU, without losing
AP50: at least 79.9, the lowest AP50 this configuration reached before the speed work (issue 10's
baseline; today's figures: docs/training.md, "Training on the built-in data"). Then the checkpoint is
evaluated as trained and through the inference path in fp32 and bf16 (``evaluate``): each
precision's AP within 0.3 of the network as trained.

    python benchmarks/bench_make_train.py [--json out.json] [--max-steps N] [extra Hydra overrides ...]

``--max-steps`` cuts the run short (a check that the script works; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

COMMAND = ["backbone=r18", "schedule=fast"]  # = make train
GOAL_SECONDS = 600.0
GOAL_AP50 = 79.9  # the lowest AP50 of the unchanged configuration before the speed work (issue 10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after N steps (checks the script; figures not meaningful)"
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. speed.channels_last=true)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "ttfnet_lightning.train",
            *COMMAND,
            *args.overrides,
            f"output_dir={out}",
            "trainer.enable_progress_bar=false",
            *([f"trainer.max_steps={args.max_steps}"] if args.max_steps else []),
        ]
        print("running", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=os.environ | {"WANDB_MODE": os.environ.get("WANDB_MODE", "offline")},
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"make train failed (exit {proc.returncode})")
            return 1
        results = json.loads((Path(out) / "results.json").read_text())
        # each inference option checked for accuracy on this checkpoint: AP of the inference path
        # per precision against the network as trained (issue 10: within 0.3)
        evals = {}
        for name, extra in (
            ("as trained", ["inference.optimize=false"]),
            ("inference path", ["inference.precisions=[fp32,bf16]"]),
        ):
            eval_dir = Path(out) / "eval" / name.replace(" ", "_")
            ecmd = [
                sys.executable,
                "-m",
                "ttfnet_lightning.evaluate",
                f"ckpt={Path(out) / 'checkpoints' / 'last.ckpt'}",
                *extra,
                f"output_dir={eval_dir}",
            ]
            print("running", " ".join(ecmd[1:]), flush=True)
            eproc = subprocess.run(ecmd, capture_output=True, text=True)
            if eproc.returncode != 0:
                print(eproc.stdout[-3000:] + eproc.stderr[-3000:])
                print(f"evaluate failed (exit {eproc.returncode})")
                return 1
            evals[name] = json.loads((eval_dir / "metrics.json").read_text())
    m = results["metrics"]
    train_s = float(m.get("time/train_seconds", float("nan")))
    print(f"wall clock {wall:.0f} s ({wall / 60:.1f} min), training {train_s:.0f} s, {results['global_step']} steps")
    print("val " + ", ".join(f"{k.split('/')[1]} {m[k]:.1f}" for k in ("val/AP", "val/AP50", "val/AP75") if k in m))
    goals = {
        "make train wall clock, minutes (goal <= 10)": wall / 60,
        f"make train val/AP50 (goal >= {GOAL_AP50})": float(m.get("val/AP50", float("nan"))),
    }
    ref_ap = evals["as trained"]["val/AP"]
    by_precision = evals["inference path"]["by_precision"]
    print(
        f"AP of the checkpoint: as trained (fp32) {ref_ap:.2f}; inference path "
        + ", ".join(
            f"{p} {v['val/AP']:.2f} ({v['model_only_images_per_s_batch1']:.1f} images/s model-only, batch 1)"
            for p, v in by_precision.items()
        )
    )
    for p, v in by_precision.items():
        goals[f"|AP inference path {p} - AP as trained| (goal <= 0.3)"] = abs(v["val/AP"] - ref_ap)
    if args.max_steps:
        goals = {}  # a cut-short run says nothing about the goals
        print("(--max-steps: a shortened run, no goal figures)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "wall_seconds": wall,
                    "train_seconds": train_s,
                    "global_step": results["global_step"],
                    "metrics": m,
                    "goals": goals,
                    "evaluate": evals,
                    "overrides": args.overrides,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
