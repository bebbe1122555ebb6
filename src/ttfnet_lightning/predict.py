"""Run a trained model on images: draw the boxes and write COCO-format results.

    python -m ttfnet_lightning.predict ckpt=PATH input=IMAGE_OR_DIR output=DIR

Writes ``DIR/<image name>.jpg`` with boxes above ``draw_threshold`` (class name and score, one
colour per class; ``draw_heatmap=true`` blends the predicted heatmap under them) and ``DIR/detections.json``
(COCO results: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in original pixels, ``score``)
with ``DIR/images.json`` (COCO ``images`` and ``categories`` entries naming the ids).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset
from torchvision.io import write_jpeg
from torchvision.transforms.v2 import functional as TF

from .checkpoints import load_model
from .data.errors import DataError
from .data.sample import load_rgb_image
from .decode import coco_results
from .viz import draw_detections

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}

__all__ = ["predict", "list_images", "ImageFolder", "DetectionWriter"]


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


class ImageFolder(Dataset):
    """Image files -> ``{"image": (3, H, W) uint8 original, "input": (3, h, w) uint8 resized to the
    network input, "index", "path"}``, read with the data sets' image policy (a truncated but
    decodable file loads with a warning; an undecodable one becomes ``None``, skipped and counted)."""

    def __init__(self, files: Sequence[Path], input_size: tuple[int, int]) -> None:
        self.files, self.input_size = list(files), input_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path = self.files[index]
        try:
            image = load_rgb_image(path).as_subclass(torch.Tensor)
        except DataError as exc:
            log.warning("skipping %s: %s", path, exc)
            return None
        resized = TF.resize(image, list(self.input_size), antialias=True)
        return {"image": image, "input": resized, "index": index, "path": str(path)}


def collate_images(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The batch format of :class:`~ttfnet_lightning.lit_module.TTFNetModule` (``images`` uint8,
    ``meta`` with ``orig_size``) plus the originals for drawing; unreadable files are left out."""
    ok = [it for it in items if it is not None]
    return {
        "images": torch.stack([it["input"] for it in ok]) if ok else torch.zeros(0, 3, 32, 32, dtype=torch.uint8),
        "meta": [{"orig_size": tuple(it["image"].shape[-2:]), "image_id": it["index"], "path": it["path"]} for it in ok],
        "originals": [it["image"] for it in ok],
        "skipped": len(items) - len(ok),
    }


class DetectionWriter(BasePredictionWriter):
    """Writes each predicted batch as it comes (nothing accumulates in memory): the image with its
    boxes above ``draw_threshold`` (class name and score, a colour per class, and the predicted
    heatmap underneath when the predictions carry one) as ``<output>/<name>.jpg``, and at the end
    ``detections.json`` (COCO results) and ``images.json`` (COCO images and categories)."""

    def __init__(self, output: Path, *, class_names: Sequence[str], cat_ids: Sequence[int], draw_threshold: float,
                 heatmap_alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.output, self.names, self.cat_ids, self.draw_threshold = Path(output), list(class_names), list(cat_ids), float(draw_threshold)
        self.heatmap_alpha = float(heatmap_alpha)
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.skipped = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        self.skipped += batch["skipped"]
        self.results += coco_results(prediction, [m["image_id"] for m in batch["meta"]], self.cat_ids)
        for meta, img, det in zip(batch["meta"], batch["originals"], prediction):
            img = img.cpu()
            boxes, scores, labels = det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()
            path = Path(meta["path"])
            self.images.append({"id": meta["image_id"], "file_name": path.name, "height": int(img.shape[-2]), "width": int(img.shape[-1])})
            drawn = draw_detections(img, boxes, labels, scores, class_names=self.names, score_threshold=self.draw_threshold,
                                    heatmap=det.get("heatmap"), heatmap_alpha=self.heatmap_alpha)
            write_jpeg(drawn, str(self.output / (path.stem + ".jpg")), quality=90)

    def finish(self) -> None:
        categories = [{"id": int(self.cat_ids[i]), "name": n} for i, n in enumerate(self.names)]
        (self.output / "detections.json").write_text(json.dumps(self.results))
        (self.output / "images.json").write_text(json.dumps({"images": self.images, "categories": categories}, indent=1))


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Detections for ``cfg.input`` (an image or a directory) by ``cfg.ckpt``, with Lightning's
    ``trainer.predict`` and the module's ``predict_step``; an exported ``model.onnx`` runs with
    onnxruntime instead (no torch model in the loop, see ``onnx_runtime.predict_onnx``)."""
    if str(cfg.ckpt).lower().endswith(".onnx"):
        from .onnx_runtime import predict_onnx

        return predict_onnx(cfg)
    model = load_model(cfg.ckpt)
    inf = cfg.get("inference") or {}
    if inf.get("optimize", True):
        model.optimize_for_inference(precision=str(inf.get("precision", "fp32")), compile=bool(inf.get("compile", False)))
    files = list_images(cfg.input)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    names = model.class_names
    model.predict_heatmaps = bool(cfg.get("draw_heatmap", False))
    writer = DetectionWriter(out, class_names=names, cat_ids=model.label_to_cat_id or list(range(len(names))),
                             draw_threshold=cfg.draw_threshold, heatmap_alpha=float(cfg.get("heatmap_alpha", 0.5)))
    loader = DataLoader(ImageFolder(files, model.input_size), batch_size=int(cfg.batch_size), num_workers=int(cfg.get("num_workers", 0)),
                        collate_fn=collate_images)
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}.get(str(cfg.device), str(cfg.device))
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, callbacks=[writer], enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.predict(model, dataloaders=loader, return_predictions=False)
    writer.finish()
    print(f"{len(writer.images)} images -> {out} ({len(writer.results)} detections in detections.json; "
          f"{writer.skipped} unreadable files skipped)")
    return {"num_images": len(writer.images), "num_detections": len(writer.results), "skipped": writer.skipped, "output": str(out)}


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
