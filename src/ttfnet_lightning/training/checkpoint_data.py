"""What a checkpoint remembers of its data, for the commands that use a trained model (``evaluate``,
``viz detections``).

``data=from_checkpoint`` (their default) rebuilds the data module from the config the checkpoint
carries (or ``config_resolved.yaml`` beside it, :func:`~ttfnet_lightning.training.runs.checkpoint_run`),
with the ``data.datamodule.*`` keys given on the command line on top, e.g.
``data.datamodule.root=/new/place`` for the same data set moved. Naming a data group
(``data=coco data.datamodule.root=...``) evaluates on that data instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.training.runs import checkpoint_run

__all__ = ["FROM_CHECKPOINT", "checkpoint_data_config", "checkpoint_datamodule"]

FROM_CHECKPOINT = "from_checkpoint"


def checkpoint_data_config(data: DictConfig, ckpt: str | Path) -> DictConfig:
    """The data config to use with ``ckpt``: ``data`` itself unless it is the ``from_checkpoint``
    group, else the checkpoint's stored ``data`` with the non-null ``data.datamodule.*`` of ``data`` on top.

    Raises:
        DataError: the checkpoint carries no config (and none lies beside it), or a given key is
            not one of its data module's settings.
    """
    if data.get("name") != FROM_CHECKPOINT:
        return data
    stored = (checkpoint_run(ckpt, verify=False)["config"] or {}).get("data")
    if not stored or "datamodule" not in stored:
        raise DataError(
            f"checkpoint {ckpt} carries no data config and has no config_resolved.yaml beside it: name the data, "
            "e.g. data=coco data.datamodule.root=/data/coco (or data=voc / data=shapes)"
        )
    result = OmegaConf.create(stored)
    given = {k: v for k, v in (data.get("datamodule") or {}).items() if v is not None}
    unknown = sorted(k for k in given if k not in result.datamodule)
    if unknown:
        raise DataError(
            f"data.datamodule.{unknown[0]}: not a setting of the data module checkpoint {ckpt} was trained with "
            f"({result.datamodule.get('_target_')}; settings: {', '.join(sorted(result.datamodule))})"
        )
    result.datamodule = OmegaConf.merge(result.datamodule, given)
    return result


def checkpoint_datamodule(ckpt: str | Path, *, data: DictConfig | None = None, **options: Any) -> Any:
    """The data module of :func:`checkpoint_data_config` (``data`` None: the checkpoint's own data),
    built with ``options`` (e.g. ``input_size``, ``preflight=False``) and set up for validation."""
    cfg = checkpoint_data_config(data if data is not None else OmegaConf.create({"name": FROM_CHECKPOINT}), ckpt)
    dm = instantiate(cfg.datamodule, **options, _convert_="all")
    dm.setup("validate")
    return dm
