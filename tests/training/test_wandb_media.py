"""Validation images (training/wandb_media.py): W&B box overlays with classes and scores, read back
from a real offline run's files; TensorBoard's boxes still burnt into the pixels."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from pytorch_lightning.loggers import TensorBoardLogger
from test_tracking import read_offline_run

from ttfnet_lightning.training.callbacks import LogValPredictions as ReExported
from ttfnet_lightning.training.wandb_logger import FlatWandbLogger
from ttfnet_lightning.training.wandb_media import LogValPredictions, wandb_boxes

NAMES = ["circle", "square", "triangle"]


def test_wandb_boxes_format():
    boxes = wandb_boxes(
        pred_boxes=torch.tensor([[1.0, 2.0, 11.0, 12.0]]),
        pred_labels=torch.tensor([2]),
        pred_scores=torch.tensor([0.75]),
        gt_boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 0.0, 0.0]]),
        gt_labels=torch.tensor([1, -1]),  # -1: padding
        class_names=NAMES,
    )
    (pred,) = boxes["predictions"]["box_data"]
    assert pred["position"] == {"minX": 1.0, "minY": 2.0, "maxX": 11.0, "maxY": 12.0} and pred["domain"] == "pixel"
    assert pred["class_id"] == 2 and pred["scores"] == {"score": 0.75} and pred["box_caption"] == "triangle 0.75"
    (truth,) = boxes["ground_truth"]["box_data"]
    assert truth["class_id"] == 1 and truth["box_caption"] == "square" and "scores" not in truth
    assert boxes["predictions"]["class_labels"] == boxes["ground_truth"]["class_labels"] == dict(enumerate(NAMES))


class _Module:
    """What LogValPredictions reads of the LightningModule: normalisation, class names, a forward
    pass giving (B, C, H/4, W/4) heatmap logits."""

    mean = torch.full((1, 3, 1, 1), 100.0)
    std = torch.ones(1, 3, 1, 1)
    class_names = NAMES

    def __call__(self, images: torch.Tensor):
        B, _, H, W = images.shape
        return torch.zeros(B, len(NAMES), H // 4, W // 4), torch.zeros(B, 4, H // 4, W // 4)


class _FakeTensorBoard(TensorBoardLogger):
    """A TensorBoardLogger that records add_images (tensorboard is not installed here)."""

    def __init__(self) -> None:  # no tensorboard writer
        self.calls: dict[str, torch.Tensor] = {}

    @property
    def experiment(self):
        return SimpleNamespace(add_images=lambda key, images, step: self.calls.__setitem__(key, images))


def _batch_and_outputs():
    """One 64 x 64 image shown at half its original 128 x 128 size: two predictions (scores 0.9,
    0.1) and one below W&B's 0.05; one true box and a padding row."""
    batch = {
        "images": torch.zeros(1, 3, 64, 64),
        "meta": [{"orig_size": (128, 128), "image_id": 1}],
        "boxes": torch.tensor([[[4.0, 4.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0]]]),
        "labels": torch.tensor([[0, -1]]),
    }
    det = {
        "boxes": torch.tensor([[40.0, 40.0, 100.0, 100.0], [0.0, 0.0, 20.0, 20.0], [2.0, 2.0, 4.0, 4.0]]),
        "scores": torch.tensor([0.9, 0.1, 0.01]),
        "labels": torch.tensor([1, 2, 0]),
    }
    return batch, [det]


def test_val_predictions_as_wandb_overlays_and_burnt_in_for_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert ReExported is LogValPredictions  # training.callbacks still offers it
    wb = FlatWandbLogger(project="t", save_dir=str(tmp_path), offline=True, mode="offline")
    tb = _FakeTensorBoard()
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[wb, tb], global_step=7)
    batch, outputs = _batch_and_outputs()
    LogValPredictions(num_images=2).on_validation_batch_end(trainer, _Module(), outputs, batch, 0)
    run_dir = Path(wb.experiment.dir).parent
    wb.experiment.finish()

    run = read_offline_run(run_dir)
    (row,) = [r for r in run["history"] if "val/predictions/all_boxes" in r]
    assert row["val/predictions/count"] == 1 and row["trainer/global_step"] == 7
    (overlay,) = row["val/predictions/all_boxes"]
    pred = json.loads((run_dir / "files" / overlay["predictions"]["path"]).read_text())
    truth = json.loads((run_dir / "files" / overlay["ground_truth"]["path"]).read_text())
    # predictions above 0.05, at the logged image's scale (half the original), with class and score
    assert [(b["class_id"], b["scores"]["score"]) for b in pred["box_data"]] == [(1, 0.9), (2, 0.1)]
    assert [round(x) for x in pred["box_data"][0]["position"].values()] == [20, 20, 50, 50]
    assert pred["box_data"][0]["box_caption"] == "square 0.90" and pred["class_labels"]["1"] == "square"
    assert [b["class_id"] for b in truth["box_data"]] == [0]  # the padding row dropped
    assert any(r.get("val/heatmaps/count") == 1 for r in run["history"])  # the heatmap images as well

    # TensorBoard: the 0.9 prediction in red and the true box in lime, drawn into the pixels
    pic = tb.calls["val/predictions"][0]
    assert pic.dtype == torch.uint8 and pic.shape == (3, 64, 64)
    assert pic[:, 20, 30].tolist() == [255, 0, 0]  # top edge of the predicted box (20, 20, 50, 50)
    assert pic[:, 4, 12].tolist() == [0, 255, 0]  # top edge of the true box (4, 4, 20, 20)
    assert pic[:, 5, 10].tolist() == [100, 100, 100]  # right edge of the 0.1 prediction (0, 0, 10, 10): not drawn
    assert tb.calls["val/heatmaps"].shape == (1, 3, 64, 64)
