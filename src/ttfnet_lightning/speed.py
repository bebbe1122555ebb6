"""Table 4's FPS row measured again, for all of a sweep's models in one process under the same conditions.

    python -m ttfnet_lightning.speed results/table4-cpu [--rounds 7] [--iters 30]

What it does and its options: :mod:`ttfnet_lightning.paper.speed`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ttfnet_lightning.paper.speed import remeasure_fps

DESCRIPTION = """\
Measure Table 4's FPS row again: every finished job of a sweep (its last.ckpt) timed in one process
under the same conditions, in interleaved rounds (each round times every model once, so a busy
moment slows all models alike). Writes the median images/s (batch 1, model and decoder) into each
job's results.json as fps (the value measured at the end of training is kept as
fps_at_end_of_training)."""

EXAMPLES = """\
examples:
  python -m ttfnet_lightning.speed results/table4-cpu
  python -m ttfnet_lightning.speed multirun/table4-cpu --rounds 11 --iters 50   # steadier, slower
  python -m ttfnet_lightning.tables results/table4-cpu                           # then: the table with them"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ttfnet_lightning.speed",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", type=Path, help="a paper-table sweep folder (experiment=table4)")
    p.add_argument("--rounds", type=int, default=7, help="timing rounds; the median is kept (default 7)")
    p.add_argument("--iters", type=int, default=30, help="timed forward passes per model and round (default 30)")
    args = p.parse_args(argv)
    try:
        medians = remeasure_fps(args.sweep_dir, rounds=args.rounds, iters=args.iters)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, fps in medians.items():
        print(f"  {name:<50} {fps:8.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
