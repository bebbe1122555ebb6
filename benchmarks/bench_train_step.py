"""Where a real training step's time goes (profiling.StepTimer on the training pipeline: data
loader with its default workers, transfer, target encoding, forward, backward, optimizer), for
TTFNet-R18 at 512 px batch 16 and at the ``make train`` setting (128 px, batch 16).

Goals (issue 10): target encoding <= 3 % of a training step, data wait <= 5 % with the default
workers.

    python benchmarks/bench_train_step.py [--steps 8] [--skip 2] [--only make-train|512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

SETTINGS = {
    "make-train": ["backbone=r18", "schedule=fast"],  # the built-in data at 128 px, batch 16, 2 workers
    "512": ["backbone=r18", "schedule=fast", "data.datamodule.input_size=[512,512]", "data.datamodule.num_train=512"],
}


def profile(overrides: list[str], *, steps: int, skip: int) -> dict[str, dict[str, float]]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import ttfnet_lightning.training.run as train_mod
    from ttfnet_lightning.conf import conf_dir
    from ttfnet_lightning.training.profiling import StepTimer

    timer = StepTimer(skip=skip, log_metrics=False)
    with tempfile.TemporaryDirectory() as out:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(
                "train",
                [
                    *overrides,
                    f"trainer.max_steps={steps + skip}",
                    "trainer.limit_val_batches=0",
                    "trainer.num_sanity_val_steps=0",
                    "logger=csv",
                    "callbacks.log_val_images=0",
                    "callbacks.checkpoint_every_n_steps=0",
                    "trainer.enable_progress_bar=false",
                    f"output_dir={out}",
                ],
            )
        build = train_mod.build_callbacks
        train_mod.build_callbacks = lambda c, o: [*build(c, o), timer]
        try:
            train_mod.train(cfg)
        finally:
            train_mod.build_callbacks = build
    return timer.summary()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out")
    p.add_argument("--only", choices=sorted(SETTINGS), default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    print(f"machine: {machine()}")
    report = {}
    for name, overrides in SETTINGS.items():
        if args.only and name != args.only:
            continue
        summary = profile(overrides, steps=args.steps, skip=args.skip)
        report[name] = summary
        print(
            f"\nTTFNet-R18 training step, setting {name!r} ({' '.join(overrides)}), mean of {args.steps} steps after "
            f"{args.skip}:"
        )
        for phase, v in summary.items():
            print(f"  {phase:<16} {v['ms']:9.1f} ms  {100 * v['share']:5.1f} %")
        print(
            f"  goals: target encoding {100 * summary['target_encoding']['share']:.2f} % (<= 3 %), "
            f"data wait {100 * summary['data_wait']['share']:.2f} % (<= 5 %)"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "settings": report}, indent=2))


if __name__ == "__main__":
    main()
