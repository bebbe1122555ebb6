"""How fast `make train` trains, as ratios measured in one run (issue 24.4).

Two kinds of step, at the `make train` setting (TTFNet-R18, built-in data, 128 px, batch 16):

* the **bare step**: the network's forward, loss and backward on one fixed batch already on the device (no data
  loading, no target encoding, no optimiser, no logging), for each speed lever alone and combined: fp32 eager (the
  reference), bf16 autocast, channels_last, both, and with ``--compile`` torch.compile;
* the **pipeline step**: a real ``trainer.fit`` of the composed training config (data loader, target encoding, loss,
  optimiser, callbacks, logging), median time between consecutive training batches in the second epoch (the first
  renders the images), validation off; for the default config and for the earlier default (fp32, two loader workers,
  no render cache).

Goals (issue 24.4): default pipeline step at least 2x faster than the fp32 eager bare step; the default pipeline step
at most 1.1x the bare step of its own settings.

    python benchmarks/bench_train_speed.py [--rounds 6] [--steps 24] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

MAKE_TRAIN = ["backbone=r18", "schedule=fast"]
# the default before issue 24.4: fp32, two loader workers rendering every epoch
EARLIER = ["trainer.precision=32-true", "data.datamodule.num_workers=2", "data.datamodule.cache_mb=0"]
LEVERS = {  # name -> (bf16 autocast, channels_last, compile)
    "fp32 eager": (False, False, False),
    "bf16": (True, False, False),
    "channels_last": (False, True, False),
    "bf16 + channels_last": (True, True, False),
}


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ttfnet_lightning.conf import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose("train", overrides)


def bare_setups(cfg: Any, levers: dict[str, tuple[bool, bool, bool]]) -> dict[str, tuple[Any, torch.Tensor, Any, bool]]:
    """Per lever (bf16, channels_last, compile): a fresh training module of ``cfg`` and one fixed training batch,
    normalised and encoded on the device: ``(model, images, targets, bf16)`` for :func:`bare_step`."""
    from ttfnet_lightning.training.run import build_datamodule, build_module

    pl.seed_everything(0)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    runs = {}
    for name, (bf16, channels_last, compiled) in levers.items():
        model = build_module(cfg, dm).train()
        if channels_last:
            model.use_channels_last()
        if compiled:
            model.net.compile()
        model.trainer = None
        images = model.normalize(batch["images"])
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = model.encode({**batch, "images": images})
        runs[name] = (model, images, targets, bf16)
    return runs


def bare_step(model: Any, images: torch.Tensor, targets: Any, bf16: bool) -> None:
    """One bare step: the network's forward (under bf16 autocast with ``bf16``), the loss and its backward."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model.net(images)
    model.loss_fn(*out, *targets)["loss"].backward()
    model.zero_grad(set_to_none=True)


def bare_steps(cfg: Any, levers: dict[str, tuple[bool, bool, bool]], *, rounds: int) -> dict[str, float]:
    """Median seconds of forward + loss + backward per lever, the levers interleaved round by round."""
    runs = bare_setups(cfg, levers)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds + 2):  # two warm-up rounds (compilation, allocator)
        for name, run in runs.items():
            t0 = time.perf_counter()
            bare_step(*run)
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


class _StepClock(pl.Callback):
    """Seconds between consecutive training batch ends (the whole pipeline's step)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.ends.append(time.perf_counter())


def pipeline_step(overrides: list[str], *, steps: int) -> float:
    """Median pipeline step seconds of ``trainer.fit`` with ``overrides`` (validation off) in the steady state of
    `make train`: its 1500 training images, the steps of the second epoch (the first renders the images the cache then
    keeps; its end writes last.ckpt, which `make train` does once an epoch too)."""
    import ttfnet_lightning.training.run as run

    cfg = compose(overrides)
    per_epoch = -(-int(cfg.data.datamodule.num_train) // int(cfg.data.datamodule.batch_size))
    skip = per_epoch + 2
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(
            [
                *overrides,
                f"trainer.max_steps={steps + skip + 1}",
                "trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                "logger=csv",
                "analysis=false",
                "callbacks.log_val_images=0",
                "callbacks.checkpoint_every_n_steps=0",
                f"output_dir={out}",
            ]
        )
        build = run.build_callbacks
        run.build_callbacks = lambda c, o: [*build(c, o), clock]
        try:
            run.train(cfg)
        finally:
            run.build_callbacks = build
    gaps = [b - a for a, b in zip(clock.ends[skip:], clock.ends[skip + 1 :])]
    return statistics.median(gaps)


def default_levers(cfg: Any) -> tuple[bool, bool, bool]:
    return (str(cfg.trainer.precision).startswith("bf16"), bool(cfg.speed.channels_last), bool(cfg.speed.compile))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="timed rounds of the bare steps")
    p.add_argument("--steps", type=int, default=24, help="timed pipeline steps")
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile)")
    p.add_argument("--loaders", action="store_true", help="also the pipeline with 0, 1, 2 workers and no cache")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    print(f"machine: {machine()}")
    cfg = compose(MAKE_TRAIN)
    levers = dict(LEVERS)
    if args.compile:
        levers["bf16 + compile"] = (True, False, True)
    levers["default"] = default_levers(cfg)
    print(
        f"default config: precision {cfg.trainer.precision}, channels_last {cfg.speed.channels_last}, compile "
        f"{cfg.speed.compile}, loader workers {cfg.data.datamodule.num_workers}, cache_mb "
        f"{cfg.data.datamodule.get('cache_mb')}"
    )
    bare = bare_steps(cfg, levers, rounds=args.rounds)
    variants = {"default": [], "earlier default": EARLIER}
    if args.loaders:
        variants |= {f"{w} loader workers": [f"data.datamodule.num_workers={w}"] for w in (0, 1, 2)}
        variants["no render cache"] = ["data.datamodule.cache_mb=0"]
    pipe = {name: pipeline_step([*MAKE_TRAIN, *extra], steps=args.steps) for name, extra in variants.items()}
    bare_after = bare_steps(cfg, {k: levers[k] for k in ("fp32 eager", "default")}, rounds=args.rounds)
    for k in bare_after:  # bracket the pipeline runs: the mean of the measurements before and after
        bare[k] = (bare[k] + bare_after[k]) / 2
    ref = bare["fp32 eager"]
    print(f"\nbare step (forward + loss + backward, batch 16, 128 px), median of {args.rounds} interleaved rounds:")
    for name, s in bare.items():
        print(f"  {name:<24} {1000 * s:7.1f} ms  {ref / s:5.2f}x faster than fp32 eager")
    print(f"\npipeline step (trainer.fit, median of {args.steps} steps):")
    for name, s in pipe.items():
        print(f"  {name:<24} {1000 * s:7.1f} ms  {ref / s:5.2f}x faster than the fp32 eager bare step")
    goals = {  # the report's format (benchmarks/report.py): "<what> (goal >= X)"
        "make-train pipeline step speed-up over the fp32 eager bare step (goal >= 2)": ref / pipe["default"],
        "make-train pipeline step / its own bare step (goal <= 1.1)": pipe["default"] / bare["default"],
    }
    info = {"earlier default pipeline step / fp32 eager bare step": pipe["earlier default"] / ref}
    print()
    for k, v in (goals | info).items():
        print(f"  {k}: {v:.2f}")
    if args.json:
        record = {"machine": machine(), "bare_s": bare, "pipeline_s": pipe, "goals": goals, "ratios": info}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
