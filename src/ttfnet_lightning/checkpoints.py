"""Loading trained checkpoints outside of training (evaluation, prediction, notebooks)."""

from __future__ import annotations

from pathlib import Path

import torch

from .lit_module import TTFNetModule

__all__ = ["load_model", "pick_device"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TTFNetModule:
    """``TTFNetModule`` from a Lightning checkpoint, in eval mode, with a clear error for a bad path.

    No Hydra needed: the checkpoint holds plain hyper-parameters and the module builds its
    network from them (pretrained downloads are switched off: the weights are in the checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        model = TTFNetModule.load_from_checkpoint(str(path), map_location="cpu", pretrained=False, weights=None)
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ValueError(f"{path} is not a ttfnet-lightning TTFNetModule checkpoint: {exc}") from exc
    return model.to(device).eval()
