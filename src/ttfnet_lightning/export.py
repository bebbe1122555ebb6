"""Export a trained TTFNet for deployment: normalisation, network **and decoder** in one graph.

    python -m ttfnet_lightning.export ckpt=PATH output=model.onnx            # ONNX (default)
    python -m ttfnet_lightning.export ckpt=PATH output=model.pt2 format=pt2           # torch.export
    python -m ttfnet_lightning.export ckpt=PATH output=model.pt format=torchscript   # torch.jit.trace

What it does and its options: :mod:`ttfnet_lightning.deploy.export`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ttfnet_lightning.deploy.export import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
