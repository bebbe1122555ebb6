"""Run a trained model on images: draw the boxes and write COCO-format results.

    python -m ttfnet_lightning.predict ckpt=PATH input=IMAGE_OR_DIR output=DIR

What it does and its options: :mod:`ttfnet_lightning.deploy.predict`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ttfnet_lightning.deploy.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
