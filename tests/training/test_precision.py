"""The default training precision (``trainer.precision: ${ttf_auto_precision:}``): bf16-mixed on a CPU with
native bf16 only, fp32 where a GPU is visible or the CPU lacks it, fp32 pinned for the paper tables' CPU protocol."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import TINY_TRAIN
from ttfnet_lightning.conf import conf_dir
from ttfnet_lightning.training import precision


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "cuda", "expected"),
    [
        (True, False, False, "bf16-mixed"),
        (False, True, False, "bf16-mixed"),
        (False, False, False, "32-true"),
        (True, True, True, "32-true"),  # a visible GPU keeps the released fp32
    ],
)
def test_auto_precision_follows_the_cpu(monkeypatch, avx512_bf16, amx, cuda, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert precision.auto_precision() == expected
    cfg = _compose(["backbone=r18", "schedule=fast"])  # make train's config resolves to the same
    assert OmegaConf.to_container(cfg.trainer, resolve=True)["precision"] == expected


def test_a_cpu_without_the_probes_trains_in_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not precision.cpu_has_native_bf16() and precision.auto_precision() == "32-true"


def test_the_paper_tables_and_explicit_settings_keep_their_precision(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _compose(["protocol=cpu"]).trainer.precision == "32-true"  # the stored tables ran in fp32
    # and so did the CPU backbones they load (else `make table6` on a bf16 CPU refuses results/cpu-pretrained/r34-run)
    assert _compose(["experiment=cpu_pretrain", "backbone=r34"]).trainer.precision == "32-true"
    assert _compose(["trainer=gpu"]).trainer.precision == "32-true"
    assert _compose(["trainer.precision=16-mixed"]).trainer.precision == "16-mixed"


def test_a_bf16_mixed_run_trains_and_validates_in_bf16(tmp_path, monkeypatch):
    """bf16-mixed through the whole training path (native deformable neck included): the network's outputs are
    bf16 (autocast ran), the weights stay float32, and the run validates."""
    from ttfnet_lightning.core.models import TTFNet
    from ttfnet_lightning.training.run import train

    seen: list[torch.dtype] = []
    real_forward = TTFNet.forward
    monkeypatch.setattr(
        TTFNet, "forward", lambda self, x: seen.append(real_forward(self, x)[0].dtype) or real_forward(self, x)
    )
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.precision")]
    cfg = _compose([*overrides, "trainer.precision=bf16-mixed", "schedule.max_epochs=1", f"output_dir={tmp_path}"])
    value = train(cfg)
    assert value is not None and 0.0 <= value <= 100.0
    assert seen and set(seen) == {torch.bfloat16}, set(seen)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    rows = (tmp_path / "metrics.csv").read_text()
    assert "val/AP50" in rows and "val/loss" in rows
