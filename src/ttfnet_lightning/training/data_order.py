"""A reproducible, resumable training data order (``exact_resume=true``): the order and one augmentation
seed per sample drawn from ``(seed, epoch)``, and a mid-epoch resume that continues with the next batch
(:class:`DataOrder`, :class:`EpochSampler`, :class:`SeededSamples`)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)

__all__ = ["EpochSampler", "SeededSamples", "DataOrder"]


class SeededSamples(Dataset):
    """A training data set whose item ``(index, seed)`` is ``dataset[index]`` computed with torch's
    RNG seeded by ``seed`` (and restored afterwards): random augmentations (flips, crops,
    photometric changes) then depend on the sample's place in the data order alone, not on the
    process, the worker or what ran before -- the same after a resume and with any worker count."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """Training order of epoch ``e``: a permutation and one augmentation seed per position, drawn
    from ``(seed, e)`` alone, so they are the same in every run with this seed and after any
    resume; yields ``(index, augmentation seed)`` for :class:`SeededSamples`. ``skip`` leaves out
    the first samples of the next iteration (a mid-epoch resume continues with the batch after the
    last trained one). Set up by :class:`DataOrder`.

    Under DDP (``world_size`` > 1, ``batch_size`` B per process) the one global order is cut into
    steps of ``B x world_size`` positions, and rank ``r`` takes the ``r``-th block of ``B`` of each:
    a step's batches are then exactly the micro-batches of one process with
    ``accumulate_grad_batches=world_size`` (and together one batch of ``B x world_size``). The order
    is cut to whole steps (``drop_last``) or padded with its first samples (else), so every rank has
    the same number of batches; ``skip`` counts global positions. A ``DistributedSampler`` itself, so
    that Lightning does not shard it again."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            range(int(num_samples)), num_replicas=int(world_size), rank=int(rank), shuffle=False, drop_last=False
        )
        self.size = int(num_samples)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.cut = bool(drop_last)
        self.epoch = 0
        self.skip = 0  # global positions to leave out at the next __iter__

    def set_epoch(self, epoch: int) -> None:  # called by Lightning before each epoch
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        perm = torch.randperm(self.size, generator=gen).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=gen).tolist()
        return list(zip(perm, seeds))

    def _global_size(self) -> int:
        step = self.batch_size * self.num_replicas
        return (self.size // step if self.cut else -(-self.size // step)) * step

    def __iter__(self):
        skip, self.skip = self.skip, 0
        order = self.order(self.epoch)
        if self.num_replicas == 1:
            return iter(order[skip:])
        total, B, step = self._global_size(), self.batch_size, self.batch_size * self.num_replicas
        while len(order) < total:  # padded with the first samples, as DistributedSampler pads
            order += order[: total - len(order)]
        order = order[:total]
        return iter(
            [
                order[i]
                for start in range(skip, total, step)
                for i in range(start + self.rank * B, start + (self.rank + 1) * B)
            ]
        )

    def __len__(self) -> int:
        # per rank; the whole epoch, also when skipping
        return self.size if self.num_replicas == 1 else self._global_size() // self.num_replicas


class DataOrder(Callback):
    """Reproducible, exactly resumable training data order (config ``exact_resume: true``).

    :meth:`wrap` replaces the data module's shuffled training loader by the same loader over an
    :class:`EpochSampler`. Checkpoints store the epoch and the number of batches trained in it
    (Lightning restarts a mid-epoch resume's loader from its beginning); on resume the sampler
    starts at that epoch and skips those batches, and the first batch after the resume is checked
    to be the one Lightning expects (an error, never a silently different order). The model has no
    dropout, the shapes data are rendered from ``(seed, index)``, and random augmentations (the
    training flip included) are seeded per sample from the same order (:class:`SeededSamples`), so a
    resumed run trains on exactly the batches of an uninterrupted one, with any worker count."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.rank, self.world_size = 0, 1  # this process's shard under DDP (from the trainer, in setup)
        self.sampler: EpochSampler | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches) from a loaded checkpoint
        self._check: tuple[int, int] | None = None

    def wrap(self, dm: pl.LightningDataModule) -> None:
        make = dm.train_dataloader

        def train_dataloader() -> DataLoader:
            dl = make()
            self.sampler = EpochSampler(
                len(dl.dataset),
                self.seed,
                rank=self.rank,
                world_size=self.world_size,
                batch_size=int(dl.batch_size),
                drop_last=bool(dl.drop_last),
            )
            if self._resume_at is not None:
                epoch, batches = self._resume_at
                self.sampler.set_epoch(epoch)
                self.sampler.skip = batches * int(dl.batch_size) * self.world_size
                self._check, self._resume_at = (epoch, batches), None
            return DataLoader(
                SeededSamples(dl.dataset),
                batch_size=dl.batch_size,
                sampler=self.sampler,
                drop_last=dl.drop_last,
                num_workers=dl.num_workers,
                collate_fn=dl.collate_fn,
                pin_memory=dl.pin_memory,
                persistent_workers=dl.persistent_workers,
                worker_init_fn=dl.worker_init_fn,
            )

        dm.train_dataloader = train_dataloader  # type: ignore[method-assign]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.rank, self.world_size = int(trainer.global_rank), int(trainer.world_size)

    def state_dict(self) -> dict[str, Any]:
        return {}  # the position is written by on_save_checkpoint, which sees the trainer

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        epoch = int(trainer.current_epoch)
        if done >= trainer.num_training_batches:  # the epoch's batches are all trained
            epoch, done = epoch + 1, 0
        checkpoint["ttfnet_data_order"] = {"epoch": epoch, "batches": done, "seed": self.seed}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("ttfnet_data_order")
        if state is None:
            log.warning("checkpoint has no data-order state (older version): the resumed epoch restarts its order")
            return
        if int(state["seed"]) != self.seed:
            raise ValueError(f"checkpoint data order was seeded with {state['seed']}, this run with seed {self.seed}")
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._check is None:
            return
        expected, self._check = self._check, None
        if (trainer.current_epoch, batch_idx) != expected:
            raise RuntimeError(
                f"exact resume: the data order was positioned at epoch {expected[0]}, batch {expected[1]}, but "
                "Lightning "
                f"resumed at epoch {trainer.current_epoch}, batch {batch_idx}; set exact_resume=false to resume anyway"
            )
