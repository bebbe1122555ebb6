"""A run's state on disk: which checkpoint a rerun resumes from, whether a stored run may be
resumed or skipped with the current config, the ``metrics.csv`` kept across resumes, and the
final ``results.json``. Plain functions of an output dir (no Trainer needed)."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from ttfnet_lightning.core.atomic import atomic_write
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.fingerprint import datamodule_fingerprint, describe_data
from ttfnet_lightning.training.checkpoints import checkpoint_problem, module_hparams, read_checkpoint
from ttfnet_lightning.training.config import TrainConfig
from ttfnet_lightning.training.records import RESULTS_FILE
from ttfnet_lightning.training.tracking import flatten_dict

log = logging.getLogger(__name__)

__all__ = [
    "resume_checkpoint",
    "checkpoint_candidates",
    "check_same_config",
    "check_same_data",
    "data_record",
    "read_data_record",
    "write_run_record",
    "checkpoint_run",
    "check_checkpoint_run",
    "truncate_metrics",
    "write_results",
    "ResumeMetrics",
    "RunRecord",
    "RunMismatchError",
    "CONFIG_FILE",
    "DATA_FILE",
]

CONFIG_FILE = "config_resolved.yaml"  # a run's resolved config, beside its results
DATA_FILE = "data_fingerprint.json"  # the data it was trained on (data_record)
RUN_KEY = "ttfnet_run"  # the run's config and data record in each of its checkpoints


class RunMismatchError(ValueError):
    """A stored run (an output dir, a checkpoint) has another configuration, model or data than the
    run that would resume or skip it."""


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
        log.info(
            "metrics.csv: dropped %d rows logged after the checkpoint's step %d", len(rows) - len(kept), resume_step
        )
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept)
    atomic_write(path, text.getvalue())


class ResumeMetrics(pl.Callback):
    """On resume, ``metrics.csv`` keeps the rows logged before the checkpoint's step (see
    :func:`truncate_metrics`); the CSV is flushed with every checkpoint."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.is_global_zero:  # under DDP the file is rank 0's
            truncate_metrics(self.out, int(checkpoint.get("global_step", 0)))


def write_results(out: Path, results: dict[str, Any]) -> None:
    """``out/results.json``, atomically and durably (a reader never sees half a file)."""
    atomic_write(out / RESULTS_FILE, json.dumps(results, indent=2, sort_keys=True))


def checkpoint_candidates(out: str | Path) -> list[Path]:
    """The non-empty ``checkpoints/{last,interrupted,latest-step*}.ckpt`` and Lightning's SLURM
    requeue checkpoints ``hpc_ckpt_*.ckpt`` of a run's output dir, newest first (ties: the later
    training step first, by name)."""
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    cands = [
        ckpt_dir / "last.ckpt",
        ckpt_dir / "interrupted.ckpt",
        *ckpt_dir.glob("latest-step*.ckpt"),
        *out.glob("hpc_ckpt_*.ckpt"),
    ]
    cands = [p for p in cands if p.is_file() and p.stat().st_size > 0]
    return sorted(cands, key=lambda p: (p.stat().st_mtime_ns, _step_of(p)), reverse=True)


def _step_of(path: Path) -> int:
    found = re.search(r"(\d+)\.ckpt$", path.name)
    return int(found.group(1)) if found else -1


def resume_checkpoint(out: str | Path, skipped: list[tuple[Path, str]] | None = None) -> Path | None:
    """The newest *readable* of a run's checkpoints (:func:`checkpoint_candidates`): a complete,
    intact ttfnet-lightning checkpoint (:func:`~ttfnet_lightning.training.checkpoints.checkpoint_problem`,
    which reads each candidate once, about 0.05 s per 100 MB). Newer ones that are not (truncated by
    a full disk, corrupted) are passed over with a logged warning and appended, with the reason, to
    ``skipped``; they are left in place.

    After a hard kill the periodic ``latest-step*`` may be newer than the last validation's
    ``last.ckpt``; after Ctrl-C/SIGTERM/a crash ``interrupted.ckpt`` is the newest; after a SLURM
    requeue (SIGUSR1) ``hpc_ckpt_*``."""
    for path in checkpoint_candidates(out):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("not resuming from %s: %s", path, problem)
        if skipped is not None:
            skipped.append((path, problem))
    return None


# keys that may change between a run and its resumption without changing its result
_RESUME_FREE_KEYS = (
    "logger",
    "analysis",  # what is written after training, not how it trains
    "callbacks",
    "trainer.enable_progress_bar",
    "data.datamodule.num_workers",
    "data.datamodule.cache_mb",  # rendered shapes kept in memory: the same samples
    "data.datamodule.root",
    # where the streamed copy of the same data lives (data=coco_stream), not what it is
    "data.datamodule.input_dir",
    "data.datamodule.cache_dir",
    "data.datamodule.storage_options",
    "backbone.weights",
    "pretrained_weights",
    "name",
    "group",
    "tags",
    "project",
    "ckpt_path",
    "skip_finished",
    "output_dir",
    "job_overrides",
    "table.grid",
    "export_backbone",
    # memory format and compilation change float rounding, not the run
    "speed",
    # new key (data order): runs stored before it existed stay resumable/skippable
    "exact_resume",
    # the data preset's LR reference batch: its effect is schedule.reference_batch, compared
    "data.reference_batch",
)


def _schema_defaults() -> dict[str, Any]:
    """Flat ``key: default`` of the typed schema (:class:`ttfnet_lightning.training.config.TrainConfig`)."""

    return flatten_dict(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False))


# ... and those that may change when a checkpoint is resumed explicitly (``ckpt_path=...``): how long
# it trains on and how often it logs (`ckpt_path=... schedule.max_epochs=24` continues a run for more
# epochs, into another output dir); a rerun into a finished run's folder must not report its results
# for a longer schedule, so there they are compared
_CONTINUE_FREE_KEYS = (
    "schedule.max_epochs",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.log_every_n_steps",
)


# settings added after runs were stored, with the value a run stored without them implicitly had
# (runs before data/released_augment.py used torchvision's SSD transforms; before the released DarkNet-53
# options, every backbone had eval-mode frozen BN, PyTorch's init and every bias in the bias group)
_IMPLIED_WHEN_ABSENT = {
    "data.datamodule.augment_style": "torchvision",
    "backbone.frozen_bn": "eval",
    "backbone.init": "pytorch",
    "backbone.norm_groups": "biases",
    "schedule.norm_groups": "biases",
    # the modern training options (issue 24): runs before them had the paper's step LR, no EMA, one input size
    "schedule.lr_policy": "step",
    "schedule.min_lr_ratio": 0.01,
    "schedule.flat_fraction": 0.5,
    "ema.enabled": False,
    "multiscale.scales": "[]",  # (lists compare as their JSON text)
}
# settings that only matter when another one is on: {key: the switch}
_ONLY_WHEN = {
    "data.datamodule.augment_style": "data.datamodule.augment",
    **{f"ema.{k}": "ema.enabled" for k in ("decay", "ramp_steps", "start_step", "every_n_steps")},
}


def _comparable(flat: dict[str, Any], *, stored: bool) -> dict[str, Any]:
    """``flat`` with the implied values of later settings filled in (``stored`` side only) and the
    settings whose switch is off dropped (the augmentation style of a run without augmentation)."""
    out = dict(flat)
    if stored:
        for key, implied in _IMPLIED_WHEN_ABSENT.items():
            out.setdefault(key, implied)
    for key, switch in _ONLY_WHEN.items():
        if not out.get(switch, False):
            out.pop(key, None)
    return out


def _config_diff(stored_cfg: dict[str, Any], resolved: dict[str, Any], also_free: tuple[str, ...] = ()) -> list[str]:
    """``key: stored ..., now ...`` lines of the settings that differ, resume-free keys (and
    ``also_free``) and settings added to the schema later (at their default) aside."""
    stored = _comparable(flatten_dict(stored_cfg), stored=True)
    now = _comparable(flatten_dict(resolved), stored=False)
    free = lambda k: any(k == f or k.startswith(f + ".") for f in (*_RESUME_FREE_KEYS, *also_free))  # noqa: E731
    # a setting added to the schema after the run was stored, at its default, changes nothing
    defaults = _schema_defaults()
    new_at_default = lambda k: k not in stored and k in defaults and now.get(k) == defaults[k]  # noqa: E731
    diff = sorted(
        k
        for k in set(stored) | set(now)
        if not free(k) and not new_at_default(k) and stored.get(k, "<absent>") != now.get(k, "<absent>")
    )
    return [f"  {k}: stored {stored.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}" for k in diff]


def _refuse_if_different(
    where: str, stored_cfg: dict[str, Any], resolved: dict[str, Any], also_free: tuple[str, ...] = ()
) -> None:
    lines = _config_diff(stored_cfg, resolved, also_free)
    if lines:
        raise RunMismatchError(
            f"{where} holds a run with a different configuration, which this run would resume or skip:\n"
            + "\n".join(lines[:15])
            + "\nUse another output_dir (or hydra.sweep.dir=... for a sweep), or delete the old run."
        )


def check_same_config(out: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume or skip a run whose stored ``config_resolved.yaml`` differs from ``resolved``
    (a changed setting must not silently reuse another configuration's checkpoints or results).

    Raises:
        RunMismatchError: a setting differs (each one named with both values)."""
    stored_file = Path(out) / CONFIG_FILE
    if stored_file.is_file():
        _refuse_if_different(str(out), OmegaConf.to_container(OmegaConf.load(stored_file), resolve=True), resolved)


# ------------------------------------------------------------------------- the data a run was trained on
def data_record(datamodule_options: dict[str, Any]) -> dict[str, Any] | None:
    """``{"data": <description>, "fingerprint": {part: digest}}`` of the data module config (see
    :mod:`ttfnet_lightning.data.fingerprint`); None when its class has no fingerprint or the data
    cannot be read now (the data module reports that itself when it is built)."""
    try:
        found = datamodule_fingerprint(datamodule_options)
    except (DataError, OSError) as exc:
        log.info("data fingerprint not computed (%s): the data of a stored run is not compared", exc)
        return None
    return None if found is None else {"data": describe_data(datamodule_options), "fingerprint": found}


def read_data_record(run_dir: Path, results: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The data record stored with a run: ``data_fingerprint.json``, else its ``results.json``'s."""
    try:
        return dict(json.loads((Path(run_dir) / DATA_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = (results or {}).get("data_fingerprint")
    return dict(found) if isinstance(found, dict) else None


def check_same_data(where: str, stored: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
    """Refuse to resume or skip a run stored at ``where`` when the data it was trained on (its
    stored data record) differs from the data the current config reads. Runs stored before data
    fingerprints existed, and parts whose file is missing now, are not compared (logged).

    Raises:
        RunMismatchError: a part's digest differs (the message names the data and both digests)."""
    if now is None:
        return
    if stored is None or not isinstance(stored.get("fingerprint"), dict):
        log.info(
            "%s was stored before data fingerprints were recorded: the data it was trained on is not checked", where
        )
        return
    a, b = stored["fingerprint"], now["fingerprint"]
    unknown = sorted(k for k in set(a) & set(b) if a[k] is None or b[k] is None)
    if unknown:
        log.info("%s: data not compared for %s (a file is missing)", where, ", ".join(unknown))
    diff = [k for k in sorted(set(a) | set(b)) if k not in unknown and a.get(k) != b.get(k)]
    if diff:
        lines = [f"  {k}: stored {a.get(k, '<absent>')}, now {b.get(k, '<absent>')}" for k in diff]
        raise RunMismatchError(
            f"{where} was trained on other data than data.datamodule gives now ({now.get('data')}; stored: "
            f"{stored.get('data')}):\n"
            + "\n".join(lines)
            + "\nPoint data.datamodule at the data this run was trained on, or use another output_dir."
        )


def write_run_record(out: Path, resolved: dict[str, Any], data: dict[str, Any] | None) -> None:
    """``config_resolved.yaml`` and ``data_fingerprint.json`` of a run, atomically (rank 0)."""
    atomic_write(out / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(resolved)))
    if data is not None:
        atomic_write(out / DATA_FILE, json.dumps(data, indent=2, sort_keys=True))


class RunRecord(pl.Callback):
    """Every checkpoint carries the run's resolved config and data record (``ttfnet_run``), so that
    a resume from it (``ckpt_path=...``) is checked like a rerun into its folder."""

    def __init__(self, resolved: dict[str, Any], data: dict[str, Any] | None) -> None:
        self.record = {"config": resolved, "data_fingerprint": data}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_KEY] = self.record


# --------------------------------------------------------------------------------- a checkpoint's run
def checkpoint_run(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """What a checkpoint says about its run: ``config`` and ``data`` (the ones it carries, else those
    stored beside it in its run folder, else None), ``hparams`` (the module's argument groups) and
    ``where`` (for messages). Reads the file safely and, with ``verify``, checks it whole.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`~ttfnet_lightning.training.checkpoints.read_checkpoint`."""
    ckpt = read_checkpoint(path, verify=verify)
    path = Path(path)
    run = ckpt.get(RUN_KEY) if isinstance(ckpt.get(RUN_KEY), dict) else {}
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    config, data = run.get("config"), run.get("data_fingerprint")
    if config is None and (folder / CONFIG_FILE).is_file():
        config = OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE), resolve=True)
    if data is None:
        data = read_data_record(folder)
    return {
        "config": config,
        "data": data,
        "hparams": module_hparams(ckpt.get("hyper_parameters") or {}),
        "where": f"checkpoint {path}",
    }


def check_checkpoint_run(run: dict[str, Any], resolved: dict[str, Any], data: dict[str, Any] | None) -> None:
    """Refuse to resume from a checkpoint (:func:`checkpoint_run`) whose run had another
    configuration or other data than the current one (the checks of a rerun into its folder; the
    length of the schedule and the logging interval may change: ``_CONTINUE_FREE_KEYS``).

    Raises:
        RunMismatchError: see :func:`check_same_config` and :func:`check_same_data`."""
    if run["config"] is not None:
        _refuse_if_different(run["where"], run["config"], resolved, _CONTINUE_FREE_KEYS)
    else:
        log.info(
            "%s carries no config and has no config_resolved.yaml beside it: only its model settings are checked",
            run["where"],
        )
    check_same_data(run["where"], run["data"], data)
