"""Shared test setup: W&B never asks for an API key; paths to the read-only shared data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# the data pre-flight check's cache (data/check.py): a temporary folder, not the user's ~/.cache
os.environ.setdefault("TTFNET_LIGHTNING_CACHE", tempfile.mkdtemp(prefix="ttfnet-test-cache-"))

REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """Environment for a training run started as a subprocess: offline W&B, full Hydra errors,
    and this checkout's ``src`` importable (also when the package is not installed)."""
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    return os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": path, "HYDRA_FULL_ERROR": "1"}


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (CI clones with shared/ beside it)."""
    for cand in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if cand.is_dir():
            return cand
    return REPO.parent / "shared" / "data"


@pytest.fixture
def coco_mini() -> Path:
    root = shared_data_dir() / "coco-mini"
    if not (root / "annotations").is_dir():
        pytest.skip(f"real COCO subset not found at {root}")
    return root


@pytest.fixture
def raccoon() -> Path:
    root = shared_data_dir() / "raccoon"
    if not (root / "Annotations").is_dir():
        pytest.skip(f"raccoon VOC data not found at {root}")
    return root


from ttfnet_lightning.conf import conf_dir  # noqa: E402  (importing the package registers the config schema)

CONF_DIR = conf_dir()  # the installed package's configs


def compose(config_name: str = "train", overrides: list[str] | None = None):
    """A Hydra config composed from the package's conf/ (no @hydra.main, no chdir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


# a training run small enough for a test: 64 px built-in data, a few steps, CSV only
TINY_TRAIN = [
    "data.datamodule.input_size=[64,64]",
    "data.datamodule.num_train=16",
    "data.datamodule.num_val=8",
    "data.datamodule.batch_size=8",
    "data.datamodule.num_workers=0",
    "schedule.max_epochs=2",
    "schedule.warmup_steps=2",
    "schedule.milestones=[1]",
    "trainer=cpu",
    # the same arithmetic on every CI machine (the default is bf16-mixed only on CPUs with native bf16:
    # tests/training/test_precision.py trains that way)
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "callbacks.log_val_images=0",
    "analysis=false",  # results.png + error analysis at the end: tested in tests/training/test_run_figures.py
]


def offline_run_bytes(run_dir: Path, keys, timeout: float = 60.0) -> bytes:
    """The offline run's ``*.wandb`` records, once they hold every key of ``keys`` (or after
    ``timeout`` s): wandb-core appends them asynchronously, on a loaded machine seconds after
    ``wandb.finish()`` returned."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        data = b"".join(p.read_bytes() for p in run_dir.glob("*.wandb"))
        if all(k in data for k in keys) or time.monotonic() > deadline:
            return data
        time.sleep(0.5)
