"""Reading and writing checkpoints: the one safe reader of checkpoint files (:func:`read_checkpoint`:
``weights_only=True`` always, a clear error for every kind of wrong file), loading a trained model
outside of training (:func:`load_model`), and the checkpoint writer used in training (atomic and
durable; a failed write stops the run)."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ttfnet_lightning.core.atomic import atomic_write
from ttfnet_lightning.training.detector_module import DetectorModule
from ttfnet_lightning.training.lit_module import GROUPS, TTFNetModule, _grouped
from ttfnet_lightning.training.peer_module import PeerDetectorModule, is_peer_hparams, peer_hparams

__all__ = [
    "load_model",
    "pick_device",
    "CheckpointError",
    "CheckpointWriteError",
    "StrictCheckpointIO",
    "export_backbone_weights",
    "read_checkpoint",
    "checkpoint_problem",
    "module_hparams",
]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class CheckpointError(ValueError):
    """A file given or found as a checkpoint is empty, unreadable, damaged, unsafe, or not a
    ttfnet-lightning training checkpoint (the message names the file and what it is)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the run must not go on as if it had been)."""


def _serialised(obj: Any) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise first: write errors are then plain OSErrors
    return buffer.getbuffer()


class StrictCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, except that a failing write raises (Lightning's atomic save
    swallows a ``PermissionError``: the run went on, saved nothing and printed the paths anyway),
    local files are written atomically and durably (:func:`~ttfnet_lightning.core.atomic.atomic_write`),
    and every load is ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote file systems: Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        data = _serialised(checkpoint)
        try:
            atomic_write(Path(path), data)
        except OSError as exc:
            raise CheckpointWriteError(f"could not write checkpoint {path}: {exc}") from exc

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(
            path, map_location=map_location or (lambda storage, loc: storage), weights_only=True
        )


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message, unless it is torch's weights-only advice."""
    text = str(exc).splitlines()[0].split(". ")[0] if str(exc) else ""
    return "" if "weights_only" in str(exc) or "Weights only" in text else text


def _unsafe_global(exc: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else "an object the safe loader does not allow"


def _load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped for a zip archive: the
    tensors' bytes are not read), every failure as a CheckpointError."""
    size = path.stat().st_size
    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:
        # random or truncated bytes make the unpickler fail in many ways (UnpicklingError, EOFError,
        # IndexError from its stack, RuntimeError from the zip reader, ...)
        if is_zip and isinstance(exc, pickle.UnpicklingError) and "Weights only" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain values ({_unsafe_global(exc)}), "
                "which are never loaded (unpickling them can run code): it is not a ttfnet-lightning checkpoint"
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is not a readable PyTorch checkpoint (truncated or corrupted file?): "
            + ": ".join(filter(None, (type(exc).__name__, _first_line(exc))))
        ) from exc


def _verify(path: Path) -> None:
    """Check every record of the zip archive against its stored CRC-32 (reads the whole file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {type(exc).__name__}: {exc}") from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its record {bad} fails its CRC check (corrupted bytes)")


def _keys(d: Mapping[Any, Any], n: int = 4) -> str:
    keys = [str(k) for k in list(d)[:n]]
    return ", ".join(keys) + (", ..." if len(d) > n else "")


def _what_else(path: Path, obj: Any) -> str | None:
    """Why ``obj`` (loaded from ``path``) is not a ttfnet-lightning training checkpoint; None if it is."""
    hint = f"backbone weights are given as backbone.weights={path}; ckpt_path takes the .ckpt files a training writes"
    not_ours = f"checkpoint {path} is not a ttfnet-lightning training checkpoint but"
    other_model = f"checkpoint {path} is a Lightning checkpoint of another model"
    if not isinstance(obj, Mapping):
        return f"{not_ours} a {type(obj).__name__}"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return f"{not_ours} a plain state dict of {len(obj)} tensors (keys {_keys(obj)}): {hint}"
    if "state_dict" not in obj or "pytorch-lightning_version" not in obj:
        return f"{not_ours} a dict with keys {_keys(obj, 6)} (not a Lightning checkpoint): {hint}"
    hp, state = obj.get("hyper_parameters") or {}, obj.get("state_dict") or {}
    try:
        module_hparams(hp)
    except (TypeError, ValueError) as exc:
        return f"{other_model} (hyper-parameters {_keys(hp, 6)}; {exc}), not of ttfnet-lightning"
    if not any(str(k).startswith("net.") for k in state):
        return f"{other_model} (state dict keys {_keys(state)}), not of ttfnet-lightning"
    return None


def module_hparams(hparams: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A checkpoint's ``hyper_parameters`` as the module's checked argument groups: TTFNetModule's (grouped
    ones and the flat ones of older releases) or, when they have a ``peer`` group, PeerDetectorModule's.
    Raises TypeError/ValueError when they are neither."""
    if not isinstance(hparams, Mapping) or not hparams:
        raise ValueError("no hyper-parameters")
    if is_peer_hparams(hparams):
        return peer_hparams(hparams)
    return _grouped({g: hparams.get(g) for g in GROUPS}, {k: v for k, v in hparams.items() if k not in GROUPS})


def read_checkpoint(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """A ttfnet-lightning training checkpoint, loaded safely (``weights_only=True``, CPU; tensors
    memory-mapped). ``verify`` also checks every byte against the archive's CRC-32s (a full read;
    about 0.05 s per 100 MB once cached).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a URL or a directory; the file is empty, not a readable PyTorch file (truncated, corrupted),
            damaged (``verify``), holds objects a safe load refuses, or is something else (a plain
            state dict such as torchvision's weights, another program's or model's checkpoint),
            each named with the file.
    """
    if "://" in str(path):
        raise CheckpointError(
            f"checkpoint {path}: only a local file can be read and checked; copy it to this machine first"
        )
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a directory; give a checkpoint file (e.g. {path / 'checkpoints' / 'last.ckpt'})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is an empty file (0 bytes): an interrupted copy or write? Use another checkpoint"
        )
    obj = _load(path)
    problem = _what_else(path, obj)
    if problem:
        raise CheckpointError(problem)
    if verify:
        _verify(path)
    return obj


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (the :class:`CheckpointError` message), None when it is a
    complete, intact ttfnet-lightning training checkpoint."""
    try:
        read_checkpoint(path, verify=True)
    except (OSError, CheckpointError) as exc:
        return str(exc)
    return None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DetectorModule:
    """The trained module of a Lightning checkpoint, in eval mode: ``TTFNetModule``, or ``PeerDetectorModule``
    when the checkpoint's hyper-parameters have a ``peer`` group (torchvision's detectors); with a clear
    error for a bad path or file (missing, empty, truncated, not a checkpoint, not of this project; see
    :func:`read_checkpoint`). Loaded with ``weights_only=True``.

    No Hydra needed: the checkpoint holds plain hyper-parameters and the module builds its
    network from them (pretrained downloads are switched off: the weights are in the checkpoint).
    """
    path = Path(path)
    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    peer = is_peer_hparams(hparams)
    cls = PeerDetectorModule if peer else TTFNetModule
    # no download of ImageNet weights (nor a backbone file) for a network whose weights the checkpoint holds
    overrides = {"backbone_weights": False} if peer else {"pretrained": False, "weights": None}
    try:
        model = cls.load_from_checkpoint(str(path), map_location="cpu", weights_only=True, **overrides)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} does not build a ttfnet-lightning {cls.__name__}: {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    return model.to(device).eval()


def export_backbone_weights(model: DetectorModule, path: str | Path) -> Path:
    """Write the network's backbone as a state dict loadable with ``backbone.weights=PATH``
    (torchvision key names for ResNets, the module's own names for DarkNet-53), atomically.

    Raises:
        ValueError: ``model`` is torchvision's detector (a peer), whose backbone is not a TTFNet backbone."""
    if isinstance(model, PeerDetectorModule):
        raise ValueError(
            f"export_backbone: model.method={model.hparams.peer['name']} is torchvision's detector; only TTFNet's "
            "and CenterNet's backbones are written as backbone.weights files"
        )
    backbone = model.net.backbone
    module = getattr(backbone, "net", backbone)  # ResNetBackbone wraps a torchvision ResNet
    state = {k: v.detach().cpu() for k, v in module.state_dict().items() if not k.startswith("fc.")}
    return atomic_write(Path(path), _serialised(state))
