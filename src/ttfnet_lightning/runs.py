"""A run's state on disk: which checkpoint a rerun resumes from, whether a stored run may be
resumed or skipped with the current config, the ``metrics.csv`` kept across resumes, and the
final ``results.json``. Plain functions of an output dir (no Trainer needed)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from .tables import RESULTS_FILE
from .tracking import flatten_dict

log = logging.getLogger(__name__)

__all__ = ["resume_checkpoint", "check_same_config", "truncate_metrics", "write_results", "ResumeMetrics"]


def truncate_metrics(out: Path, resume_step: int | None) -> None:
    """Before training: ``out/metrics.csv`` keeps the rows of logger steps < ``resume_step`` (the
    resumed run logs the later ones again); no resume (None) -> the file is removed."""
    path = out / "metrics.csv"
    if not path.is_file():
        return
    if resume_step is None:
        path.unlink()
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    kept = [r for r in rows if r.get("step") in (None, "") or int(float(r["step"])) < resume_step]
    if len(kept) != len(rows):
        log.info("metrics.csv: dropped %d rows logged after the checkpoint's step %d", len(rows) - len(kept), resume_step)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    tmp.replace(path)


class ResumeMetrics(pl.Callback):
    """On resume, ``metrics.csv`` keeps the rows logged before the checkpoint's step (see
    :func:`truncate_metrics`); the CSV is flushed with every checkpoint."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.is_global_zero:  # under DDP the file is rank 0's
            truncate_metrics(self.out, int(checkpoint.get("global_step", 0)))


def write_results(out: Path, results: dict[str, Any]) -> None:
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    tmp.replace(out / RESULTS_FILE)  # atomic: a reader never sees half a file


def resume_checkpoint(out: str | Path) -> Path | None:
    """The newest of ``checkpoints/{last,interrupted,latest-step*}.ckpt`` and Lightning's SLURM
    requeue checkpoints ``hpc_ckpt_*.ckpt`` in a run's output dir.

    After a hard kill the periodic ``latest-step*`` may be newer than the last validation's
    ``last.ckpt``; after Ctrl-C/SIGTERM/a crash ``interrupted.ckpt`` is the newest; after a SLURM
    requeue (SIGUSR1) ``hpc_ckpt_*``. Ties (same mtime) go to the later training step."""
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    cands = [ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt", *ckpt_dir.glob("latest-step*.ckpt"), *out.glob("hpc_ckpt_*.ckpt")]
    cands = [p for p in cands if p.is_file() and p.stat().st_size > 0]
    return max(cands, key=lambda p: p.stat().st_mtime_ns) if cands else None


# keys that may change between a run and its resumption without changing its result
_RESUME_FREE_KEYS = ("logger", "callbacks", "trainer.enable_progress_bar", "data.datamodule.num_workers", "data.datamodule.root",
                     # where the streamed copy of the same data lives (data=coco_stream), not what it is
                     "data.datamodule.input_dir", "data.datamodule.cache_dir", "data.datamodule.storage_options",
                     "backbone.weights", "pretrained_weights", "name", "group", "tags", "project", "ckpt_path", "skip_finished",
                     "output_dir", "job_overrides", "table.grid", "export_backbone",
                     # memory format and compilation change float rounding, not the run
                     "speed",
                     # new key (data order): runs stored before it existed stay resumable/skippable
                     "exact_resume",
                     # the data preset's LR reference batch: its effect is schedule.reference_batch, compared
                     "data.reference_batch")


def _schema_defaults() -> dict[str, Any]:
    """Flat ``key: default`` of the typed schema (:class:`ttfnet_lightning.config.TrainConfig`)."""
    from .config import TrainConfig

    return flatten_dict(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False))


def check_same_config(out: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume or skip a run whose stored ``config_resolved.yaml`` differs from ``resolved``
    (a changed setting must not silently reuse another configuration's checkpoints or results)."""
    stored_file = out / "config_resolved.yaml"
    if not stored_file.is_file():
        return
    stored = flatten_dict(OmegaConf.to_container(OmegaConf.load(stored_file), resolve=True))
    now = flatten_dict(resolved)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in _RESUME_FREE_KEYS)  # noqa: E731
    # a setting added to the schema after the run was stored, at its default, changes nothing
    defaults = _schema_defaults()
    new_at_default = lambda k: k not in stored and k in defaults and now.get(k) == defaults[k]  # noqa: E731
    diff = sorted(k for k in set(stored) | set(now)
                  if not free(k) and not new_at_default(k) and stored.get(k, "<absent>") != now.get(k, "<absent>"))
    if diff:
        lines = [f"  {k}: stored {stored.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}" for k in diff[:15]]
        raise ValueError(
            f"{out} holds a run with a different configuration, which this run would resume or skip:\n"
            + "\n".join(lines)
            + "\nUse another output_dir (or hydra.sweep.dir=... for a sweep), or delete the old run."
        )
