"""Where a (re)run into an output folder starts: the run stored there (results, checkpoints) checked against this
run's config and data, the checkpoint to resume from, a finished run skipped, and a checkpoint's module settings
checked against the module this run builds. Used by :func:`~ttfnet_lightning.training.run.train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ttfnet_lightning.training.checkpoints import export_backbone_weights, load_model, module_hparams
from ttfnet_lightning.training.runs import (
    RunMismatchError,
    check_checkpoint_run,
    check_same_config,
    check_same_data,
    checkpoint_candidates,
    checkpoint_run,
    read_data_record,
    resume_checkpoint,
)
from ttfnet_lightning.training.tracking import flatten_dict

__all__ = ["check_checkpoint_module", "check_folder", "resume_point", "skip_finished"]


def check_folder(out: Path, resolved: dict[str, Any], data: dict[str, Any] | None, done: dict[str, Any] | None) -> None:
    """Refuse to resume or skip the run stored in ``out`` (its results or checkpoints) when it has
    another config or other data (:class:`~ttfnet_lightning.training.runs.RunMismatchError`)."""
    if done is not None or checkpoint_candidates(out):
        check_same_config(out, resolved)
        check_same_data(str(out), read_data_record(out, done), data)


def resume_point(
    cfg: DictConfig, out: Path, resolved: dict[str, Any], data: dict[str, Any] | None, rank_zero: bool
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from (``ckpt_path``, else the newest readable one of the folder,
    else None) and what it says about its run, after checking that run's config and data.

    Raises:
        RunMismatchError: the checkpoint's run has another config or other data.
        FileNotFoundError, CheckpointError: ``ckpt_path`` is missing or not a usable checkpoint."""
    explicit = cfg.get("ckpt_path")
    skipped: list[tuple[Path, str]] = []
    ckpt = explicit if explicit else resume_checkpoint(out, skipped)
    if rank_zero:
        for path, why in skipped:
            print(f"not resuming from {path}: {why}", file=sys.stderr, flush=True)
        if skipped and ckpt is None:
            print(f"no readable checkpoint in {out}: training from the start", file=sys.stderr, flush=True)
    if ckpt is None:
        return None, None
    run = checkpoint_run(ckpt, verify=bool(explicit))  # a found one was checked whole already
    check_checkpoint_run(run, resolved, data)
    return Path(ckpt), run


def skip_finished(cfg: DictConfig, out: Path, done: dict[str, Any] | None, rank_zero: bool) -> bool:
    """Whether this run finished earlier and is skipped (``skip_finished``); exports its backbone
    again when that file is missing."""
    if not (cfg.get("skip_finished", True) and done and done.get("status") == "finished"):
        return False
    export_missing = bool(cfg.get("export_backbone")) and not Path(cfg.export_backbone).is_file()
    last_ckpt = out / "checkpoints" / "last.ckpt"
    if export_missing and not last_ckpt.is_file():
        # The run finished, but both its exported backbone and its checkpoint are gone (e.g. a
        # fresh clone: results.json is tracked, weights are not). The export is the point of
        # such a run, so train it again rather than fail or skip.
        if rank_zero:
            print(
                f"\n{out} finished earlier, but {cfg.export_backbone} and {last_ckpt} are both "
                "missing: training it again to re-create the backbone weights"
            )
        return False
    if rank_zero:
        print(f"\nskipping {out}: finished earlier (results.json; skip_finished=false trains again)")
    if export_missing and rank_zero:
        export_backbone_weights(load_model(last_ckpt), cfg.export_backbone)
    return True


# module settings that may differ on resume (where the initial weights came from)
_HPARAMS_FREE = ("net.pretrained", "net.weights")


def check_checkpoint_module(run: dict[str, Any], hparams: dict[str, Any]) -> None:
    """Refuse to resume from a checkpoint whose module settings (network, target kernel, loss,
    optimiser, decoder, classes and input size) differ from the module this run builds.

    Raises:
        RunMismatchError: a setting differs (each named with both values)."""
    stored, now = flatten_dict(run["hparams"]), flatten_dict(module_hparams(hparams))
    diff = sorted(
        k
        for k in set(stored) | set(now)
        if k not in _HPARAMS_FREE and stored.get(k, "<absent>") != now.get(k, "<absent>")
    )
    if diff:
        lines = [f"  {k}: checkpoint {stored.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}" for k in diff[:15]]
        raise RunMismatchError(
            f"{run['where']} holds a model with other settings than this run's:\n"
            + "\n".join(lines)
            + "\nResume it with the settings it was trained with, or start a new run without ckpt_path."
        )
