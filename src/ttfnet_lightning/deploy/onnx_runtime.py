"""Run an exported TTFNet ONNX model with onnxruntime (no PyTorch model in the loop).

    det = OnnxDetector("model.onnx")                 # reads model.json (or the model's own metadata)
    dets = det.detect(images_uint8, orig_sizes=[(h0, w0), ...])   # [{boxes, scores, labels}] per image

``predict ckpt=model.onnx`` uses :func:`predict_onnx`: the same image reading and resizing as the
PyTorch path (:class:`~ttfnet_lightning.deploy.predict.ImageFolder`), the same threshold and rescale as
:func:`~ttfnet_lightning.core.decode.decode_detections`, and the same outputs (drawn images,
``detections.json``, ``images.json``). Needs the ``export`` extra (onnxruntime).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "OnnxDetector",
    "metadata_path",
    "read_metadata",
    "compare_detections",
    "check_exported_onnx",
    "import_onnxruntime",
    "is_onnx_path",
]

RUNTIME_EXTRA_HINT = "pip install 'ttfnet-lightning[export]' (or: pip install 'onnxruntime>=1.18')"


def metadata_path(model_path: str | Path) -> Path:
    """The metadata file of an exported model: ``model.onnx`` -> ``model.json``."""
    return Path(model_path).with_suffix(".json")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"running an ONNX model needs onnxruntime, which is not installed: {RUNTIME_EXTRA_HINT}"
        ) from exc
    return onnxruntime


def is_onnx_path(path: str | Path) -> bool:
    """``True`` for an ``.onnx`` file name (what ``predict ckpt=...`` switches on)."""
    return str(path).lower().endswith(".onnx")


def read_metadata(model_path: str | Path, session: Any | None = None) -> dict[str, Any]:
    """The export metadata: ``model.json`` beside ``model.onnx``, else the copy in the ONNX file's
    ``metadata_props`` (key ``ttfnet_lightning``)."""
    side = metadata_path(model_path)
    if side.is_file():
        return json.loads(side.read_text())
    if session is not None:
        props = session.get_modelmeta().custom_metadata_map
        if "ttfnet_lightning" in props:
            return json.loads(props["ttfnet_lightning"])
    raise FileNotFoundError(
        f"no metadata for {model_path}: expected {side} (written by `python -m ttfnet_lightning.export`) or "
        "the model's metadata_props 'ttfnet_lightning'"
    )


class OnnxDetector:
    """An exported model in an onnxruntime session, with its metadata.

    Args:
        path: the ``.onnx`` file (written by :func:`~ttfnet_lightning.deploy.export.export_onnx`).
        device: ``"cpu"``, ``"cuda"`` (CUDAExecutionProvider) or ``"auto"`` (CUDA when onnxruntime has it).
        threads: intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"device=cuda but this onnxruntime has no CUDAExecutionProvider (it has {available}); install "
                "onnxruntime-gpu"
            )
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device in ("cuda", "auto") and "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"]
        )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        self.meta = read_metadata(self.path, self.session)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def input_size(self) -> tuple[int, int]:
        H, W = self.meta["input_size"]
        return int(H), int(W)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [str(c) for c in range(int(self.meta["num_classes"]))])

    @property
    def label_to_cat_id(self) -> list[int] | None:
        ids = self.meta.get("label_to_cat_id")
        return None if ids is None else [int(i) for i in ids]

    @property
    def score_threshold(self) -> float:
        return float(self.meta.get("score_threshold", 0.01))

    @property
    def box_convention(self) -> str:
        """The exported boxes' convention (``continuous`` for exports that do not name one)."""
        return str(self.meta.get("outputs", {}).get("boxes", {}).get("box_convention", "continuous"))

    def run(self, images: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs for (B, 3, H, W) uint8 RGB images at :attr:`input_size`: boxes (B, K, 4)
        xyxy input pixels, scores (B, K), labels (B, K)."""
        if isinstance(images, Tensor):
            images = images.detach().cpu().numpy()
        images = np.ascontiguousarray(images)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.input_size:
            raise ValueError(
                f"images must be (B, 3, {self.input_size[0]}, {self.input_size[1]}) (resize them first), got "
                f"{images.shape}"
            )
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 RGB (0-255), got {images.dtype}")
        boxes, scores, labels = self.session.run(None, {self.input_name: images})
        return boxes, scores, labels

    def detect(
        self,
        images: np.ndarray | Tensor,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
        score_threshold: float | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image as :func:`~ttfnet_lightning.core.decode.decode_detections` returns them:
        ``{boxes (N, 4) xyxy, scores (N,), labels (N,) int64}`` (torch tensors), scores above the
        threshold (the checkpoint's, strict ``>``), boxes rescaled to ``orig_sizes`` (h0, w0) when given."""
        boxes, scores, labels = (torch.from_numpy(np.asarray(a)) for a in self.run(images))
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        H, W = self.input_size
        if orig_sizes is not None:
            sizes = torch.as_tensor([tuple(s) for s in orig_sizes], dtype=torch.float32).reshape(-1, 2)
            scale = torch.stack((sizes[:, 1] / W, sizes[:, 0] / H, sizes[:, 1] / W, sizes[:, 0] / H), dim=-1)
            # the released box convention: the + 1 on x2, y2 comes after the rescale (as decode_detections)
            one = torch.tensor([0.0, 0.0, 1.0, 1.0]) if self.box_convention == "released" else torch.zeros(4)
            boxes = (boxes - one) * scale.unsqueeze(1) + one
        keep = scores > thr
        return [
            {"boxes": boxes[i][keep[i]], "scores": scores[i][keep[i]], "labels": labels[i][keep[i]].long()}
            for i in range(boxes.shape[0])
        ]


def compare_detections(
    ref: Sequence[Any], got: Sequence[Any], *, score_threshold: float = 0.01, tie_eps: float = 1e-5
) -> dict[str, Any]:
    """Position-wise comparison of two fixed-K outputs ``(boxes (B, K, 4), scores (B, K), labels (B, K))``
    (PyTorch ``ref``, onnxruntime ``got``; tensors or arrays), sorted by score as both are.

    Compared: positions whose reference score is above ``score_threshold`` and more than ``tie_eps``
    from its neighbours' (a near-tie may legitimately come in either order). Returns
    ``max_box_diff_px`` and ``label_agreement`` over those, ``max_score_diff`` over all positions,
    ``compared`` and ``ambiguous`` (near-ties left out) counts.
    """
    rb, rs, rl = (torch.as_tensor(np.asarray(a)) for a in ref)
    gb, gs, gl = (torch.as_tensor(np.asarray(a)) for a in got)
    if rb.shape != gb.shape or rs.shape != gs.shape:
        raise ValueError(f"shapes differ: {tuple(rb.shape)} / {tuple(gb.shape)}")
    rs, gs = rs.double(), gs.double()
    gap = torch.full_like(rs, float("inf"))
    if rs.shape[1] > 1:
        d = (rs[:, 1:] - rs[:, :-1]).abs()
        gap[:, 1:] = torch.minimum(gap[:, 1:], d)
        gap[:, :-1] = torch.minimum(gap[:, :-1], d)
    above = rs > score_threshold
    use = above & (gap > tie_eps)
    n = int(use.sum())
    box_diff = (rb.double() - gb.double()).abs().amax(-1)
    return {
        "max_box_diff_px": float(box_diff[use].max()) if n else 0.0,
        "max_score_diff": float((rs - gs).abs().max()) if rs.numel() else 0.0,
        "label_agreement": float((rl[use] == gl[use]).double().mean()) if n else 1.0,
        "compared": n,
        "ambiguous": int((above & ~use).sum()),
    }


def check_exported_onnx(
    path: Path, wrapper: torch.nn.Module, example: Callable[[Any, int], Tensor], score_threshold: float
) -> dict[str, Any]:
    """onnxruntime on a random uint8 batch of 2 (and of 1: the dynamic batch), ``example(wrapper, batch)``,
    against the PyTorch ``wrapper`` (:func:`compare_detections` per batch size). Raises
    ``RuntimeError`` when the output shapes differ."""
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: dict[str, Any] = {}
    for batch in (2, 1):
        x = example(wrapper, batch)
        got = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = wrapper(x)
        if tuple(got[0].shape) != tuple(ref[0].shape):
            raise RuntimeError(
                f"exported model gives boxes of shape {got[0].shape} for batch {batch}, PyTorch {tuple(ref[0].shape)}"
            )
        result[f"batch{batch}"] = compare_detections(ref, got, score_threshold=score_threshold)
    return result
