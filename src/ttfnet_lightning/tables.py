"""A finished (or half-finished) paper-table sweep -> the paper's table, ours beside the paper's.

    python -m ttfnet_lightning.tables multirun/table2-cpu          # prints it, writes table.md/.csv/.png
    python -m ttfnet_lightning.tables multirun/table2-cpu --no-ratio   # skip the Ratio computation
    python -m ttfnet_lightning.tables multirun/table2-cpu --wandb      # also log the plot to the sweep's W&B group

What it does and its options: :mod:`ttfnet_lightning.paper.tables`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ttfnet_lightning.paper.tables import aggregate

DESCRIPTION = """\
Build the paper's table from a paper-table sweep (experiment=tableN), finished or not: each cell is
the mean +- standard deviation over the finished seeds beside the paper's value in brackets
(missing, failed or running where no result exists yet). Prints the table and writes table.md,
table.csv and table.png into the sweep folder."""

EXAMPLES = """\
examples:
  python -m ttfnet_lightning.tables multirun/table2-cpu              # print it, write table.md/.csv/.png
  python -m ttfnet_lightning.tables results/table1-cpu results/table3-cpu
  python -m ttfnet_lightning.tables multirun/table2-cpu --no-ratio   # skip the Ratio computation
  python -m ttfnet_lightning.tables multirun/table2-cpu --wandb      # also log the plot to the sweep's W&B group

more: docs/paper.md"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ttfnet_lightning.tables",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("sweep_dirs", nargs="+", help="sweep dirs of experiment=tableN (e.g. multirun/table2-cpu)")
    ap.add_argument("--no-ratio", action="store_true", help="do not compute the Ratio columns (Tables 2, 3)")
    ap.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table plot and cells to the sweep's W&B group (jobs that used W&B)",
    )
    args = ap.parse_args(argv)
    rc = 0
    for d in args.sweep_dirs:
        try:
            aggregate(d, ratio=not args.no_ratio, wandb=args.wandb)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
