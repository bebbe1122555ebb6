"""Run a trained model on images: draw the boxes and write COCO-format results.

    python -m ttfnet_lightning.predict ckpt=PATH input=IMAGE_OR_DIR output=DIR

Writes ``DIR/<image name>.jpg`` with boxes above ``draw_threshold`` and ``DIR/detections.json``
(COCO results: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in original pixels, ``score``)
with ``DIR/images.json`` (COCO ``images`` and ``categories`` entries naming the ids).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torchvision.io import ImageReadMode, decode_image, write_jpeg
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from .checkpoints import load_model, pick_device
from .decode import coco_results

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}

__all__ = ["predict", "list_images"]


def list_images(path: str | Path) -> list[Path]:
    """An image file, or the image files of a directory (sorted, not recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in directory {path}")
        return files
    raise FileNotFoundError(f"input not found: {path}")


def _read(path: Path) -> torch.Tensor | None:
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        log.warning("skipping %s: not a readable image (%s)", path, exc)
        return None


def _batches(files: list[Path], batch_size: int) -> Iterator[list[tuple[int, Path, torch.Tensor]]]:
    batch: list[tuple[int, Path, torch.Tensor]] = []
    for i, f in enumerate(files):
        img = _read(f)
        if img is None:
            continue
        batch.append((i, f, img))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def predict(cfg: DictConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)
    model = load_model(cfg.ckpt, device)
    H, W = model.input_size
    names = model.class_names
    cat_ids = model.label_to_cat_id or list(range(len(names)))
    files = list_images(cfg.input)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    # images are read batch by batch (the generator), never all at once
    num_batches = math.ceil(len(files) / int(cfg.batch_size))
    for batch in tqdm(_batches(files, int(cfg.batch_size)), total=num_batches, desc="predict", unit="batch"):
        x = torch.stack([TF.resize(img, [H, W], antialias=True) for _, _, img in batch]).to(device)
        meta = [{"orig_size": tuple(img.shape[-2:])} for _, _, img in batch]
        dets = model.decode(*model(model.normalize(x)), meta, (H, W))
        results += coco_results(dets, [idx for idx, _, _ in batch], cat_ids)
        for (idx, f, img), det in zip(batch, dets):
            boxes, scores, labels = det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()
            images.append({"id": idx, "file_name": f.name, "height": int(img.shape[-2]), "width": int(img.shape[-1])})
            keep = scores >= cfg.draw_threshold
            drawn = img
            if keep.any():
                text = [f"{names[c]} {s:.2f}" for c, s in zip(labels[keep].tolist(), scores[keep].tolist())]
                drawn = draw_bounding_boxes(img, boxes[keep], labels=text, colors="red", width=max(1, round(max(img.shape[-2:]) / 300)))
            write_jpeg(drawn, str(out / (f.stem + ".jpg")), quality=90)
    skipped = len(files) - len(images)
    categories = [{"id": int(cat_ids[i]), "name": n} for i, n in enumerate(names)]
    (out / "detections.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps({"images": images, "categories": categories}, indent=1))
    print(f"{len(images)} images -> {out} ({len(results)} detections in detections.json; {skipped} unreadable files skipped)")
    return {"num_images": len(images), "num_detections": len(results), "skipped": skipped, "output": str(out)}


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
