"""Streaming data (issue 11): ``python -m ttfnet_lightning.data.prepare`` writes litdata chunks and
``data=coco_stream`` streams them. On the real COCO subset (``../shared/data/coco-mini``, skipped
when absent): the stream yields the folder loader's samples and targets, every image once per epoch
across workers and (simulated) DDP ranks, a URL ``input_dir`` (litdata's ``local:`` scheme, no
network) and a short training run. Bad images follow the folder loader's policy at prepare time.
``slow``: two real DDP processes (gloo) share the stream out."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose, shared_data_dir

pytest.importorskip("litdata", reason="the streaming tests need litdata (pip install 'ttfnet-lightning[stream]')")

from litdata import StreamingDataLoader  # noqa: E402

from ttfnet_lightning.data import CocoDetection, CocoStreamDataModule, DataError, collate_detection  # noqa: E402
from ttfnet_lightning.data import prepare as data_prepare  # noqa: E402
from ttfnet_lightning.data.stream import require_litdata  # noqa: E402
from ttfnet_lightning.data.stream_dataset import StreamingCocoDetection  # noqa: E402
from ttfnet_lightning.data.transforms import build_transforms  # noqa: E402

COCO_MINI = shared_data_dir() / "coco-mini"
SIZE = (128, 128)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """coco-mini prepared once for this file, in small chunks (several per split, so that workers share them out)."""
    if not (COCO_MINI / "annotations").is_dir():
        pytest.skip(f"real COCO subset not found at {COCO_MINI}")
    tmp = tmp_path_factory.mktemp("stream")
    out = tmp / "coco-stream"
    args = [
        "data=coco",
        f"data.datamodule.root={COCO_MINI}",
        f"data.datamodule.check_cache_dir={tmp / 'cache'}",
        f"output={out}",
        "chunk_bytes=2MB",
    ]
    assert data_prepare.main(args) == 0
    assert data_prepare.main(args) == 1  # an existing prepared folder is not overwritten ...
    assert data_prepare.main([*args, "overwrite=true"]) == 0  # ... unless asked
    return out


def _assert_same_sample(a, b, what: str) -> None:
    (img_a, t_a), (img_b, t_b) = a, b
    assert type(img_a) is type(img_b) and img_a.dtype == img_b.dtype and torch.equal(img_a, img_b), what
    assert set(t_a) == set(t_b), what
    for k, v in t_a.items():
        if isinstance(v, torch.Tensor):
            assert type(v) is type(t_b[k]) and v.dtype == t_b[k].dtype and torch.equal(v, t_b[k]), f"{what}: {k}"
        else:
            assert v == t_b[k], f"{what}: {k}"
    assert t_a["boxes"].canvas_size == t_b["boxes"].canvas_size


def test_stream_yields_the_folder_loaders_samples(prepared: Path):
    """Every image of both splits: same image ids, same decoded (and resized) images, same boxes,
    labels, crowd flags, areas, original sizes; the same classes and category ids."""
    dm = CocoStreamDataModule(input_dir=str(prepared), input_size=SIZE, batch_size=8, num_workers=0)
    dm.setup("fit")
    meta = json.loads((prepared / "metadata.json").read_text())
    ref_val = CocoDetection(root=COCO_MINI, split="val2017")
    assert dm.class_names == ref_val.class_names and dm.label_to_cat_id == ref_val.label_to_cat_id
    assert Path(dm.val_ann_file).read_bytes() == ref_val.ann_file.read_bytes()
    no_flip = build_transforms(
        input_size=SIZE, train=True, augment=False, hflip=0.0
    )  # training pipeline, no randomness
    for split, stream, keep_empty, tf in (
        ("train2017", dm.train_dataset, False, no_flip),
        ("val2017", dm.val_dataset, True, dm.val_transforms()),
    ):
        ref = CocoDetection(root=COCO_MINI, split=split, keep_empty=keep_empty, transforms=tf)
        stream.transforms = tf
        got = {t["image_id"]: (img, t) for img, t in stream}
        assert len(got) == len(stream) == len(ref) and sorted(got) == sorted(ref.image_ids)
        assert stream.image_ids == ref.image_ids  # stored in the folder loader's order
        name = "train" if split.startswith("train") else "val"
        assert meta["splits"][name]["num_images"] == len(ref) and meta["splits"][name]["num_excluded"] == 0
        for i in range(len(ref)):
            _assert_same_sample(ref[i], got[ref.image_ids[i]], f"{split} image {ref.image_ids[i]}")
    assert dm.train_dataset.num_skipped == dm.val_dataset.num_skipped == 0


def _ids_only(monkeypatch) -> None:
    """Items -> their image id (no decode): the sharding tests look at ids only."""
    monkeypatch.setattr(StreamingCocoDetection, "to_sample", lambda self, item: int(item["image_id"]))


def test_two_workers_yield_every_image_once_per_epoch(prepared: Path, monkeypatch):
    _ids_only(monkeypatch)
    dm = CocoStreamDataModule(input_dir=str(prepared), input_size=SIZE, batch_size=4, num_workers=2)
    dm.setup("fit")
    train_ids = dm.train_dataset.image_ids
    loader = StreamingDataLoader(dm.train_dataset, batch_size=4, num_workers=2, collate_fn=list)
    epochs = [[i for b in loader for i in b] for _ in range(2)]
    for ids in epochs:
        assert Counter(ids) == Counter(train_ids)  # each image exactly once
    assert epochs[0] != epochs[1] and epochs[0] != train_ids  # shuffled, differently each epoch
    val = StreamingDataLoader(dm.val_dataset, batch_size=4, num_workers=2, collate_fn=list)
    orders = [[i for b in val for i in b] for _ in range(2)]
    assert Counter(orders[0]) == Counter(dm.val_dataset.image_ids) and orders[0] == orders[1]  # deterministic


def test_ranks_and_workers_share_the_images_out(prepared: Path, monkeypatch):
    """Two (simulated) DDP ranks with two workers each: validation sees every image exactly once;
    training sees each at most once, the same number of batches on every rank (litdata drops the
    remainder under DDP), all but fewer than a batch per worker."""
    import litdata.streaming.dataset as lds
    from litdata.utilities.env import _DistributedEnv

    _ids_only(monkeypatch)
    seen: dict[str, list[list[int]]] = {"train": [], "val": []}
    for rank in range(2):
        monkeypatch.setattr(lds._DistributedEnv, "detect", classmethod(lambda cls, r=rank: _DistributedEnv(2, r, 1)))
        dm = CocoStreamDataModule(input_dir=str(prepared), input_size=SIZE, batch_size=4, num_workers=2)
        dm.setup("fit")
        for name, ds in (("train", dm.train_dataset), ("val", dm.val_dataset)):
            seen[name].append(
                [i for b in StreamingDataLoader(ds, batch_size=4, num_workers=2, collate_fn=list) for i in b]
            )
    val = seen["val"][0] + seen["val"][1]
    assert Counter(val) == Counter(dm.val_dataset.image_ids) and set(seen["val"][0]).isdisjoint(seen["val"][1])
    train = seen["train"][0] + seen["train"][1]
    assert len(set(train)) == len(train) and set(train) <= set(dm.train_dataset.image_ids)
    assert len(seen["train"][0]) == len(seen["train"][1]) and len(dm.train_dataset.image_ids) - len(train) < 2 * 2 * 4


DDP_SCRIPT = """
import json, sys
import pytorch_lightning as pl
import torch
from ttfnet_lightning.data import CocoStreamDataModule

class Record(pl.LightningModule):  # records the image ids each rank sees, per epoch
    def __init__(self, out):
        super().__init__()
        self.w, self.out, self.seen = torch.nn.Parameter(torch.zeros(1)), out, {}
    def _record(self, split, batch):
        self.seen.setdefault(f"{split}{self.current_epoch}", []).extend(m["image_id"] for m in batch["meta"])
    def training_step(self, batch, i):
        self._record("train", batch)
        return self.w.sum() * batch["images"].float().mean()
    def validation_step(self, batch, i):
        self._record("val", batch)
    def on_fit_end(self):
        with open(f"{self.out}/rank{self.global_rank}.json", "w") as f:
            json.dump(self.seen, f)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

if __name__ == "__main__":
    dm = CocoStreamDataModule(input_dir=sys.argv[1], input_size=(64, 64), batch_size=4, num_workers=2)
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         enable_model_summary=False)
    trainer.fit(Record(sys.argv[2]), datamodule=dm)
"""


@pytest.mark.slow
def test_real_ddp_ranks_share_the_stream(prepared: Path, tmp_path: Path):
    """Two DDP processes (gloo), two workers each, two epochs: per epoch the ranks train on
    disjoint images (all but the remainder that evens them out) and validate every image exactly once."""
    script = tmp_path / "ddp_stream.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(prepared), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    meta = json.loads((prepared / "metadata.json").read_text())
    for epoch in range(2):
        a, b = ranks[0][f"train{epoch}"], ranks[1][f"train{epoch}"]
        assert (
            len(a) == len(b)
            and len(set(a + b)) == len(a + b)
            and set(a + b) <= set(meta["splits"]["train"]["image_ids"])
        )
        assert meta["splits"]["train"]["num_images"] - len(a + b) < 2 * 2 * 4
        a, b = ranks[0][f"val{epoch}"], ranks[1][f"val{epoch}"]
        assert Counter(a + b) == Counter(meta["splits"]["val"]["image_ids"])
    assert ranks[0]["train0"] != ranks[0]["train1"]  # reshuffled


def test_url_input_dir_downloads_into_the_cache(prepared: Path, tmp_path: Path):
    """A URL input_dir (litdata's ``local:`` scheme stands in for s3://: the same download path,
    no network): metadata, val annotations and chunks land in cache_dir; same samples."""
    cache = tmp_path / "cache"
    dm = CocoStreamDataModule(
        input_dir=f"local:{prepared}", cache_dir=str(cache), input_size=SIZE, batch_size=4, num_workers=0
    )
    local = CocoStreamDataModule(input_dir=str(prepared), input_size=SIZE, batch_size=4, num_workers=0)
    assert (
        Path(dm.val_ann_file).is_relative_to(cache)
        and Path(dm.val_ann_file).read_bytes() == Path(local.val_ann_file).read_bytes()
    )
    dm.setup("validate")
    local.setup("validate")
    for i in (0, len(local.val_dataset) - 1):
        _assert_same_sample(local.val_dataset[i], dm.val_dataset[i], f"val item {i}")
    assert any(cache.rglob("*.bin")), "no chunk downloaded into the cache"
    with pytest.raises(DataError, match="not a prepared stream folder"):
        CocoStreamDataModule(input_dir=str(tmp_path / "nothing"))


def test_short_training_run_on_the_stream(prepared: Path, tmp_path: Path):
    from ttfnet_lightning.training.run import train

    overrides = [
        "data=coco_stream",
        f"data.datamodule.input_dir={prepared}",
        "data.datamodule.input_size=[64,64]",
        "data.datamodule.batch_size=4",
        "data.datamodule.num_workers=0",
        "schedule.max_epochs=1",
        "schedule.warmup_steps=1",
        "trainer=cpu",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks.log_val_images=0",
        f"output_dir={tmp_path}",
    ]
    train(compose("train", overrides))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 2
    dets = json.loads((tmp_path / "detections_val.json").read_text())
    meta = json.loads((prepared / "metadata.json").read_text())
    assert {d["image_id"] for d in dets} <= set(meta["splits"]["val"]["image_ids"])
    assert {d["category_id"] for d in dets} <= set(meta["cat_ids"])


# ------------------------------------------------------------------ bad images, no litdata


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _messy_coco(root: Path) -> Path:
    """train: ok, truncated, corrupt, missing; val: ok, ok (64x48, one box each)."""
    kinds = {"train": ["ok", "truncated", "corrupt", "missing"], "val": ["ok", "ok"]}
    (root / "annotations").mkdir(parents=True)
    for split, ks in kinds.items():
        (root / split).mkdir()
        for i, kind in enumerate(ks):
            data = _jpeg(i)
            if kind != "missing":
                (root / split / f"a{i}.jpg").write_bytes(
                    data[:-20] if kind == "truncated" else b"\xff\xd8 not a jpeg" if kind == "corrupt" else data
                )
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(
                {
                    "images": [
                        {"id": 100 + i, "file_name": f"a{i}.jpg", "width": 64, "height": 48} for i in range(len(ks))
                    ],
                    "annotations": [
                        {
                            "id": 1 + i,
                            "image_id": 100 + i,
                            "category_id": 3,
                            "bbox": [2, 3, 20, 10],
                            "iscrowd": 0,
                            "area": 150.0,
                        }
                        for i in range(len(ks))
                    ],
                    "categories": [{"id": 3, "name": "thing"}],
                }
            )
        )
    return root


def test_prepare_applies_the_folder_loaders_bad_image_policy(tmp_path: Path, capsys, caplog):
    root = _messy_coco(tmp_path / "coco")
    out = tmp_path / "stream"
    args = [
        "data=coco",
        f"data.datamodule.root={root}",
        "data.datamodule.train_split=train",
        "data.datamodule.val_split=val",
        f"data.datamodule.check_cache_dir={tmp_path / 'cache'}",
        f"output={out}",
    ]
    assert data_prepare.main([*args, "data.datamodule.skip_bad_images=false"]) == 1  # bad images are fatal then
    assert not (out / "metadata.json").exists()
    assert data_prepare.main(args) == 0
    printed = capsys.readouterr().out
    assert "2 bad image(s) left out" in printed and "a2.jpg" in printed and "a3.jpg" in printed  # counted and named
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["splits"]["train"]["num_images"] == 2 and meta["splits"]["train"]["num_excluded"] == 2
    assert meta["splits"]["train"]["image_ids"] == [100, 101] and meta["cat_ids"] == [3]
    dm = CocoStreamDataModule(input_dir=str(out), input_size=(64, 64), batch_size=2, num_workers=0)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        batch = next(iter(dm.train_dataloader()))  # the truncated image loads, with a warning naming it
    assert sorted(m["image_id"] for m in batch["meta"]) == [100, 101] and not batch["excluded"]
    assert dm.train_dataset.num_truncated == 1 and any("a1.jpg" in r.getMessage() for r in caplog.records)
    # an item that does not decode (a damaged chunk) is dropped from its batch and counted, like a bad validation image
    item = {
        "image": b"\xff\xd8 broken",
        "image_id": 7,
        "file_name": b"x.jpg",
        "height": 48,
        "width": 64,
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "iscrowd": np.zeros(0, np.int64),
        "area": np.zeros(0, np.float32),
    }
    bad = dm.val_dataset.to_sample(item)
    assert bad.image_id == 7 and dm.val_dataset.num_skipped == 1
    assert collate_detection([bad, dm.val_dataset[0]])["excluded"] == [bad]
    dm.val_dataset.skip_bad_images = False
    with pytest.raises(DataError, match=r"x\.jpg \(image id 7"):
        dm.val_dataset.to_sample(item)
    assert data_prepare.main(["data=shapes", f"output={tmp_path / 'x'}"]) == 2  # COCO only


def test_litdata_is_optional(monkeypatch):
    """The core never imports litdata; without it, the streaming parts say which extra to install."""
    code = (
        "import sys, ttfnet_lightning, ttfnet_lightning.data, ttfnet_lightning.training.run, "
        "ttfnet_lightning.data.stream; "
        "assert 'litdata' not in sys.modules, 'litdata imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setitem(sys.modules, "litdata", None)  # as if not installed
    with pytest.raises(ImportError, match=r"ttfnet-lightning\[stream\]"):
        require_litdata()
    with pytest.raises(ImportError, match=r"ttfnet-lightning\[stream\]"):
        CocoStreamDataModule(input_dir="/nowhere")
