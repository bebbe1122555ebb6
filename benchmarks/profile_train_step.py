"""Where the bare training step's time goes, fp32 eager against bf16 autocast (issue 24.4: which lever is left).

The bare step of ``bench_train_speed.py`` (TTFNet-R18, `make train`'s config, one batch of 16 at 128 px: forward,
loss, backward; no data, optimiser or logging), timed over 3 steps after 2 warm-up steps, then 2 steps under
``torch.profiler`` with the operators by their own CPU time. Quiet machine only.

    python benchmarks/profile_train_step.py [--rows 14]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_speed import LEVERS, MAKE_TRAIN, bare_setups, bare_step, compose  # noqa: E402

from _common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=14)
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile

    print(machine())
    runs = bare_setups(compose(MAKE_TRAIN), {"fp32 eager": LEVERS["fp32 eager"], "bf16 autocast": LEVERS["bf16"]})
    for name, run in runs.items():
        for _ in range(2):
            bare_step(*run)
        t0 = time.perf_counter()
        for _ in range(3):
            bare_step(*run)
        print(f"\n{name}: {1000 * (time.perf_counter() - t0) / 3:.0f} ms per step")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                bare_step(*run)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
