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

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_speed import MAKE_TRAIN, compose  # noqa: E402

from _common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=14)
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from ttfnet_lightning.training.run import build_datamodule, build_module

    print(machine())
    cfg = compose(MAKE_TRAIN)
    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = build_module(cfg, dm).train()
    model.trainer = None
    images = model.normalize(batch["images"])
    targets = model.encode({**batch, "images": images})

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.net(images)
        model.loss_fn(*out, *targets)["loss"].backward()
        model.zero_grad(set_to_none=True)

    for bf16 in (False, True):
        for _ in range(2):
            step(bf16)
        t0 = time.perf_counter()
        for _ in range(3):
            step(bf16)
        print(f"\n{'bf16 autocast' if bf16 else 'fp32 eager'}: {1000 * (time.perf_counter() - t0) / 3:.0f} ms per step")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step(bf16)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
