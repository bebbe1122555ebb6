"""Our validation metric (``TTFNetModule.ground_truth`` + the torchmetrics COCO mAP) against the
official pycocotools ``COCOeval`` on the real COCO subset: all six numbers agree to 0.1, area
buckets included (COCO buckets by the annotation's ``area``, not the box area)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose
from ttfnet_lightning.core.metrics import COCO_STATS
from ttfnet_lightning.data import CocoDataModule
from ttfnet_lightning.training.callbacks import CocoResultsWriter
from ttfnet_lightning.training.evaluate import coco_official_metrics, evaluate
from ttfnet_lightning.training.lit_module import TTFNetModule

OURS = {"AP": "map", "AP50": "map_50", "AP75": "map_75", "APs": "map_small", "APm": "map_medium", "APl": "map_large"}


def _jittered_detections(meta: dict, num_classes: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Detections from one image's ground truth: most boxes, jittered by ~8% of their size, some
    with the wrong class, random scores, plus a few random false positives (original pixels)."""
    boxes, labels = meta["gt_boxes"], meta["gt_labels"]
    keep = torch.rand(len(boxes), generator=gen) < 0.85
    boxes, labels = boxes[keep], labels[keep].clone()
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    boxes = boxes + 0.08 * wh * torch.randn(boxes.shape, generator=gen)
    wrong = torch.rand(len(labels), generator=gen) < 0.1
    labels[wrong] = torch.randint(0, num_classes, (int(wrong.sum()),), generator=gen)
    h, w = meta["orig_size"]
    k = 3
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
    fp = torch.cat([xy, xy + torch.rand(k, 2, generator=gen) * torch.tensor([w * 0.2, h * 0.2]) + 2], 1)
    boxes = torch.cat([boxes, fp]).clamp(min=0)
    boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=boxes.dtype))
    labels = torch.cat([labels, torch.randint(0, num_classes, (k,), generator=gen)])
    return {"boxes": boxes, "scores": torch.rand(len(boxes), generator=gen), "labels": labels}


def test_val_metric_equals_official_cocoeval(coco_mini: Path, tmp_path: Path):
    dm = CocoDataModule(
        root=coco_mini, input_size=(64, 64), batch_size=16, num_workers=0, check_cache_dir=tmp_path / "c"
    )
    dm.setup("validate")
    module = TTFNetModule(
        net={"deformable": False},
        data_info={"num_classes": dm.num_classes, "label_to_cat_id": dm.label_to_cat_id, "input_size": [64, 64]},
    )
    writer = CocoResultsWriter()
    gen = torch.Generator().manual_seed(0)
    for batch in dm.val_dataloader():  # the metric path of validation_step, with jittered ground truth
        dets = [_jittered_detections(m, dm.num_classes, gen) for m in batch["meta"]]
        module.val_map.update(dets, module.ground_truth(batch))
        writer.add(dets, batch["meta"], module.label_to_cat_id)
    res = module.val_map.compute()
    ours = {k: float(res[v]) * 100 for k, v in OURS.items()}
    path = writer.write(tmp_path / "detections_val.json")
    official = coco_official_metrics(dm.val_ann_file, path, dm.val_dataset.image_ids)
    assert set(official) == set(COCO_STATS)
    assert 20 < official["AP"] < 90 and all(v > 0 for v in official.values())  # a non-trivial test case
    for k in COCO_STATS:
        assert ours[k] == pytest.approx(official[k], abs=0.1), (k, ours, official)


def test_evaluate_prints_ours_and_the_official_numbers(coco_mini: Path, tmp_path: Path, capsys, monkeypatch):
    import pytorch_lightning as pl

    import ttfnet_lightning.training.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "model_speed", lambda *args, **kwargs: 1.0)  # speed is not tested here
    # an untrained model scores AP 0 on both sides: its decoder returns jittered ground truth instead,
    # so that ours and COCOeval are compared on a non-trivial case
    gen = torch.Generator().manual_seed(1)
    monkeypatch.setattr(
        TTFNetModule,
        "decode",
        lambda self, hm, wh, meta, size: [_jittered_detections(m, self.num_classes, gen) for m in meta],
    )

    dm = CocoDataModule(root=coco_mini, input_size=(64, 64), batch_size=16, num_workers=0, preflight=False)
    model = TTFNetModule(
        net={"deformable": False},
        decode={"topk": 10},
        data_info={"num_classes": dm.num_classes, "label_to_cat_id": dm.label_to_cat_id, "input_size": [64, 64]},
    )
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    cfg = compose(
        "evaluate",
        [
            f"ckpt={ckpt}",
            "data=coco",
            f"data.datamodule.root={coco_mini}",
            "data.datamodule.num_workers=0",
            f"data.datamodule.check_cache_dir={tmp_path / 'c'}",
            "trainer=cpu",
            "+trainer.limit_val_batches=1",
            "data.datamodule.batch_size=8",
            "speed_iters=2",
            f"output_dir={tmp_path / 'eval'}",
        ],
    )
    metrics = evaluate(cfg)
    out = capsys.readouterr().out
    assert "COCOeval" in out and "instances_val2017.json" in out and metrics["num_images"] == 8
    assert 20 < metrics["coco/AP"] < 95, metrics  # a non-trivial case
    for k in COCO_STATS:
        assert f"coco/{k}" in metrics and metrics[f"val/{k}"] == pytest.approx(metrics[f"coco/{k}"], abs=0.1)
