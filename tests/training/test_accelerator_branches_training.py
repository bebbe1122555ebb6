"""The accelerator-only branches of ``training`` and of the data modules' loaders, forced on the CPU (issue 25,
point 5; the ``core`` branches: tests/core/test_accelerator_branches.py).

* ``training/lit_module.py:201`` (``on_after_batch_transfer``): the uint8 batch is normalised and its targets encoded
  on the training device. On a GPU the encoder draws with static windows (``core/targets/windows.py:78``); here the
  hook runs on the CPU with that branch forced (``windows._FIT_ON_CPU = False``) and equals normalising with the
  module's mean/std and ``encode_targets`` by hand, bit for bit; also with ``speed.channels_last``
  (``use_channels_last``, lit_module.py:195), whose network output equals the contiguous one to float32 rounding.
* ``data/datamodules.py:99``, ``data/stream.py:334``: ``pin_memory=torch.cuda.is_available()``; forced with
  ``torch.cuda.is_available`` patched (the loaders are not iterated: pinning needs CUDA), and
  ``training/data_order.py:153`` (exact resume) keeps the setting.
* ``training/profiling.py:60/82`` (``StepTimer``): CUDA is synchronised at the phase boundaries on a GPU; forced
  with ``torch.cuda.is_available`` and ``torch.cuda.synchronize`` patched.
* ``training/checkpoints.py:37`` (``pick_device("auto")``): CUDA when available.
* ``conf/trainer/gpu.yaml``: ``trainer=gpu`` keeps the released code's fp32.

Not forced: ``training/evaluate.py:76/81`` (``model_speed`` synchronises CUDA around its timing; it makes its input
on the model's device, which needs CUDA, and it only times), and ``speed.compile`` (minutes of compilation on a CPU;
the compiled inference path: tests/core/test_inference.py::test_compiled_path_runs_and_equals_the_network, slow).
"""

from __future__ import annotations

import types

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import RunningStage

from conftest import compose
from ttfnet_lightning.core.targets import encode_targets, windows
from ttfnet_lightning.data.shapes_datamodule import ShapesDataModule
from ttfnet_lightning.training import checkpoints, profiling
from ttfnet_lightning.training.data_order import DataOrder
from ttfnet_lightning.training.lit_module import IMAGENET_MEAN, IMAGENET_STD, TTFNetModule

KERNEL = {"alpha": 0.5, "beta": 0.3, "area_weight": "sqrt"}  # not the defaults: the module must pass them on


@pytest.fixture(scope="module")
def module() -> TTFNetModule:
    torch.manual_seed(0)
    return TTFNetModule(kernel=KERNEL, data_info={"num_classes": 3, "input_size": [64, 96]})


def _batch(seed: int = 0) -> dict:
    """What the collate function makes: uint8 images, boxes padded with label -1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (3, 3, 64, 96), generator=g, dtype=torch.uint8)
    xy = torch.rand(3, 6, 2, generator=g) * torch.tensor([80.0, 50.0])
    boxes = torch.cat((xy, xy + 4 + torch.rand(3, 6, 2, generator=g) * 40), -1)
    labels = torch.randint(0, 3, (3, 6), generator=g)
    labels[0, 2:] = -1
    labels[2] = -1  # an image without boxes
    boxes[labels < 0] = 0.0
    meta = [{"image_id": i, "orig_size": (64, 96), "input_size": (64, 96)} for i in range(3)]
    return {"images": images, "boxes": boxes, "labels": labels, "meta": meta}


def _attach(module: TTFNetModule, stage: RunningStage | None) -> None:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.state.stage = stage
    module.trainer = trainer


@pytest.mark.parametrize("stage", [RunningStage.TRAINING, RunningStage.VALIDATING], ids=["fit", "validate"])
@pytest.mark.parametrize("fit_on_cpu", [True, False], ids=["cpu-windows", "device-windows"])
def test_batch_transfer_equals_normalising_and_encoding_by_hand(module, stage, fit_on_cpu, monkeypatch):
    batch = _batch()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    want_images = (batch["images"].to(torch.float32) - mean) / std
    want_targets = encode_targets(
        batch["boxes"], batch["labels"], num_classes=3, output_size=(16, 24), stride=4, **KERNEL
    )  # the CPU's fitted windows
    monkeypatch.setattr(windows, "_FIT_ON_CPU", fit_on_cpu)
    _attach(module, stage)
    out = module.on_after_batch_transfer(batch, 0)
    assert batch["images"].dtype == torch.uint8  # the loader's batch is not changed in place
    assert out["images"].dtype == torch.float32 and torch.equal(out["images"], want_images)
    assert out["images"].is_contiguous()
    for name, got, want in zip(("heatmap", "box_target", "reg_weight"), out["targets"], want_targets):
        assert torch.equal(got, want), name
    assert out["meta"] is batch["meta"] and torch.equal(out["boxes"], batch["boxes"])


def test_batch_transfer_outside_fit_and_for_float_batches(module):
    batch = _batch(1)
    _attach(module, RunningStage.PREDICTING)
    out = module.on_after_batch_transfer(batch, 0)
    assert "targets" not in out and out["images"].dtype == torch.float32  # prediction: normalised, no targets
    _attach(module, RunningStage.TRAINING)
    floats = dict(batch, images=out["images"])
    assert module.on_after_batch_transfer(floats, 0) is floats  # already normalised: untouched


def test_channels_last_batches_and_network(monkeypatch):
    torch.manual_seed(0)
    plain = TTFNetModule(data_info={"num_classes": 3, "input_size": [64, 96]}).eval()
    fast = TTFNetModule(data_info={"num_classes": 3, "input_size": [64, 96]}).eval()
    fast.load_state_dict(plain.state_dict())
    fast.use_channels_last()  # speed.channels_last (training/run.py)
    batch = _batch(2)
    _attach(plain, RunningStage.TRAINING)
    _attach(fast, RunningStage.TRAINING)
    a, b = plain.on_after_batch_transfer(batch, 0), fast.on_after_batch_transfer(batch, 0)
    assert b["images"].is_contiguous(memory_format=torch.channels_last) and not a["images"].is_contiguous(
        memory_format=torch.channels_last
    )
    assert torch.equal(a["images"], b["images"])
    for x, y in zip(a["targets"], b["targets"]):
        assert torch.equal(x, y)
    with torch.no_grad():
        out_a, out_b = plain(a["images"]), fast(b["images"])
    # other convolution kernels (blocked memory format): float32 sums in another order, through ~20 layers
    for x, y in zip(out_a, out_b):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ data loaders
@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "cpu"])
def test_loaders_pin_memory_when_cuda_is_available(cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    dm = ShapesDataModule(input_size=(64, 64), num_train=4, num_val=2, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert dm.train_dataloader().pin_memory is cuda
    assert dm.val_dataloader().pin_memory is cuda
    DataOrder(seed=0).wrap(dm)  # exact_resume: the same loader over an EpochSampler
    assert dm.train_dataloader().pin_memory is cuda


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "cpu"])
def test_stream_loader_pins_memory_when_cuda_is_available(cuda, monkeypatch):
    litdata = pytest.importorskip("litdata", reason="the streaming data module needs litdata")
    from ttfnet_lightning.data.stream import CocoStreamDataModule

    made = []
    monkeypatch.setattr(litdata, "StreamingDataLoader", lambda dataset, **kw: made.append(kw) or kw)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    dm = types.SimpleNamespace(batch_size=2, num_workers=0)  # _loader reads these two only
    CocoStreamDataModule._loader(dm, object(), train=True)
    assert made and made[0]["pin_memory"] is cuda


# ------------------------------------------------------------------------------- timing and devices
def test_step_timer_synchronises_cuda_on_a_gpu(module, monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    _attach(module, RunningStage.TRAINING)
    module.train()
    batch = _batch(3)
    want = module.on_after_batch_transfer(batch, 0)
    timed_module = TTFNetModule(kernel=KERNEL, data_info={"num_classes": 3, "input_size": [64, 96]}).train()
    _attach(timed_module, RunningStage.TRAINING)
    for sync_cuda, expect_sync in ((None, False), (True, True)):  # None: only when the module is on a GPU
        timer = profiling.StepTimer(sync_cuda=sync_cuda)
        timer.setup(timed_module.trainer, timed_module, "fit")
        assert timer._sync is expect_sync
        syncs.clear()
        got = timed_module.on_after_batch_transfer(batch, 0)  # wrapped: timed as "target_encoding"
        assert len(syncs) == (2 if expect_sync else 0)  # before and after the phase
        assert "target_encoding" in timer._current
        assert torch.equal(got["images"], want["images"])
        for x, y in zip(got["targets"], want["targets"]):
            assert torch.equal(x, y)
        del timed_module.on_after_batch_transfer, timed_module.transfer_batch_to_device  # the timer's wrappers


def test_pick_device_prefers_cuda(monkeypatch):
    assert checkpoints.pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert checkpoints.pick_device("auto") == torch.device("cuda")
    assert checkpoints.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert checkpoints.pick_device("auto") == torch.device("cpu")


def test_gpu_trainer_keeps_the_released_fp32():
    cfg = compose("train", ["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "32-true" and cfg.trainer.benchmark is True
