"""What the notebooks and ``viz`` need around the figures: sample images (COCO subset or built-in
data), composing the training config, training a tiny model, the first training batch a config
produces (:func:`batch_figure`), and stripping notebook outputs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.core.drawing import draw_detections
from ttfnet_lightning.data import CocoDetection, ShapesDataset, build_transforms
from ttfnet_lightning.data.transforms import as_size
from ttfnet_lightning.paper.figures import subplots
from ttfnet_lightning.training.run import build_datamodule, train


# ------------------------------------------------------------------------- data and models
def _shared_data() -> Path:
    here = Path(__file__).resolve()
    for cand in (
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / ".." / ".." / "shared" / "data",
        here.parents[3] / "shared" / "data",
    ):
        if cand.is_dir():
            return cand.resolve()
    return here.parents[3] / "shared" / "data"


def sample_images(
    source: str = "auto",
    *,
    num_images: int = 2,
    image_size: int | Sequence[int] = 512,
    coco_root: str | Path | None = None,
    split: str = "val2017",
    min_boxes: int = 3,
    seed: int = 0,
    shape_classes: Sequence[str] | None = None,
) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[str], str]:
    """A few real images with their training boxes, resized to ``image_size`` as training does
    (aspect ratio not kept): ``([(image (3, H, W) uint8, boxes (M, 4), labels (M,)), ...], class
    names, source used)``. ``source``: ``"coco"`` (``coco_root``, default ``../shared/data/coco-mini``:
    the images with the most boxes, at least ``min_boxes``), ``"shapes"`` (the built-in data's
    validation stream, with ``shape_classes``, default its five) or ``"auto"`` (COCO when it is
    there, else shapes). ``seed``: skip that many images."""

    size = as_size(image_size)
    root = Path(coco_root) if coco_root is not None else _shared_data() / "coco-mini"
    if source == "auto":
        source = "coco" if (root / "annotations" / f"instances_{split}.json").is_file() else "shapes"
    if source == "coco":
        ds = CocoDetection(
            root=root, split=split, transforms=build_transforms(input_size=size, train=False), keep_empty=False
        )
        counts = [len(ds.annotations(i)["boxes"]) for i in range(len(ds))]
        order = sorted(range(len(ds)), key=lambda i: (-(min_boxes <= counts[i] <= 12), -counts[i], i))
        picked = order[seed : seed + num_images]
        names = ds.class_names
    elif source == "shapes":
        extra = {"classes": list(shape_classes)} if shape_classes else {}
        ds = ShapesDataset(
            num_images=seed + num_images,
            image_size=size,
            seed=10_000,
            min_objects=min_boxes,
            max_objects=max(min_boxes, 8),
            **extra,
        )
        picked = list(range(seed, seed + num_images))
        names = ds.class_names
    else:
        raise ValueError(f"source must be 'auto', 'coco' or 'shapes', got {source!r}")
    out = []
    for i in picked:
        img, tgt = ds[i]
        out.append((img.as_subclass(Tensor), tgt["boxes"].as_subclass(Tensor).float(), tgt["labels"]))
    return out, list(names), source


def validation_samples(dm: Any, num_images: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The first ``num_images`` validation images of a set-up data module that hold a box, as the
    model sees them: ``[(image (3, H, W) uint8, boxes (M, 4), labels (M,)), ...]`` (fewer when the
    split has fewer)."""
    out = []
    for i in range(len(dm.val_dataset)):
        img, tgt = dm.val_dataset[i]
        if len(tgt["boxes"]):
            out.append((img.as_subclass(Tensor), tgt["boxes"].as_subclass(Tensor).float(), tgt["labels"]))
        if len(out) == num_images:
            break
    return out


def compose(config_name: str = "train", overrides: Sequence[str] = ()) -> Any:
    """A config composed from the package's ``conf/`` with Hydra's API (no command line, no chdir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def train_tiny_model(
    output_dir: str | Path, *, steps: int = 60, image_size: int = 64, overrides: Sequence[str] = ()
) -> Path:
    """Train a small TTFNet-R18 on the built-in data (``steps`` optimiser steps, batch 8, CSV
    logging only) into ``output_dir`` and return its ``last.ckpt``; a finished run there is reused
    (``train`` skips it). A stand-in when no trained checkpoint is at hand: it detects shapes only."""

    out = Path(output_dir)
    per_epoch = 4
    epochs = max(1, math.ceil(steps / per_epoch))
    cfg = compose(
        "train",
        [
            f"data.datamodule.input_size=[{image_size},{image_size}]",
            f"data.datamodule.num_train={8 * per_epoch}",
            "data.datamodule.num_val=8",
            "data.datamodule.batch_size=8",
            "data.datamodule.num_workers=0",
            f"schedule.max_epochs={epochs}",
            f"schedule.warmup_steps={min(20, steps // 4 + 1)}",
            f"schedule.milestones=[{max(1, epochs * 3 // 4)}]",
            f"trainer.check_val_every_n_epoch={epochs}",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "logger=csv",
            "callbacks.log_val_images=0",
            "callbacks.checkpoint_every_n_steps=null",
            f"output_dir={out}",
            *overrides,
        ],
    )
    train(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"training wrote no {ckpt}")
    return ckpt


def training_batches(overrides: Sequence[str] = (), *, num_batches: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
    """The first ``num_batches`` training batches that ``train`` with these overrides would feed the
    network (the configured datamodule, its transforms and augmentation; loaded in this process).

    Returns:
        (batches, class_names): each batch as the collate function makes it (``images`` (B, 3, H, W)
        uint8, ``boxes`` (B, M, 4) xyxy pixels, ``labels`` (B, M), -1 = padding).
    """

    cfg = compose("train", [*overrides, "data.datamodule.num_workers=0"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) >= num_batches:
            break
    return batches, list(getattr(dm, "class_names", []) or [])


def batch_figure(
    batch: Mapping[str, Any],
    *,
    class_names: Sequence[str] | None = None,
    num_images: int = 8,
    columns: int = 8,
    title: str | None = None,
) -> Any:
    """A training batch as the network sees it (``images`` uint8, as collated): each image with its
    target boxes (padding left out)."""
    images = batch["images"][:num_images]
    n = len(images)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, (2.2 * cols, 2.3 * rows + (0.4 if title else 0)))
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        ax.axis("off")
        if i >= n:
            continue
        keep = batch["labels"][i] >= 0
        drawn = draw_detections(images[i], batch["boxes"][i][keep], batch["labels"][i][keep], class_names=class_names)
        ax.imshow(drawn.permute(1, 2, 0).numpy())
        ax.set_title(f"{int(keep.sum())} boxes", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def strip_notebook(path: str | Path) -> bool:
    """Remove a notebook's outputs, execution counts and widget state in place (notebooks are
    stored without outputs; ``tests/tools/test_notebooks.py`` checks it). Returns whether it changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after)
    return after != before


# ------------------------------------------------------------------------------------- CLI
