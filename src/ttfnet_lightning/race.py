"""The race of detectors' result, from its sweep folder (``experiment=race``, ``make race``).

    python -m ttfnet_lightning.race results/race-cpu             # prints race.md, writes race.md/.json/.png
    python -m ttfnet_lightning.race results/race-cpu --wandb     # also log the table and plot to W&B (online)

What it does and its options: :mod:`ttfnet_lightning.paper.race`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ttfnet_lightning.paper.race import LEVELS, write_race

DESCRIPTION = """\
Race detectors against training time: from a race sweep (experiment=race), finished or not, each
detector's final val AP and AP50 (mean and each seed), the training time it used and the training
time it needed to reach each AP50 level (interpolated between validations; "not reached" when no
validation did). Prints the table and writes race.md, race.json and race.png (AP50 and AP against
training time: seeds thin, mean bold) into the sweep folder."""

EXAMPLES = """\
examples:
  python -m ttfnet_lightning.race results/race-cpu                  # print it, write race.md/.json/.png
  python -m ttfnet_lightning.race results/race-cpu --levels 40,60,80 # other AP50 levels
  python -m ttfnet_lightning.race results/race-cpu --wandb          # also to the sweep's W&B group (online)

more: docs/race.md"""


def _levels(text: str) -> list[float]:
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels: AP50 values joined by commas (30,50,70), got {text!r}") from None
    if not levels or any(not 0 < v <= 100 for v in levels):
        raise argparse.ArgumentTypeError(f"--levels: AP50 values in (0, 100], got {text!r}")
    return sorted(levels)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ttfnet_lightning.race",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("sweep_dirs", nargs="+", help="sweep folders of experiment=race (e.g. results/race-cpu)")
    ap.add_argument(
        "--levels",
        type=_levels,
        default=list(LEVELS),
        help=f"AP50 levels whose training time is reported (default {','.join(f'{v:g}' for v in LEVELS)})",
    )
    ap.add_argument("--wandb", action="store_true", help="also log the table and plot to the sweep's W&B group")
    args = ap.parse_args(argv)
    rc = 0
    for d in args.sweep_dirs:
        try:
            write_race(d, levels=args.levels, wandb=args.wandb)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
