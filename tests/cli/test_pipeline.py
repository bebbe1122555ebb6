"""End to end on the built-in data (64 px, a few steps): train + validate + checkpoint + reload +
evaluate + predict, resume, W&B offline, multirun; plus short runs on the real COCO/VOC subsets."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, compose, offline_run_bytes
from ttfnet_lightning.data.errors import DataError
from ttfnet_lightning.deploy.predict import predict
from ttfnet_lightning.training.callbacks import CocoResultsWriter
from ttfnet_lightning.training.evaluate import evaluate
from ttfnet_lightning.training.lit_module import TTFNetModule
from ttfnet_lightning.training.run import train


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny training run (2 epochs x 2 steps) shared by the tests below."""
    out = tmp_path_factory.mktemp("run")
    value = train(compose("train", [*TINY_TRAIN, f"output_dir={out}", "trainer.log_every_n_steps=1"]))
    assert isinstance(value, float) and 0.0 <= value <= 100.0
    return out


def test_train_writes_checkpoints_and_metrics(trained):
    ckpts = trained / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    assert list(ckpts.glob("best-*.ckpt")), list(ckpts.iterdir())
    rows = read_csv(trained / "metrics.csv")
    for key in (
        "train/loss",
        "train/loss_heatmap",
        "train/loss_box",
        "train/lr/weights",
        "train/lr/biases",
        "val/AP",
        "val/AP50",
        "val/AP75",
        "val/loss",
        "time/train_seconds",
        "time/step",
    ):
        assert column(rows, key), f"{key} missing from metrics.csv"
    # time to accuracy: one entry per validation, cumulative and increasing with the step
    seconds, steps = column(rows, "time/train_seconds"), column(rows, "time/step")
    assert len(seconds) == 2 and seconds[0] > 0 and seconds[1] > seconds[0] and steps == [2.0, 4.0]
    assert (trained / "config_resolved.yaml").is_file()


def test_checkpoint_reloads_without_hydra(trained):
    model = TTFNetModule.load_from_checkpoint(str(trained / "checkpoints" / "last.ckpt"), map_location="cpu")
    assert model.num_classes >= 3 and model.input_size == (64, 64)
    assert model.hparams.kernel["alpha"] == 0.54 and model.hparams.net["backbone"] == "r18"
    # the checkpoint holds the argument groups as plain dicts (no OmegaConf, no dataclasses)
    hp = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert sorted(hp) == ["data_info", "decode", "kernel", "loss", "multiscale", "net", "optim"]
    assert all(type(v) is dict for v in hp.values()) and hp["data_info"]["batch_size"] == 8
    model.eval()
    with torch.no_grad():
        heatmap, wh = model(model.normalize(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)))
    assert heatmap.shape == (1, model.num_classes, 16, 16) and wh.shape == (1, 4, 16, 16)


def test_resume_continues_at_the_same_step(trained, tmp_path):
    last = trained / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4
    overrides = [*TINY_TRAIN, f"output_dir={tmp_path}", "schedule.max_epochs=3", f"ckpt_path={last}"]
    train(compose("train", overrides))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 6 and state["epoch"] == 2
    rows = read_csv(tmp_path / "metrics.csv")
    assert column(rows, "time/step") == [6.0]  # only the third epoch ran
    assert column(rows, "time/train_seconds")[0] > 0


def test_evaluate_reports_ap_and_speed(trained, tmp_path, caplog):
    cfg = compose(
        "evaluate",
        [
            f"ckpt={trained / 'checkpoints' / 'last.ckpt'}",
            "data.datamodule.num_val=8",
            "data.datamodule.num_workers=0",
            "trainer=cpu",
            "speed_iters=2",
            f"output_dir={tmp_path}",
        ],
    )
    with caplog.at_level(logging.INFO):
        metrics = evaluate(cfg)
    assert "GPU available" in caplog.text and "Tip:" not in caplog.text  # Lightning's logger tip left out
    for key in ("val/AP", "val/AP50", "model_only_images_per_s_batch1", "end_to_end_images_per_s"):
        assert key in metrics
    assert metrics["model_only_images_per_s_batch1"] > 0 and metrics["num_images"] == 8
    assert json.loads((tmp_path / "metrics.json").read_text())["val/AP50"] == metrics["val/AP50"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert all(written[k] == pytest.approx(v) for k, v in metrics.items() if isinstance(v, float)), written
    assert all(0.0 <= metrics[k] <= 100.0 for k in ("val/AP", "val/AP50")) and metrics["end_to_end_images_per_s"] > 0
    dets = json.loads((tmp_path / "detections_val.json").read_text())
    assert dets and all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in dets)
    # detections of the 8 evaluated images only, valid classes, boxes inside the 64 x 64 images, top-k scores
    num_classes = TTFNetModule.load_from_checkpoint(
        str(trained / "checkpoints" / "last.ckpt"), map_location="cpu"
    ).num_classes
    assert len({d["image_id"] for d in dets}) == 8 and all(0 <= d["category_id"] < num_classes for d in dets)
    assert all(
        0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 64.01 and y + h <= 64.01
        for x, y, w, h in (d["bbox"] for d in dets)
    )
    assert all(0.0 < d["score"] <= 1.0 for d in dets) and len(dets) <= 8 * 100


def test_evaluate_each_precision_and_the_network_as_trained(trained, tmp_path, monkeypatch):
    """inference.precisions=[fp32,bf16]: AP and speeds for each, one detections JSON each, each
    validated by the inference path at its precision (BN folded: the option is not a no-op); the
    optimised fp32 path scores what the network as trained (inference.optimize=false) scores."""
    from torch import nn

    seen: list[tuple[str, str, bool]] = []  # (network type, precision, has BatchNorm) per validation step
    real_step = TTFNetModule.validation_step

    def recording_step(self, batch, batch_idx, *args):
        seen.append(
            (
                type(self.net).__name__,
                getattr(self.net, "precision", "fp32"),
                any(isinstance(m, nn.BatchNorm2d) for m in self.net.modules()),
            )
        )
        return real_step(self, batch, batch_idx, *args)

    monkeypatch.setattr(TTFNetModule, "validation_step", recording_step)
    base = [
        f"ckpt={trained / 'checkpoints' / 'last.ckpt'}",
        "data.datamodule.num_val=8",
        "data.datamodule.num_workers=0",
        "trainer=cpu",
        "speed_iters=2",
    ]
    metrics = evaluate(compose("evaluate", [*base, "inference.precisions=[fp32,bf16]", f"output_dir={tmp_path / 'a'}"]))
    assert seen == [("InferenceModel", "fp32", False), ("InferenceModel", "bf16", False)], seen
    seen.clear()
    assert set(metrics["by_precision"]) == {"fp32", "bf16"} and metrics["precision"] == "fp32"
    assert all(m["model_only_images_per_s_batch1"] > 0 and "val/AP50" in m for m in metrics["by_precision"].values())
    assert (tmp_path / "a" / "detections_val.json").is_file() and (
        tmp_path / "a" / "detections_val_bf16.json"
    ).is_file()
    plain = evaluate(compose("evaluate", [*base, "inference.optimize=false", f"output_dir={tmp_path / 'b'}"]))
    assert seen == [("TTFNet", "fp32", True)], seen
    for key in ("val/AP", "val/AP50", "val/APs"):
        assert plain[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert plain["val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-4)
    # the AP of a 4-step model is near 0 whatever the path does: compare the detections themselves
    key = lambda d: (d["image_id"], -d["score"], d["category_id"])  # noqa: E731
    # (a detection scored within 1e-4 of the decoder's threshold may fall on either side of it: left out)
    clear = lambda dets: [d for d in dets if d["score"] >= 0.01 + 1e-4]  # noqa: E731  (model.score_threshold 0.01)
    fast = clear(sorted(json.loads((tmp_path / "a" / "detections_val.json").read_text()), key=key))
    slow = clear(sorted(json.loads((tmp_path / "b" / "detections_val.json").read_text()), key=key))
    assert len(fast) == len(slow) > 0
    assert [d["score"] for d in fast] == pytest.approx([d["score"] for d in slow], abs=1e-4)
    # bf16 really ran in bf16: the same detections to bf16 rounding, not bit for bit
    half = sorted(json.loads((tmp_path / "a" / "detections_val_bf16.json").read_text()), key=key)
    assert half and {d["image_id"] for d in half} == {d["image_id"] for d in fast}
    assert sorted(d["score"] for d in half) != sorted(d["score"] for d in fast)
    assert max(d["score"] for d in half) == pytest.approx(max(d["score"] for d in fast), abs=0.02)
    # each detection of one path has its twin in the other (near-ties may come in either order)
    for d in fast:
        assert any(
            e["image_id"] == d["image_id"]
            and e["category_id"] == d["category_id"]
            and abs(e["score"] - d["score"]) < 1e-4
            and max(abs(a - b) for a, b in zip(e["bbox"], d["bbox"])) < 1e-2
            for e in slow
        ), d


def test_evaluate_rejects_data_with_other_classes(trained, tmp_path, raccoon):
    cfg = compose(
        "evaluate",
        [
            f"ckpt={trained / 'checkpoints' / 'last.ckpt'}",
            "data=voc",
            f"data.datamodule.root={raccoon}",
            "trainer=cpu",
            f"output_dir={tmp_path}",
        ],
    )
    with pytest.raises(ValueError, match="classes"):
        evaluate(cfg)


def test_predict_draws_boxes_and_writes_coco_json(trained, tmp_path):
    from torchvision.io import write_png

    src = tmp_path / "images"
    src.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(80, 120), (64, 64), (100, 70)]):
        write_png(torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=gen), str(src / f"img{i}.png"))
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred"
    cfg = compose(
        "predict",
        [
            f"ckpt={trained / 'checkpoints' / 'last.ckpt'}",
            f"input={src}",
            f"output={out}",
            "draw_threshold=0.0",
            "device=cpu",
        ],
    )
    summary = predict(cfg)
    assert summary["num_images"] == 3 and summary["skipped"] == 1
    assert sorted(p.name for p in out.glob("*.jpg")) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    index = json.loads((out / "images.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in index["images"]}
    for d in json.loads((out / "detections.json").read_text()):
        x, y, bw, bh = d["bbox"]
        W, H = sizes[d["image_id"]]
        assert 0 <= x and 0 <= y and x + bw <= W + 0.01 and y + bh <= H + 0.01  # original pixels


def test_predict_draws_class_colours_and_the_heatmap(trained, tmp_path):
    from torchvision.io import decode_image, write_png

    from ttfnet_lightning.core.drawing import class_color

    src = tmp_path / "images"
    src.mkdir()
    write_png(torch.full((3, 96, 128), 128, dtype=torch.uint8), str(src / "grey.png"))
    drawn = {}
    for heat in ("false", "true"):
        out = tmp_path / f"pred-{heat}"
        predict(
            compose(
                "predict",
                [
                    f"ckpt={trained / 'checkpoints' / 'last.ckpt'}",
                    f"input={src}",
                    f"output={out}",
                    "draw_threshold=0.0",
                    "device=cpu",
                    f"draw_heatmap={heat}",
                ],
            )
        )
        drawn[heat] = decode_image(str(out / "grey.jpg")).int()
    dets = json.loads((tmp_path / "pred-false" / "detections.json").read_text())
    assert dets
    # boxes in their class colours: the drawn picture has pixels near each detected class's colour
    plain = drawn["false"].reshape(3, -1).T
    for c in {d["category_id"] for d in dets if d["score"] >= 0.0}:
        near = (plain - torch.tensor(class_color(c))).abs().amax(1) <= 40
        assert near.any(), f"no pixel in class {c}'s colour"
    # the heatmap overlay darkens the grey image where the heatmap is low (opacity 0.5)
    corner_plain, corner_heat = drawn["false"][:, 90:, :4].float().mean(), drawn["true"][:, 90:, :4].float().mean()
    assert corner_heat < corner_plain - 30


def test_tools_give_clear_errors(tmp_path):
    from ttfnet_lightning.training.checkpoints import load_model

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not a ttfnet-lightning"):
        load_model(bad)
    from ttfnet_lightning.deploy.predict import list_images

    with pytest.raises(FileNotFoundError, match="input not found"):
        list_images(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)


def test_wandb_offline_run_contains_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    base = [o for o in TINY_TRAIN if not o.startswith(("logger=", "callbacks.log_val_images", "schedule.max_epochs"))]
    overrides = [
        *base,
        f"output_dir={tmp_path}",
        "logger=wandb",
        "schedule.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "callbacks.log_val_images=2",
    ]
    train(compose("train", overrides))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    keys = (b"train/loss", b"val/AP50", b"time/train_seconds", b"val/predictions", b"val/heatmaps")
    data = offline_run_bytes(runs[0], keys)
    for key in keys:
        assert key in data, f"{key!r} not in the offline W&B run"
    assert (tmp_path / "metrics.csv").is_file()  # CSV as well


def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY_TRAIN if not o.startswith("schedule.max_epochs")]
    cmd = [
        sys.executable,
        "-m",
        "ttfnet_lightning.train",
        "-m",
        "kernel.beta=0.3,0.54",
        "schedule.max_epochs=1",
        *overrides,
        f"hydra.sweep.dir={sweep}",
    ]
    env = os.environ | {"WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert column(read_csv(sweep / job / "metrics.csv"), "val/AP50"), f"job {job} did not validate"
    from omegaconf import OmegaConf

    betas = sorted(OmegaConf.load(sweep / job / "config_resolved.yaml").kernel.beta for job in ("0", "1"))
    assert betas == [0.3, 0.54]


# ----------------------------------------------------------------------------- real data


def test_short_coco_run_and_official_evaluator(coco_mini, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    overrides = [
        "data=coco",
        f"data.datamodule.root={coco_mini}",
        "data.datamodule.input_size=[128,128]",
        "data.datamodule.batch_size=8",
        "data.datamodule.num_workers=0",
        "schedule.max_epochs=1",
        "schedule.warmup_steps=2",
        "trainer=cpu",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks.log_val_images=0",
        f"output_dir={tmp_path}",
    ]
    value = train(compose("train", overrides))
    assert value is not None
    gt = COCO(str(coco_mini / "annotations" / "instances_val2017.json"))
    results = json.loads((tmp_path / "detections_val.json").read_text())
    assert results, "no detections written"
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert 0.0 <= ev.stats[0] <= 1.0
    _check_finished_run(tmp_path, steps=2, class_names=[c["name"] for c in gt.loadCats(sorted(gt.getCatIds()))])
    assert {r["image_id"] for r in results} == set(gt.getImgIds())  # every validation image got detections


def _check_finished_run(out, *, steps: int, class_names: list[str]) -> None:
    """What a finished short run leaves: results.json (finished, its step count, finite metrics in
    range, the data's fingerprint), metrics.csv rows up to that step, and a checkpoint that knows
    the data's classes."""
    import math

    from ttfnet_lightning.training.checkpoints import load_model

    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["global_step"] == steps
    assert all(math.isfinite(v) for v in res["metrics"].values())
    assert 0 <= res["metrics"]["val/AP50"] <= 100 and res["metrics"]["val/loss"] > 0
    assert res["data_fingerprint"] and all(res["data_fingerprint"].values())
    rows = read_csv(out / "metrics.csv")
    assert max(column(rows, "time/step")) == steps and column(rows, "val/loss")
    assert load_model(out / "checkpoints" / "last.ckpt").class_names == class_names


def test_coco_label_ids_round_trip(coco_mini, tmp_path):
    """Ground-truth boxes written as detections through the module's results path score AP 1.0
    with pycocotools' own COCOeval: label -> category id mapping and coordinates are right."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ttfnet_lightning.data import CocoDataModule

    dm = CocoDataModule(root=str(coco_mini), input_size=(128, 128), batch_size=8, num_workers=0)
    module = TTFNetModule(
        net={"deformable": False},
        data_info={"num_classes": dm.num_classes, "label_to_cat_id": dm.label_to_cat_id, "input_size": [128, 128]},
    )
    writer = CocoResultsWriter()
    dm.setup("validate")
    image_ids = []
    for batch in dm.val_dataloader():
        dets = []
        for m in batch["meta"]:
            keep = m["gt_iscrowd"] == 0
            n = int(keep.sum())
            dets.append({"boxes": m["gt_boxes"][keep], "scores": torch.ones(n), "labels": m["gt_labels"][keep]})
            image_ids.append(int(m["image_id"]))
        writer.add(dets, batch["meta"], module.label_to_cat_id)
    path = writer.write(tmp_path / "det.json")
    gt = COCO(str(coco_mini / "annotations" / "instances_val2017.json"))
    ev = COCOeval(gt, gt.loadRes(str(path)), "bbox")
    ev.params.imgIds = sorted(image_ids)
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] > 0.99 and ev.stats[1] > 0.99


def test_short_voc_run(raccoon, tmp_path):
    overrides = [
        "experiment=raccoon",
        f"data.datamodule.root={raccoon}",
        "data.datamodule.input_size=[128,128]",
        "data.datamodule.num_workers=0",
        "schedule.max_epochs=1",
        "schedule.warmup_steps=2",
        "trainer=cpu",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks.log_val_images=0",
        f"output_dir={tmp_path}",
    ]
    value = train(compose("train", overrides))
    rows = read_csv(tmp_path / "metrics.csv")
    assert value is not None and column(rows, "val/AP50")
    _check_finished_run(tmp_path, steps=2, class_names=["raccoon"])
    dets = json.loads((tmp_path / "detections_val.json").read_text())
    assert dets and {d["category_id"] for d in dets} == {0}  # VOC: labels are their own ids
    # evaluate remembers the data: the checkpoint alone evaluates on raccoon's 40 val images, beside the run
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    metrics = evaluate(compose("evaluate", [f"ckpt={ckpt}", "trainer=cpu", "speed_iters=2"]))
    assert metrics["num_images"] == 40
    assert metrics["val/AP50"] == pytest.approx(column(rows, "val/AP50")[-1], abs=1e-3)
    assert len(list(tmp_path.glob("evaluate/*/metrics.json"))) == 1
    with pytest.raises(DataError, match=r"data.datamodule.num_val: not a setting .*VocDataModule"):
        evaluate(compose("evaluate", [f"ckpt={ckpt}", "trainer=cpu", "data.datamodule.num_val=8"]))
    # viz detections too: raccoon's validation images with their boxes (it drew built-in shapes before)
    from ttfnet_lightning import viz
    from ttfnet_lightning.paper.workbench import validation_samples
    from ttfnet_lightning.training.checkpoint_data import checkpoint_datamodule

    samples = validation_samples(checkpoint_datamodule(ckpt, input_size=[128, 128]), 2)
    assert len(samples) == 2 and all(s[0].shape == (3, 128, 128) and set(s[2].tolist()) == {0} for s in samples)
    assert viz.main(["detections", "--ckpt", str(ckpt), "--num-images", "2", "--out", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_interrupted_run_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    """A crash (or Ctrl-C) mid-epoch writes checkpoints/interrupted.ckpt at the step reached,
    and ``ckpt_path=`` resumes from it."""
    import pytorch_lightning as pl

    import ttfnet_lightning.training.run as train_mod

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise RuntimeError("simulated crash")

    build = train_mod.build_callbacks
    monkeypatch.setattr(train_mod, "build_callbacks", lambda cfg, out: [*build(cfg, out), Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose("train", [*TINY_TRAIN, f"output_dir={tmp_path / 'a'}"]))
    ckpt = tmp_path / "a" / "checkpoints" / "interrupted.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    monkeypatch.setattr(train_mod, "build_callbacks", build)
    train(compose("train", [*TINY_TRAIN, f"output_dir={tmp_path / 'b'}", f"ckpt_path={ckpt}"]))
    assert (
        torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        == 4
    )


def test_rerun_into_the_same_output_dir_resumes(trained, tmp_path):
    """With OnExceptionCheckpoint, Lightning resumes from output_dir/checkpoints/last.ckpt when
    ckpt_path is not given (docs/training.md): no work is lost by re-running."""
    import shutil

    out = tmp_path / "again"
    shutil.copytree(trained / "checkpoints", out / "checkpoints")
    train(compose("train", [*TINY_TRAIN, f"output_dir={out}", "schedule.max_epochs=3"]))
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
    assert column(read_csv(out / "metrics.csv"), "time/step") == [6.0]


def test_backbone_pretraining_run_recreates_a_missing_export(tmp_path, capsys):
    """experiment=cpu_pretrain writes the backbone file; a rerun skips the finished run but writes
    the file again from last.ckpt if it is gone, and trains again only when the checkpoint is gone
    too (a fresh clone: results.json is tracked, weights are not)."""
    import shutil

    out, pth = tmp_path / "r18-run", tmp_path / "r18.pth"
    overrides = [
        "experiment=cpu_pretrain",
        *TINY_TRAIN,
        "schedule.max_epochs=1",
        f"output_dir={out}",
        f"export_backbone={pth}",
    ]
    train(compose("train", overrides))
    first = torch.load(pth, map_location="cpu")
    assert any(k.startswith("layer4.") for k in first), list(first)[:5]
    finished_at = json.loads((out / "results.json").read_text())["finished_at"]

    pth.unlink()
    capsys.readouterr()
    train(compose("train", overrides))
    assert "skipping" in capsys.readouterr().out
    again = torch.load(pth, map_location="cpu")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((out / "results.json").read_text())["finished_at"] == finished_at  # not trained again

    pth.unlink()
    shutil.rmtree(out / "checkpoints")
    train(compose("train", overrides))
    assert "training it again" in capsys.readouterr().out
    assert pth.is_file() and (out / "checkpoints" / "last.ckpt").is_file()


def test_step_timer_breaks_each_training_step_down(tmp_path):
    """TINY_TRAIN: 2 epochs of 2 steps; the first step (warm-up) is left out of the summary."""
    import ttfnet_lightning.training.run as train_mod
    from ttfnet_lightning.training.profiling import PHASES, StepTimer

    timer = StepTimer(skip=1)
    build = train_mod.build_callbacks
    try:
        train_mod.build_callbacks = lambda c, o: [*build(c, o), timer]
        train(compose("train", [*TINY_TRAIN, "trainer.log_every_n_steps=1", f"output_dir={tmp_path / 'a'}"]))
    finally:
        train_mod.build_callbacks = build
    assert len(timer.steps) == 3
    summary = timer.summary()
    assert set(summary) == {*PHASES, "total"}
    assert all(summary[p]["ms"] > 0 for p in ("forward", "backward", "target_encoding", "optimizer")), summary
    assert sum(summary[p]["share"] for p in PHASES) == pytest.approx(1.0)
    # switched on from the config, it logs each phase with the training metrics
    out = tmp_path / "b"
    train(
        compose("train", [*TINY_TRAIN, "trainer.log_every_n_steps=1", "callbacks.step_timer=true", f"output_dir={out}"])
    )
    rows = read_csv(out / "metrics.csv")
    for p in PHASES:
        assert column(rows, f"time/step_{p}_ms"), p


def test_channels_last_training_matches_the_default_layout(tmp_path, monkeypatch):
    """speed.channels_last=true: the 4-D conv weights and every training batch the network sees are
    channels_last (the option is not a no-op); same losses to float rounding, and a checkpoint
    that loads like any other."""
    from ttfnet_lightning.training.checkpoints import load_model
    from ttfnet_lightning.training.lit_module import TTFNetModule

    seen: list[tuple[bool, bool]] = []  # (weights channels_last, batch channels_last) per training step
    real_step = TTFNetModule.training_step

    def recording_step(self, batch, batch_idx):
        weights = [p for p in self.net.parameters() if p.dim() == 4]
        seen.append(
            (
                all(p.is_contiguous(memory_format=torch.channels_last) for p in weights),
                batch["images"].is_contiguous(memory_format=torch.channels_last),
            )
        )
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(TTFNetModule, "training_step", recording_step)
    base = [*TINY_TRAIN, "exact_resume=true", "trainer.log_every_n_steps=1"]
    train(compose("train", [*base, f"output_dir={tmp_path / 'a'}"]))
    assert seen and not any(w for w, _ in seen)  # the default layout: contiguous (NCHW) weights
    seen.clear()
    train(compose("train", [*base, "speed.channels_last=true", f"output_dir={tmp_path / 'b'}"]))
    assert seen and all(w and b for w, b in seen), seen
    a = column(read_csv(tmp_path / "a" / "metrics.csv"), "train/loss")
    b = column(read_csv(tmp_path / "b" / "metrics.csv"), "train/loss")
    assert len(a) == len(b) > 0 and a == pytest.approx(b, rel=1e-3)
    model = load_model(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert model.num_classes >= 3


@pytest.mark.slow
def test_compiled_training_runs_and_keeps_plain_checkpoint_keys(tmp_path, monkeypatch):
    """speed.compile=true: every training step runs the network through torch.compile (the module is
    compiled in place and dynamo captures graphs: the option is not a no-op), the losses are finite,
    and the checkpoint holds the plain network's keys (no ``_orig_mod``), loading like any other."""
    import math

    import torch._dynamo

    from ttfnet_lightning.training.checkpoints import load_model

    compiled: list[bool] = []
    real_step = TTFNetModule.training_step

    def recording_step(self, batch, batch_idx):
        compiled.append(getattr(self.net, "_compiled_call_impl", None) is not None)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(TTFNetModule, "training_step", recording_step)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(
        compose("train", [*TINY_TRAIN, "speed.compile=true", "trainer.log_every_n_steps=1", f"output_dir={tmp_path}"])
    )
    assert compiled == [True] * 4, compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, dict(torch._dynamo.utils.counters["stats"])
    losses = column(read_csv(tmp_path / "metrics.csv"), "train/loss")
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in k for k in state)
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert set(model.state_dict()) == set(state) and all(
        torch.equal(model.state_dict()[k], v) for k, v in state.items()
    )
