"""The paper's published numbers (``results.yaml`` beside this module: Tables 1-8)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

__all__ = ["paper_values"]


def paper_values() -> dict[str, Any]:
    """The published numbers (``paper/results.yaml``)."""
    text = resources.files("ttfnet_lightning").joinpath("paper/results.yaml").read_text()
    return yaml.safe_load(text)
