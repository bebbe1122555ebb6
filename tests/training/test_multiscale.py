"""Multi-scale training (multiscale=standard; ttfnet_lightning.training.multiscale): the sizes, their draw (from the
list, deterministic given the seed and the step), boxes that scale with the image, targets encoded at the drawn
size, and validation untouched."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from ttfnet_lightning.training.checkpoints import module_hparams
from ttfnet_lightning.training.config_groups import module_groups, peer_groups
from ttfnet_lightning.training.lit_module import TTFNetModule
from ttfnet_lightning.training.multiscale import MultiScale, resize_batch, size_index, train_sizes


def test_sizes_are_the_input_size_times_the_scales_in_multiples_of_32():
    assert train_sizes((128, 128), [0.75, 1.0, 1.25]) == [(96, 96), (128, 128), (160, 160)]
    assert train_sizes((512, 512), [0.75, 1.0, 1.25]) == [(384, 384), (512, 512), (640, 640)]
    assert train_sizes((256, 384), [0.5, 1.5]) == [(128, 192), (384, 576)]
    assert train_sizes((128, 128), []) == []
    with pytest.raises(ValueError, match=r"multiscale.scales .* same size"):
        train_sizes((128, 128), [0.95, 1.0, 1.05])  # all 128 after rounding
    with pytest.raises(ValueError, match="multiscale.scales must be positive"):
        train_sizes((128, 128), [0.0, 1.0])


def test_the_draw_is_from_the_list_deterministic_and_covers_it():
    ms = MultiScale(input_size=(128, 128), scales=[0.75, 1.0, 1.25], seed=0)
    drawn = [ms.size_at(step) for step in range(300)]
    counts = Counter(drawn)
    assert set(counts) == {(96, 96), (128, 128), (160, 160)}
    assert min(counts.values()) > 60  # about uniform (100 each)
    again = MultiScale(input_size=(128, 128), scales=[0.75, 1.0, 1.25], seed=0)
    assert [again.size_at(step) for step in range(300)] == drawn  # a pure function of (seed, step)
    other = MultiScale(input_size=(128, 128), scales=[0.75, 1.0, 1.25], seed=1)
    assert [other.size_at(step) for step in range(300)] != drawn
    # a new size only every N steps
    idx = [size_index(step, count=3, seed=0, every_n_steps=10) for step in range(100)]
    assert all(len(set(idx[i : i + 10])) == 1 for i in range(0, 100, 10))
    assert len(set(idx)) > 1
    with pytest.raises(ValueError, match="multiscale.every_n_steps"):
        MultiScale(input_size=(128, 128), scales=[1.0], seed=0, every_n_steps=0)


def test_boxes_scale_with_the_image():
    images = torch.zeros(2, 3, 128, 128)
    images[0, :, 32:64, 16:96] = 1.0  # a bright rectangle: x 16..96, y 32..64
    boxes = torch.tensor([[[16.0, 32.0, 96.0, 64.0], [0, 0, 0, 0]], [[8.0, 8.0, 40.0, 24.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, -1], [0, -1]])
    batch = {"images": images, "boxes": boxes, "labels": labels, "meta": [{}, {}]}
    for size in ((96, 96), (160, 160), (96, 160)):
        out = resize_batch(batch, size)
        h, w = size
        assert out["images"].shape == (2, 3, h, w)
        assert torch.allclose(out["boxes"], boxes * torch.tensor([w / 128, h / 128, w / 128, h / 128]))
        assert out["labels"] is labels and out["meta"] is batch["meta"]
        assert (out["boxes"][:, 1] == 0).all()  # padding rows stay zero
        x1, y1, x2, y2 = (int(round(v)) for v in out["boxes"][0, 0].tolist())
        img = out["images"][0, 0]
        inside = img[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
        outside = img.clone()
        outside[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = 0
        assert inside.min() > 0.9 and outside.max() < 0.1  # the scaled box frames the resized rectangle
    assert resize_batch(batch, (128, 128))["images"] is images  # the same size: nothing resampled


def _module(**multiscale) -> TTFNetModule:
    return TTFNetModule(
        net={"backbone": "r18", "neck_channels": [32, 16, 8], "heatmap_channels": 8, "box_channels": 8},
        data_info={"num_classes": 2, "input_size": [128, 128]},
        multiscale=multiscale,
    )


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randint(0, 255, (2, 3, 128, 128), dtype=torch.uint8, generator=g),
        "boxes": torch.tensor([[[10.0, 20.0, 60.0, 90.0]], [[30.0, 30.0, 120.0, 100.0]]]),
        "labels": torch.tensor([[1], [0]]),
        "meta": [{"image_id": 0, "orig_size": (128, 128)}, {"image_id": 1, "orig_size": (128, 128)}],
    }


def test_training_batches_are_resized_before_encoding_and_validation_is_untouched():
    module = _module(scales=[0.75, 1.0, 1.25], seed=3)
    sizes = set()
    for step in range(12):
        module._trainer = SimpleNamespace(training=True, validating=False, global_step=step)
        out = module.on_after_batch_transfer(_batch(), 0)
        h, w = out["images"].shape[-2:]
        assert (h, w) == module.multiscale.size_at(step)
        assert out["targets"][0].shape[-2:] == (h // 4, w // 4)  # the heatmap at the drawn size
        assert torch.allclose(out["boxes"], _batch()["boxes"] * h / 128)
        sizes.add(h)
    assert sizes == {96, 128, 160}
    module._trainer = SimpleNamespace(training=False, validating=True, global_step=5)
    out = module.on_after_batch_transfer(_batch(), 0)
    assert out["images"].shape[-2:] == (128, 128) and out["targets"][0].shape[-2:] == (32, 32)
    assert torch.equal(out["boxes"], _batch()["boxes"])
    assert _module().multiscale is None  # off by default


def test_the_config_groups_reach_the_module_with_the_runs_seed():
    cfg = OmegaConf.to_container(compose("train", ["multiscale=standard", "seed=7"]), resolve=True)
    group = module_groups(cfg)["multiscale"]
    assert group == {"scales": [0.75, 1.0, 1.25], "every_n_steps": 1, "seed": 7}
    off = module_groups(OmegaConf.to_container(compose("train", ["seed=7"]), resolve=True))["multiscale"]
    assert off == {"scales": [], "every_n_steps": 1, "seed": None}
    # a checkpoint written before the group existed compares equal to a run without multi-scale
    old = {"data_info": {"num_classes": 2}, "optim": {}}
    assert module_hparams(old)["multiscale"] == off
    # torchvision's detectors resize inside their own transform: refused, naming the key
    peer = OmegaConf.to_container(compose("train", ["multiscale=standard", "method=fcos"]), resolve=True)
    with pytest.raises(ValueError, match="multiscale.scales"):
        peer_groups(peer)
