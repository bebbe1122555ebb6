"""Loading trained checkpoints outside of training (evaluation, prediction, notebooks), and the
checkpoint writer used in training (a failed write stops the run)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .lit_module import TTFNetModule

__all__ = ["load_model", "pick_device", "CheckpointWriteError", "StrictCheckpointIO", "export_backbone_weights"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the run must not go on as if it had been)."""


class StrictCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, except that a failing write raises. (Lightning's atomic save
    swallows a ``PermissionError``: the run went on, saved nothing and printed the paths anyway.)
    Local files are written to ``<name>.tmp`` and renamed, so a reader never sees half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote file systems: Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: write errors are then plain OSErrors
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise CheckpointWriteError(f"could not write checkpoint {path}: {exc}") from exc


# what torch.load raises for a file that is not a (complete) PyTorch checkpoint
_UNREADABLE = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, ValueError)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TTFNetModule:
    """``TTFNetModule`` from a Lightning checkpoint, in eval mode, with a clear error for a bad path
    or file (missing, empty, truncated, not a checkpoint, not of this project).

    No Hydra needed: the checkpoint holds plain hyper-parameters and the module builds its
    network from them (pretrained downloads are switched off: the weights are in the checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is an empty file (0 bytes): an interrupted copy or write? Use another checkpoint")
    try:
        model = TTFNetModule.load_from_checkpoint(str(path), map_location="cpu", pretrained=False, weights=None)
    except Exception as exc:
        # random or truncated bytes make the unpickler fail in many ways (UnpicklingError, EOFError,
        # IndexError from its stack, ...): a file that is not a torch zip archive, or that torch could
        # not read, is "unreadable"; a readable file that does not build this module is "not ours"
        if isinstance(exc, _UNREADABLE) or not zipfile.is_zipfile(path):
            raise ValueError(
                f"checkpoint {path} ({path.stat().st_size} bytes) is not a readable PyTorch checkpoint (truncated or "
                f"corrupted file?): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        raise ValueError(f"{path} is not a ttfnet-lightning TTFNetModule checkpoint: {type(exc).__name__}: {exc}") from exc
    return model.to(device).eval()


def export_backbone_weights(model: TTFNetModule, path: str | Path) -> Path:
    """Write the network's backbone as a state dict loadable with ``backbone.weights=PATH``
    (torchvision key names for ResNets, the module's own names for DarkNet-53)."""
    backbone = model.net.backbone
    module = getattr(backbone, "net", backbone)  # ResNetBackbone wraps a torchvision ResNet
    state = {k: v.detach().cpu() for k, v in module.state_dict().items() if not k.startswith("fc.")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path
