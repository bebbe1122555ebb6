"""Run a trained model on images: draw the boxes and write COCO-format results.

Writes ``DIR/<image name>.jpg`` with boxes above ``draw_threshold`` (class name and score, one
colour per class; ``draw_heatmap=true`` blends the predicted heatmap under them) and ``DIR/detections.json``
(COCO results: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in original pixels, ``score``)
with ``DIR/images.json`` (COCO ``images`` and ``categories`` entries naming the ids; each image's
``output`` is its drawn file; ``skipped`` lists the unreadable inputs and why).

Outputs never overwrite an input or each other (:func:`output_names`, :func:`check_output_folder`):
the drawn file of ``a.png`` is ``a.jpg``, unless another input would get the same name (``a.jpg``,
``a.png``, or names differing in letter case only): then ``a_jpg.jpg`` and ``a_png.jpg``. The output
folder must not be the input folder (or, for a single image, its folder), and no output may be an
input (symlinks and hard links included); files of an earlier prediction there are replaced.
Unreadable inputs are skipped, counted and named, and the run succeeds when at least one image
was processed; when none was, it fails (``DataError``; non-zero exit status) and writes nothing.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset
from torchvision.io import write_jpeg
from torchvision.transforms.v2 import functional as TF

from ttfnet_lightning.core.decode import coco_results
from ttfnet_lightning.core.drawing import draw_detections
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.data.sample import load_rgb_image
from ttfnet_lightning.deploy.onnx_runtime import OnnxDetector
from ttfnet_lightning.deploy.output_files import publish, temporary_path, write_text_atomic
from ttfnet_lightning.deploy.predict_files import (
    check_output_folder,
    draw_threshold,
    list_images,
    output_names,
)
from ttfnet_lightning.deploy.video import is_video, predict_video
from ttfnet_lightning.training.checkpoints import load_model

log = logging.getLogger(__name__)

MAX_NAMED = 5  # unreadable files named in a message

__all__ = [
    "predict",
    "list_images",
    "output_names",
    "check_output_folder",
    "ImageFolder",
    "DetectionWriter",
    "predict_onnx",
]


class ImageFolder(Dataset):
    """Image files -> ``{"image": (3, H, W) uint8 original, "input": (3, h, w) uint8 resized to the
    network input, "index", "path"}``, read with the data sets' image policy (a truncated but
    decodable file loads with a warning). An unreadable file gives ``{"index", "path", "error"}``
    (the reason), skipped and named by :func:`collate_images` and :class:`DetectionWriter`."""

    def __init__(self, files: Sequence[Path], input_size: tuple[int, int]) -> None:
        self.files, self.input_size = list(files), input_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            image = load_rgb_image(path).as_subclass(torch.Tensor)
        except (DataError, OSError) as exc:
            log.warning("skipping %s: %s", path, exc)
            return {"index": index, "path": str(path), "error": str(exc) or type(exc).__name__}
        resized = TF.resize(image, list(self.input_size), antialias=True)
        return {"image": image, "input": resized, "index": index, "path": str(path)}


def collate_images(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The batch format of :class:`~ttfnet_lightning.training.lit_module.TTFNetModule` (``images`` uint8,
    ``meta`` with ``orig_size``) plus the originals for drawing; unreadable files are left out,
    counted (``skipped``) and listed with their reason (``skipped_files``: ``[(path, error)]``)."""
    ok = [it for it in items if it is not None and "error" not in it]
    bad = [(it["path"], it["error"]) for it in items if it is not None and "error" in it]
    return {
        "images": torch.stack([it["input"] for it in ok]) if ok else torch.zeros(0, 3, 32, 32, dtype=torch.uint8),
        "meta": [
            {"orig_size": tuple(it["image"].shape[-2:]), "image_id": it["index"], "path": it["path"]} for it in ok
        ],
        "originals": [it["image"] for it in ok],
        "skipped": len(items) - len(ok),
        "skipped_files": bad,
    }


def _named(skipped: Sequence[tuple[str, str]]) -> str:
    """The first :data:`MAX_NAMED` skipped files with their reasons, and how many more."""
    text = "; ".join(f"{p} ({err})" for p, err in skipped[:MAX_NAMED])
    return text + (f"; and {len(skipped) - MAX_NAMED} more" if len(skipped) > MAX_NAMED else "")


class DetectionWriter(BasePredictionWriter):
    """Writes each predicted batch as it comes (nothing accumulates in memory): the image with its
    boxes above ``draw_threshold`` (class name and score, a colour per class, and the predicted
    heatmap underneath when the predictions carry one) as ``<output>/<name>`` (``files[i]``'s name
    from :func:`output_names`), and at the end ``detections.json`` (COCO results) and ``images.json``
    (COCO images and categories, the skipped files). Each file is written to a temporary name and
    renamed, so an existing file there is replaced, never written through."""

    def __init__(
        self,
        output: Path,
        *,
        files: Sequence[Path],
        class_names: Sequence[str],
        cat_ids: Sequence[int],
        draw_threshold: float,
        heatmap_alpha: float = 0.5,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output, self.names, self.cat_ids, self.draw_threshold = (
            Path(output),
            list(class_names),
            list(cat_ids),
            float(draw_threshold),
        )
        self.heatmap_alpha = float(heatmap_alpha)
        self.files = list(files)
        self.out_names = output_names(self.files)
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.skipped_files: list[tuple[str, str]] = []
        self.skipped = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.skipped += batch["skipped"]
        self.skipped_files += batch.get("skipped_files", [])
        self.results += coco_results(prediction, [m["image_id"] for m in batch["meta"]], self.cat_ids)
        for meta, img, det in zip(batch["meta"], batch["originals"], prediction):
            img = img.cpu()
            boxes, scores, labels = det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()
            name = self.out_names[meta["image_id"]]
            self.images.append(
                {
                    "id": meta["image_id"],
                    "file_name": Path(meta["path"]).name,
                    "output": name,
                    "height": int(img.shape[-2]),
                    "width": int(img.shape[-1]),
                }
            )
            drawn = draw_detections(
                img,
                boxes,
                labels,
                scores,
                class_names=self.names,
                score_threshold=self.draw_threshold,
                heatmap=det.get("heatmap"),
                heatmap_alpha=self.heatmap_alpha,
            )
            with temporary_path(self.output / name) as tmp:
                write_jpeg(drawn, str(tmp), quality=90)
                publish(tmp, self.output / name)

    def finish(self) -> None:
        """Writes ``detections.json`` and ``images.json``.

        Raises:
            DataError: no input could be read (nothing was processed; nothing is written).
        """
        if not self.images:
            raise DataError(
                f"predict processed no image: none of the {len(self.files)} input file(s) could be read "
                f"({_named(self.skipped_files)}); nothing was written to {self.output}"
            )
        categories = [{"id": int(self.cat_ids[i]), "name": n} for i, n in enumerate(self.names)]
        skipped = [{"file_name": p, "error": err} for p, err in self.skipped_files]
        write_text_atomic(self.output / "detections.json", json.dumps(self.results))
        write_text_atomic(
            self.output / "images.json",
            json.dumps({"images": self.images, "categories": categories, "skipped": skipped}, indent=1),
        )

    def summary(self, note: str = "") -> dict[str, Any]:
        """Prints (with ``note``) and returns what was done: images written, detections, unreadable
        files skipped (named)."""
        note = f"; {note}" if note else ""
        print(
            f"{len(self.images)} images -> {self.output} ({len(self.results)} detections in detections.json; "
            f"{self.skipped} unreadable files "
            f"skipped{': ' + _named(self.skipped_files) if self.skipped_files else ''}{note})"
        )
        return {
            "num_images": len(self.images),
            "num_detections": len(self.results),
            "skipped": self.skipped,
            "skipped_files": [p for p, _ in self.skipped_files],
            "output": str(self.output),
        }


def prepare_prediction(cfg: Any) -> tuple[list[Path], Path]:
    """The input files of ``cfg.input`` and the checked, created ``cfg.output`` folder
    (:func:`list_images`, :func:`check_output_folder`): done before any model is loaded."""
    files = list_images(cfg.input)
    return files, check_output_folder(cfg.output, cfg.input, files, output_names(files))


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Detections for ``cfg.input`` (an image, a directory, a glob pattern; a video file goes to
    :func:`~ttfnet_lightning.deploy.video.predict_video`) by ``cfg.ckpt``, with Lightning's
    ``trainer.predict`` and the module's ``predict_step``; an exported ``model.onnx`` runs with
    onnxruntime instead (no torch model in the loop, see :func:`predict_onnx`).

    Raises:
        FileNotFoundError: no input image (:func:`list_images`).
        OutputPathError: ``cfg.output`` could overwrite an input (:func:`check_output_folder`).
        DataError: no input could be read.
    """
    if is_video(cfg.input):
        return predict_video(cfg)
    if str(cfg.ckpt).lower().endswith(".onnx"):
        return predict_onnx(cfg)
    files, out = prepare_prediction(cfg)
    model = load_model(cfg.ckpt)
    inf = cfg.get("inference") or {}
    if inf.get("optimize", True):
        model.optimize_for_inference(
            precision=str(inf.get("precision", "fp32")), compile=bool(inf.get("compile", False))
        )
    names = model.class_names
    model.predict_heatmaps = bool(cfg.get("draw_heatmap", False))
    writer = DetectionWriter(
        out,
        files=files,
        class_names=names,
        cat_ids=model.label_to_cat_id or list(range(len(names))),
        draw_threshold=draw_threshold(cfg),
        heatmap_alpha=float(cfg.get("heatmap_alpha", 0.5)),
    )
    loader = DataLoader(
        ImageFolder(files, model.input_size),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.get("num_workers", 0)),
        collate_fn=collate_images,
    )
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}.get(str(cfg.device), str(cfg.device))
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[writer],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.predict(model, dataloaders=loader, return_predictions=False)
    writer.finish()
    return writer.summary()


def predict_onnx(cfg: Any) -> dict[str, Any]:
    """``predict`` for ``cfg.ckpt`` = an exported ``.onnx`` model: the same inputs (``input``,
    ``output``, ``draw_threshold``, ``batch_size``, ``device``, ``num_workers``) and outputs as
    :func:`ttfnet_lightning.deploy.predict.predict`, with onnxruntime instead of the PyTorch model
    (``inference.*`` does not apply)."""
    files, out = prepare_prediction(cfg)  # inputs listed, output checked: before the model is loaded
    detector = OnnxDetector(cfg.ckpt, device=str(cfg.get("device", "cpu")))
    names = detector.class_names
    writer = DetectionWriter(
        out,
        files=files,
        class_names=names,
        cat_ids=detector.label_to_cat_id or list(range(len(names))),
        draw_threshold=draw_threshold(cfg),
    )
    loader = DataLoader(
        ImageFolder(files, detector.input_size),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.get("num_workers", 0)),
        collate_fn=collate_images,
    )
    for i, batch in enumerate(loader):
        preds = (
            detector.detect(batch["images"], orig_sizes=[m["orig_size"] for m in batch["meta"]])
            if len(batch["meta"])
            else []
        )
        writer.write_on_batch_end(None, None, preds, None, batch, i)
    writer.finish()
    return writer.summary(f"onnxruntime, {cfg.ckpt}") | {"backend": "onnxruntime"}
