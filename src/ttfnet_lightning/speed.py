"""Table 4's FPS row measured again, for all of a sweep's models in one process under the same

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=30)
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
