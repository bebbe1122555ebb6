"""Convert released TTFNet weights (ZJULearning/ttfnet, mmdetection 1.x) into a ttfnet-lightning checkpoint.

    python -m ttfnet_lightning.convert input=ttfnet18_2x.pth output=ttfnet18_2x.ckpt
    python -m ttfnet_lightning.convert input=ttfnet53_2x.pth output=ttfnet53_2x.ckpt backbone=d53

What it does and its options: :mod:`ttfnet_lightning.deploy.convert`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ttfnet_lightning.deploy.convert import convert


@hydra.main(version_base="1.3", config_path="conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    convert(cfg)


if __name__ == "__main__":
    main()
