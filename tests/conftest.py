"""Shared test setup: W&B never asks for an API key; paths to the read-only shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

REPO = Path(__file__).resolve().parents[1]


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
