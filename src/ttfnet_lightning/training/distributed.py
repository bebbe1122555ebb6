"""The glue that makes a run correct on several processes (Lightning DDP, ``trainer=ddp`` /
``trainer=ddp_cpu``): Lightning does the process launching, gradient all-reduce and SyncBatchNorm;
this module only handles what is ours.

* **Validation counts every image once.** Under DDP, Lightning's ``DistributedSampler`` pads the
  validation set so that every rank gets as many samples as the others (it repeats the first
  samples), and every rank validates its own shard. :class:`ImageMeanAveragePrecision` (the
  ``val/AP*`` metric) keeps each image's id beside its detections and ground truth; after
  torchmetrics gathers the states of all ranks it keeps the first occurrence of each image, which
  for Lightning's unshuffled validation sampler is exactly the single-process order (rank ``r``'s
  ``i``-th sample is image ``r + i * world_size``; the padding comes last). The COCO results JSON is
  gathered to rank 0 the same way (:func:`gather_to_rank_zero`, :func:`dedupe_by_image`).
* **One process writes.** Every rank runs :func:`ttfnet_lightning.training.run.train`; files of the run
  (``metrics.csv`` housekeeping, ``config_resolved.yaml``, ``results.json``) are written by global
  rank 0 only (:func:`launch_rank`, known before the Trainer exists).
* **Signals stop all processes at the same step** (:class:`StopOnSignal`): SIGTERM under DDP and
  submitit's preemption signal end training at a batch boundary with ``interrupted.ckpt`` (exit
  status 143, or submitit's requeue), and the rerun or requeued job resumes.
* **DDP inside Hydra sweeps.** Lightning starts the other ranks of a single-node ``ddp`` run by
  running the command line again (``sys.argv``); in a multirun job (``-m``, a table sweep, the
  Optuna search, the submitit launchers) that command is the whole sweep, or submitit's job runner.
  :func:`hydra_ddp_child_command` gives the job's own command instead (its overrides, its output
  dir, run mode), installed by :func:`patch_lightning_hydra_command` for the duration of a run;
  :func:`ddp_run_scope` ends the job's process group, so the sweep's next job starts its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

log = logging.getLogger(__name__)

__all__ = [
    "ImageMeanAveragePrecision",
    "StopOnSignal",
    "launch_rank",
    "is_launch_rank_zero",
    "gather_to_rank_zero",
    "dedupe_by_image",
    "hydra_ddp_child_command",
    "patch_lightning_hydra_command",
    "ddp_run_scope",
]


# -------------------------------------------------------------------------------- validation metric
class ImageMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' COCO mAP that counts each image once when its states are gathered from several
    processes (DDP): ``update(preds, target, image_ids=...)`` records the images' ids; after the
    cross-rank sync, repeated images (the distributed sampler's padding) are dropped, keeping each
    image's first occurrence. On one process nothing changes (no sync, no dedupe); images without an
    id (``image_ids=None``: id -1) are always kept."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("image_ids", default=[], dist_reduce_fx=None)

    def update(
        self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]], image_ids: Sequence[int] | None = None
    ) -> None:  # type: ignore[override]
        super().update(preds, target)
        ids = [-1] * len(preds) if image_ids is None else [int(i) for i in image_ids]
        if len(ids) != len(preds):
            raise ValueError(f"{len(ids)} image ids for {len(preds)} images")
        device = self.detection_labels[-1].device if self.detection_labels else None
        self.image_ids.extend(torch.tensor([i], dtype=torch.long, device=device) for i in ids)

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        super()._sync_dist(dist_sync_fn=dist_sync_fn, process_group=process_group)
        ids = [int(t.reshape(-1)[0]) for t in self.image_ids]
        seen: set[int] = set()
        keep = []
        for i in ids:
            keep.append(i < 0 or i not in seen)
            if i >= 0:
                seen.add(i)
        if all(keep):
            return
        n = len(ids)
        for attr in self._reductions:
            value = getattr(self, attr)
            if isinstance(value, list) and len(value) == n:  # one entry per image (masks: empty for boxes)
                setattr(self, attr, [v for v, k in zip(value, keep) if k])
        log.debug("validation metric: %d repeated images (distributed sampler padding) dropped", keep.count(False))


# ------------------------------------------------------------------------- SIGTERM, preemption
def _submitit_preemption_signal() -> int | None:
    """The signal with which submitit announces a preemption or the time limit (SIGUSR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise) when this process runs a submitit job, else None."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return None
    try:
        from submitit.core.job_environment import JobEnvironment
    except ImportError:
        return None
    return int(JobEnvironment._usr_sig())


class StopOnSignal(Callback):
    """Stops training cleanly, at the end of a batch, on SIGTERM under DDP and on submitit's
    preemption signal; on one process without submitit it does nothing (Lightning's own SIGTERM
    handling applies).

    * **SIGTERM under DDP**: every process stops after the same batch, writes ``interrupted.ckpt``
      with the others and exits with status 143, as a single process does. Lightning's own handler
      broadcasts from inside the signal handler and checks each process's own flag at the end of a
      step; the signal reaches the processes at different moments (SLURM signals each task,
      Lightning's launcher forwards it to its children), and they stopped at different steps or
      deadlocked in a collective (seen with 2 CPU processes).
    * **Preemption / time limit under submitit** (``hydra/launcher=slurm|submitit_local``): submitit's
      handler requeues the job and raises ``SystemExit`` at once, in the middle of a training step,
      so the interruption checkpoint held a half-done step (the resumed run's ``metrics.csv`` missed
      that step's row). The signal is noted instead; training stops at the end of the batch like on
      SIGTERM (``interrupted.ckpt``), and then :meth:`requeue` hands over to submitit, which
      requeues the job (rank 0) and exits; the requeued job resumes from that checkpoint.

    From the start of training the handlers only note the signal; at the start of every training
    batch (and validation batch during ``fit``) the processes agree on it (all-reduce max under DDP)
    and set Lightning's flag together, which stops them at that batch's end (a
    ``SIGTERMException``). Lightning restores the previous handlers at teardown."""

    SIGTERM, PREEMPTED = 1, 2

    def __init__(self) -> None:
        self.pending = 0
        self.stopped = 0  # what stopped training: SIGTERM or PREEMPTED (0: nothing)
        self.distributed = False
        self.active = False
        self._submitit: tuple[int, Any] | None = None  # (signal, submitit's handler)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pending = self.stopped = 0
        if sys.platform == "win32":
            return
        self.distributed = (
            int(trainer.world_size) > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        )
        if self.distributed:
            signal.signal(signal.SIGTERM, self._note)
            self.active = True
        sig = _submitit_preemption_signal()
        handler = signal.getsignal(sig) if sig is not None else None
        if sig is not None and callable(handler) and "submitit" in str(getattr(handler, "__module__", "")):
            self._submitit = (sig, handler)
            signal.signal(sig, self._note)
            self.active = True

    def _note(self, signum: int, frame: Any) -> None:
        preempted = self._submitit is not None and signum == self._submitit[0]
        self.pending = max(self.pending, self.PREEMPTED if preempted else self.SIGTERM)

    def _agree(self, trainer: pl.Trainer) -> None:
        if not self.active:
            return
        code = self.pending
        if self.distributed:
            flag = torch.tensor([code], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            code = int(flag.item())
        if code:
            self.stopped = code
            log.info("%s: stopping after this batch", "preemption signal" if code == self.PREEMPTED else "SIGTERM")
            trainer._signal_connector.received_sigterm = True  # Lightning's flag: it stops at this batch's end

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._agree(trainer)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._agree(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.active = False

    def requeue(self) -> None:
        """After training stopped on submitit's preemption signal (and ``interrupted.ckpt`` is
        written): submitit's own handler, which requeues the job on rank 0 and exits."""
        if self.stopped == self.PREEMPTED and self._submitit is not None:
            sig, handler = self._submitit
            signal.signal(sig, handler)
            handler(sig, None)


# ------------------------------------------------------------------------------------- ranks
def launch_rank() -> int:
    """This process's global rank as its launcher set it (before any Trainer exists): ``RANK``
    (torchrun), else ``SLURM_PROCID`` (srun), else ``NODE_RANK`` x devices + ``LOCAL_RANK``
    (Lightning's own launcher; its main process has no ``LOCAL_RANK`` and is local rank 0)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or local + 1  # only zero / non-zero matters here
    return node * per_node + local


def is_launch_rank_zero() -> bool:
    return launch_rank() == 0


def _distributed(trainer: Any) -> bool:
    return (
        int(getattr(trainer, "world_size", 1)) > 1
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


def gather_to_rank_zero(trainer: Any, obj: Any) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on global rank 0, None on the other ranks (a
    collective: every rank calls it); ``[obj]`` on a single process."""
    if not _distributed(trainer):
        return [obj]
    world = torch.distributed.get_world_size()
    out: list[Any] | None = [None] * world if trainer.global_rank == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def dedupe_by_image(per_rank: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """COCO results (``{"image_id", ...}`` per detection) of several ranks as one list in which each
    image's detections come from one rank only: the first rank that saw the image (a padded
    validation shard repeats images of another rank)."""
    owner: dict[Any, int] = {}
    out: list[dict[str, Any]] = []
    for rank, results in enumerate(per_rank):
        for r in results:
            if owner.setdefault(r["image_id"], rank) == rank:
                out.append(r)
    return out


# --------------------------------------------------------------------- DDP inside Hydra sweeps
def hydra_ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts local rank ``local_rank`` of this Hydra job, and its working dir:
    ``python -m ttfnet_lightning.train <the job's overrides> hydra.run.dir=<the job's dir>`` in run
    mode (never the sweep's command line), the replacement of Lightning's ``_hydra_subprocess_cmd``
    (which re-runs ``sys.argv``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    job_dir = hc.runtime.output_dir
    command = [sys.executable, "-m", "ttfnet_lightning.train", *hc.overrides.task]
    if hc.job.config_name and hc.job.config_name != "train":
        command += ["--config-name", str(hc.job.config_name)]
    for source in hc.runtime.config_sources:  # the parent's --config-dir
        if source.provider == "command-line":
            command.append(f"hydra.searchpath=[{source.schema}://{source.path}]")
    # run mode (a table or search config may set hydra.mode: MULTIRUN), the job's own dir
    command += [
        "hydra.mode=RUN",
        f'hydra.run.dir="{job_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


@contextlib.contextmanager
def patch_lightning_hydra_command() -> Iterator[None]:
    """While in this context, Lightning's single-node ``ddp`` launcher starts the other ranks of a
    Hydra job with :func:`hydra_ddp_child_command` when the job is part of a multirun (or runs
    under a submitit launcher), where re-running ``sys.argv`` would start the sweep again."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or (HydraConfig.get().mode != RunMode.MULTIRUN and _main_is_train()):
        yield
        return
    from pytorch_lightning.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = hydra_ddp_child_command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original


def _main_is_train() -> bool:
    """Whether this process was started as the training command (whose ``sys.argv`` Lightning may
    run again), not e.g. as a submitit job."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        return spec.name == "ttfnet_lightning.train"
    return os.path.basename(sys.argv[0]) in ("ttfnet-train", "train.py")


# what Lightning's launcher sets in this process's environment for its children
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


@contextlib.contextmanager
def ddp_run_scope() -> Iterator[None]:
    """One training run's process-group lifetime: afterwards the process group is destroyed and the
    launcher's environment variables and torch's thread count are as before, so that the next job
    of a sweep in the same process (Hydra's basic launcher) starts its own processes on a fresh
    port instead of reusing the finished job's group (Lightning destroys it only at exit)."""
    saved_env = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(threads)
