"""The training objective of :class:`~ttfnet_lightning.training.lit_module.TTFNetModule`, chosen by
``model.method`` (stored in the checkpoint as ``net.method``): the target encoder, the loss and the decoder
of TTFNet (default) or of CenterNet (:mod:`ttfnet_lightning.core.centernet`, the paper's Table 8 baseline).

Both networks return ``(heatmap_logits, regression)`` (regression: TTFNet's distances, CenterNet's size and
offset), so the module calls ``objective.loss(*outputs, *targets)`` and ``objective.decode(*outputs, ...)``
whichever the method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ttfnet_lightning.core.centernet import CenterNetLoss, decode_centernet, encode_centernet_targets
from ttfnet_lightning.core.decode import decode_detections
from ttfnet_lightning.core.losses import TTFNetLoss
from ttfnet_lightning.core.targets import encode_targets
from ttfnet_lightning.training.config import METHODS

__all__ = ["Objective", "build_objective", "METHODS"]


@dataclass(frozen=True)
class Objective:
    """What a method trains and decodes with.

    ``encode(boxes, labels, *, num_classes, output_size, stride)`` -> the targets (a tuple);
    ``loss(heatmap_logits, regression, *targets)`` -> ``{"loss", *terms}``;
    ``decode(heatmap_logits, regression, *, input_size, orig_sizes, stride, k, score_threshold, box_convention)``
    -> one ``{boxes, scores, labels}`` dict per image; ``terms``: the loss terms logged besides ``loss``.
    """

    method: str
    encode: Callable[..., tuple[Tensor, ...]]
    loss: Callable[..., dict[str, Tensor]]
    decode: Callable[..., list[dict[str, Tensor]]]
    terms: tuple[str, ...]


def build_objective(
    method: str, *, kernel: Mapping[str, Any], loss: Mapping[str, Any], decode: Mapping[str, Any], stride: int
) -> Objective:
    """The objective of ``method`` from the module's checked ``kernel``, ``loss`` and ``decode`` groups.

    TTFNet uses all three. CenterNet ignores the kernel (its targets are CenterNet's) and the loss weights
    ``wloc``, ``wreg`` and ``plus_one`` (its weights are CenterNet's 1, 0.1, 1; the focal exponents
    ``alpha_f``, ``beta_f`` apply), and reads its boxes in the continuous convention only.

    Raises:
        ValueError: an unknown method, or ``model.box_convention=released`` with CenterNet.
    """
    if method == "ttfnet":
        return Objective(
            method=method,
            encode=functools.partial(encode_targets, **{k: v for k, v in kernel.items() if k != "name"}),
            loss=TTFNetLoss(stride=stride, **loss),
            decode=decode_detections,
            terms=("loss_heatmap", "loss_box"),
        )
    if method == "centernet":
        _continuous_only(decode.get("box_convention", "continuous"))
        return Objective(
            method=method,
            encode=encode_centernet_targets,
            loss=CenterNetLoss(alpha_f=loss["alpha_f"], beta_f=loss["beta_f"]),
            decode=_decode_centernet,
            terms=("loss_heatmap", "loss_wh", "loss_offset"),
        )
    raise ValueError(f"model.method must be one of {METHODS}, got {method!r}")


def _continuous_only(box_convention: str) -> None:
    if box_convention != "continuous":
        raise ValueError(
            f"model.box_convention={box_convention} is the released TTFNet models' convention; "
            "model.method=centernet decodes continuous boxes only"
        )


def _decode_centernet(
    heatmap_logits: Tensor, regression: Tensor, *, box_convention: str = "continuous", **options: Any
) -> list[dict[str, Tensor]]:
    """:func:`~ttfnet_lightning.core.centernet.decode_centernet` with ``decode_detections``' arguments."""
    _continuous_only(box_convention)
    return decode_centernet(heatmap_logits, regression, **options)
