"""docs/training.md's promise about `make train` (AP50 >= 50), checked for real (a full `make train`
run, 18.8 min in `benchmarks/report.md`): `make test-slow` runs it; the default `make test` does not."""

from __future__ import annotations

import pytest

from conftest import compose
from ttfnet_lightning.training.run import train


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_training_reaches_ap50_50(tmp_path):
    cfg = compose(
        "train",
        ["backbone=r18", "schedule=fast", "logger=csv", f"output_dir={tmp_path}", "trainer.enable_progress_bar=false"],
    )
    ap50 = train(cfg)
    assert ap50 is not None and ap50 >= 50.0, ap50
