"""Hydra configs of ttfnet-lightning (``conf/**/*.yaml``; a package so that the console scripts find them as
``pkg://ttfnet_lightning.conf``) and where they are (:func:`conf_dir`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["conf_dir"]


def conf_dir() -> Path:
    """The folder of the installed package's configs (what ``@hydra.main(config_path="conf")`` reads)."""
    return Path(str(resources.files("ttfnet_lightning").joinpath("conf")))
