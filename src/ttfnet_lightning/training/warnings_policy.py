"""The library messages a training run leaves out, each with why it is harmless here.

:func:`library_messages_filtered` is entered by :func:`~ttfnet_lightning.training.run.train` and by
``evaluate`` for the duration of a run (never on import: importing the package changes no filter). It ignores the
warnings of :data:`IGNORED_WARNINGS` and drops Lightning's info messages of
:data:`DROPPED_LIGHTNING_INFO`; everything else still prints.

Fixed at their cause instead (docs/training.md, "Logs in batch jobs"): Lightning's "Total FLOPs: 0"
(:class:`~ttfnet_lightning.training.progress.ParamSummary` leaves the column out), "`weights_only`
was not set" (``train`` passes it when it saves the final model) and "`.fit(ckpt_path=None)` was called
without a model" (:class:`~ttfnet_lightning.training.callbacks.InterruptCheckpoint` is no longer an
``OnExceptionCheckpoint``, whose presence made None mean "last").
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning  # noqa: F401  (on import it points rank_zero.log at its own logger)
from lightning_utilities.core import rank_zero

__all__ = ["IGNORED_WARNINGS", "DROPPED_LIGHTNING_INFO", "library_messages_filtered"]

# (regex matched at the start of the message, category, why it is harmless here)
IGNORED_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        # pytorch_lightning/utilities/_pytree.py (2.6) still uses torch's LeafSpec, which torch 2.10+
        # deprecates; nothing for us to change, and it works until torch removes it (then Lightning must)
        "Lightning's own use of a torch API torch deprecates",
    ),
    (
        r"`ModelCheckpoint\(monitor='val/AP'\)` could not find the monitored key",
        UserWarning,
        # only when max_steps ends training in its first epoch before any validation was set up:
        # Lightning then counts 0 validation batches and tries the best-val/AP checkpoint at the
        # epoch's end; train() validates the final model next and writes last.ckpt (after a
        # validation the same miss raises, so a real missing val/AP is never hidden)
        "max_steps ended training before its first validation; train() validates next",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        UserWarning,
        # the backbone's frozen stages (backbone.frozen_stages: the paper's stem + stage 1) keep their
        # BatchNorm in eval mode on purpose (core/models/base.py, FreezableBackbone.train); they are
        # the modules Lightning finds (15 for R18 with frozen_stages=1)
        "the frozen backbone stages are in eval mode on purpose",
    ),
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        UserWarning,
        # Lightning logs every log_every_n_steps *global* steps (_batches_that_stepped), across
        # epochs: with fewer batches per epoch than that, metrics.csv still gets a row every
        # log_every_n_steps steps; the warning assumes per-epoch counting
        "logging counts global steps, across epochs",
    ),
)

# Lightning's info messages (its rank-zero logger) left out: the start of the message, and why
DROPPED_LIGHTNING_INFO: tuple[tuple[str, str], ...] = (
    # "... cloud logging" (LitLogger) and "... cloud uploads and versioning" (LitModelCheckpoint)
    ("💡 Tip: For seamless cloud", "advertisements for Lightning's hosted logger and model registry"),
    ("Loading `train_dataloader` to estimate number of stepping batches", "internal detail of the LR schedule's setup"),
    ("Trainer already configured with model summary callbacks", "the run adds its own summary (progress.ParamSummary)"),
)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(prefix) for prefix, _ in DROPPED_LIGHTNING_INFO)


@contextmanager
def library_messages_filtered() -> Iterator[None]:
    """Within the block: the warnings of :data:`IGNORED_WARNINGS` ignored, Lightning's info
    messages of :data:`DROPPED_LIGHTNING_INFO` dropped (the filters are restored on exit)."""
    logger = rank_zero.log  # the logger Lightning's rank_zero_info writes to
    drop = _DropInfo()
    with warnings.catch_warnings():
        for pattern, category, _why in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        logger.addFilter(drop)
        try:
            yield
        finally:
            logger.removeFilter(drop)
