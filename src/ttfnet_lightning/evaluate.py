"""Evaluate a checkpoint: COCO AP table and inference speed on this machine.

    python -m ttfnet_lightning.evaluate ckpt=outputs/.../checkpoints/last.ckpt
    python -m ttfnet_lightning.evaluate ckpt=... data=coco data.datamodule.root=/data/coco

What it does and its options: :mod:`ttfnet_lightning.training.evaluate`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ttfnet_lightning.training.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
