"""A run's record on disk, as every layer above training reads it: where a run writes
(:func:`output_dir`), its final ``results.json`` (:data:`RESULTS_FILE`, :func:`read_results`) and the
directory name of a paper-table job (:func:`job_dirname`, the ``ttf_jobdir`` resolver)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

__all__ = ["RESULTS_FILE", "output_dir", "read_results", "job_dirname", "sqlite_url", "run_folder", "beside_run"]

RESULTS_FILE = "results.json"  # a run's final record, written by train.train


def output_dir(cfg: DictConfig, fallback_parent: str | Path | None = None) -> Path:
    """``cfg.output_dir``, else the Hydra run dir, else ``<fallback_parent>/<time>``
    (``outputs/<name>`` by default)."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    parent = Path(fallback_parent) if fallback_parent is not None else Path("outputs") / str(cfg.name)
    return parent / time.strftime("%Y-%m-%d_%H-%M-%S")


def read_results(out: str | Path) -> dict[str, Any] | None:
    """The ``results.json`` a run left in its output dir (None if there is none or it is unreadable)."""
    try:
        return json.loads((Path(out) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None


def job_dirname(task_overrides: Sequence[str], grid: Any) -> str:
    """A table job's directory name: its values of the grid's keys, sorted, ``k=v`` joined by ``,``
    (``ablation=table1-norm,seed=1``; ``/`` becomes ``-`` so that each job is one directory).

    Used as ``hydra.sweep.subdir: ${ttf_jobdir:${hydra.overrides.task},${table.grid.<protocol>}}``.
    Settings given on the command line for the whole sweep are not part of the name (they would make
    it too long for a file name); ``train`` refuses to resume or skip a job whose stored config
    differs from the current one, so a changed setting cannot silently reuse old results."""
    keys = set(grid or {})
    items = []
    for o in task_overrides:
        k, sep, v = str(o).partition("=")
        if sep and k.lstrip("+~") in keys:
            items.append(f"{k.lstrip('+~')}={v}")
    return ",".join(sorted(items)).replace("/", "-") or "job"


def sqlite_url(path: str) -> str:
    """``sqlite:///<path>``, its folder created (sqlite does not create it, and Optuna opens the
    storage before Hydra creates the sweep dir): ``${ttf_sqlite:${hydra.sweep.dir}/optuna.db}``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).absolute()}"


def run_folder(ckpt: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/checkpoints/x.ckpt``, else the file's folder."""
    path = Path(ckpt)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def beside_run(ckpt: Any, subfolder: str) -> str:
    """``<run folder of ckpt>/<subfolder>``: the ``ttf_beside_run`` resolver
    (``hydra.run.dir: ${ttf_beside_run:${ckpt},evaluate}/${now:...}`` in ``conf/evaluate.yaml``)."""
    return str(run_folder(str(ckpt)) / str(subfolder))
