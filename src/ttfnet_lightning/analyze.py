"""Ambiguous regression samples in a training set (the "Ratio" column of the paper's Tables 2, 3).

    python -m ttfnet_lightning.analyze data=coco data.datamodule.root=/data/coco kernel=rect kernel.beta=0.3
    python -m ttfnet_lightning.analyze kernel=class_aware kernel.wh_gaussian=false kernel.beta=0.5 +cache_dir=.cache

What it does and its options: :mod:`ttfnet_lightning.paper.analyze`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import sys
import tempfile

import hydra
from omegaconf import DictConfig

from ttfnet_lightning.paper.analyze import analyze

_HYDRA_ARGS = [
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra.sweep.subdir=.",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
    "hydra/help=analyze",  # --help: this command's, not train's (whose config it composes)
]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    return analyze(cfg)


def main() -> None:
    given = {a.split("=", 1)[0].lstrip("+~") for a in sys.argv[1:] if "=" in a}
    with tempfile.TemporaryDirectory(prefix="ttfnet-analyze-") as sweep_dir:
        ours = [*_HYDRA_ARGS, f"hydra.sweep.dir={sweep_dir}"]
        sys.argv += [a for a in ours if a.split("=", 1)[0] not in given]
        _hydra_main()


if __name__ == "__main__":
    main()
