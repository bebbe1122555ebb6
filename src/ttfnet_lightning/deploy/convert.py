"""Released TTFNet weights (ZJULearning/ttfnet, mmdetection 1.x) -> a ttfnet-lightning checkpoint.

    python -m ttfnet_lightning.convert input=ttfnet18_2x.pth output=ttfnet18_2x.ckpt [backbone=r18|r34|d53|dla34]

The input is a released TTFNet checkpoint (:mod:`ttfnet_lightning.deploy.released`: its layout, the strict
rename). The output is a Lightning checkpoint of :class:`~ttfnet_lightning.training.lit_module.TTFNetModule`,
as a training writes them (a whole trainer checkpoint, its optimizer and loops fresh), which ``evaluate``,
``predict``, ``export``, :func:`~ttfnet_lightning.training.checkpoints.load_model` and ``train ckpt_path=``
accept: COCO's 80 classes and category ids, input 512 x 512, the released kernel and loss, and
``decode.box_convention=released`` (the released models regress x2 = x1 + w - 1 and clamp to W - 1). It carries
a conversion record (``CONVERT_KEY``): source file and its SHA-256, backbone, what was dropped or filled.
mmdetection's ``meta`` (its ``CLASSES`` must be COCO's when present) and ``optimizer`` are dropped.

The output is checked before any work (never the input; an existing file only with ``overwrite=true``) and
written atomically: a failure leaves no partial file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.deploy.output_files import OutputPathError, check_output_file, file_sha256
from ttfnet_lightning.deploy.released import (
    RELEASED_INPUT_SIZE,
    ConvertError,
    convert_state,
    detect_backbone,
    read_released,
    released_hparams,
)
from ttfnet_lightning.training.checkpoints import StrictCheckpointIO
from ttfnet_lightning.training.lit_module import TTFNetModule

log = logging.getLogger(__name__)

__all__ = ["CONVERT_KEY", "ConvertError", "convert_checkpoint", "convert"]

CONVERT_KEY = "ttfnet_converted"  # the conversion record in the written checkpoint


class _Record(pl.Callback):
    """Puts the conversion record into the written checkpoint (``CONVERT_KEY``)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONVERT_KEY] = self.record


def convert_checkpoint(
    input: str | Path,
    output: str | Path,
    *,
    backbone: str | None = None,
    frozen_stages: int | None = None,
    batch_size: int | None = None,
    wh_scale: float = 16.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the released TTFNet checkpoint ``input`` into the ttfnet-lightning checkpoint ``output``
    (written atomically; never onto ``input``; an existing ``output`` only with ``overwrite``). ``backbone``:
    ``r18``, ``r34``, ``d53``, ``dla34`` or None (detected; a given one must agree). ``frozen_stages`` (None: the
    released configs', 1 = stem + stage 1, or -1 for DLA-34, whose every stage trains) and
    ``batch_size`` (None: ``data=coco``'s) are stored as the module's settings, which ``train ckpt_path=``
    compares with its own (``backbone.frozen_stages``, ``data.datamodule.batch_size``). Returns the
    conversion record.

    Raises:
        FileNotFoundError: no ``input``.
        OutputPathError: ``output`` is ``input``, exists (without ``overwrite``) or cannot be written.
        ConvertError: ``input`` is not a released TTFNet checkpoint or does not map onto the model.
    """
    input, output = Path(input), Path(output)
    check_output_file(output, what="convert output", protected=[input])
    if output.exists() and not overwrite:
        raise OutputPathError(f"convert output {output} exists; remove it, choose another path, or pass overwrite=true")
    state, meta, dropped_top = read_released(input)
    found = detect_backbone(state, source=input)
    if backbone is not None and backbone != found:
        raise ConvertError(f"{input}: backbone={backbone} was given, but the file's backbone.* keys are {found}'s")
    if frozen_stages is None:
        frozen_stages = -1 if found == "dla34" else 1
    if batch_size is None:
        batch_size = int(OmegaConf.load(conf_dir() / "data" / "coco.yaml").datamodule.batch_size)
    groups = released_hparams(
        state, found, source=input, frozen_stages=frozen_stages, batch_size=batch_size, wh_scale=wh_scale
    )
    module = TTFNetModule(**groups)
    keys = convert_state(state, module.net, found, source=input)
    record = {
        "source": str(input),
        "source_sha256": file_sha256(input),
        "backbone": found,
        "tensors": len(state),
        "dropped": dropped_top + keys["dropped"],
        "filled": keys["filled"],
        "mmdet_meta": {
            k: str(meta[k]) for k in ("mmdet_version", "mmcv_version", "time", "epoch", "iter") if k in meta
        },
    }
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[StrictCheckpointIO()],  # atomic and durable; a failed write raises
        callbacks=[_Record(record)],
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(output, weights_only=False)  # a whole trainer checkpoint: train ckpt_path= resumes it
    log.info("converted %s (%s) -> %s", input, found, output)
    return record


def convert(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``python -m ttfnet_lightning.convert`` (``conf/convert.yaml``): :func:`convert_checkpoint`, with a summary."""
    record = convert_checkpoint(
        cfg["input"],
        cfg["output"],
        backbone=cfg.get("backbone"),
        frozen_stages=None if cfg.get("frozen_stages") is None else int(cfg["frozen_stages"]),
        batch_size=cfg.get("batch_size"),
        wh_scale=float(cfg.get("wh_scale", 16.0)),
        overwrite=bool(cfg.get("overwrite", False)),
    )
    print(
        f"converted {record['source']} ({record['backbone']}, {record['tensors']} tensors; dropped: "
        f"{', '.join(record['dropped']) or 'nothing'}) -> {cfg['output']}\n"
        f"COCO's 80 classes, input {RELEASED_INPUT_SIZE[0]}x{RELEASED_INPUT_SIZE[1]}, model.box_convention=released. "
        f"Evaluate: python -m ttfnet_lightning.evaluate ckpt={cfg['output']} data=coco data.datamodule.root=..."
    )
    return record
