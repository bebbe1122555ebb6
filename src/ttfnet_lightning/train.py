"""Training entry point.

    python -m ttfnet_lightning.train backbone=r18 schedule=fast            # built-in data
    python -m ttfnet_lightning.train data=coco data.datamodule.root=/data/coco
    python -m ttfnet_lightning.train -m kernel.beta=0.1,0.54 schedule.lr=0.008,0.016

What it does and its options: :mod:`ttfnet_lightning.training.run`.
"""

# The command line (a thin wrapper); this module is imported by nothing.
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from ttfnet_lightning.training.records import output_dir
from ttfnet_lightning.training.run import train
from ttfnet_lightning.training.run_lock import RunLockedError
from ttfnet_lightning.training.runs import RunMismatchError, write_results
from ttfnet_lightning.training.tracking import job_overrides

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except Exception as exc:
        # a failed job of a paper-table sweep is marked in its results.json (the table shows
        # "failed"; a rerun tries it again); Hydra goes on with the other jobs and reports it
        # (not when the folder holds another run, or another process is training into it)
        if cfg.get("table") is not None and not isinstance(exc, (RunLockedError, RunMismatchError)):
            out = output_dir(cfg)
            if out.is_dir():
                write_results(
                    out, {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "overrides": job_overrides(cfg)}
                )
                # said now: Hydra reports a sweep's failed jobs only once the whole sweep is over
                log.error(f"job failed, marked in {out / 'results.json'}: {type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()
