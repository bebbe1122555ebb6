"""Table 4's FPS row measured again, for all of a sweep's models in one process under the same
conditions: each job measures its model-only speed once at its end (``measure_fps``), when the
machine may be busy with other work; this loads every finished job's ``last.ckpt`` and times them
in interleaved rounds (round r times every model once), so slow moments hit all models alike,
and writes the median into the job's ``results.json`` (``fps``; the end-of-training value is kept
as ``fps_at_end_of_training``).

"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from ttfnet_lightning.paper.sweeps import expand_sweep
from ttfnet_lightning.training.checkpoints import load_model
from ttfnet_lightning.training.evaluate import model_speed
from ttfnet_lightning.training.records import RESULTS_FILE

__all__ = ["remeasure_fps"]


def remeasure_fps(sweep_dir: str | Path, *, rounds: int = 7, iters: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median model-only images/s (batch 1, forward + decode, this machine's CPU/GPU as the job
    measured it) of every finished job of the sweep; updates their ``results.json``."""

    jobs = [
        j for j in expand_sweep(sweep_dir) if j.status == "finished" and (j.dir / "checkpoints" / "last.ckpt").is_file()
    ]
    if not jobs:
        raise ValueError(f"{sweep_dir}: no finished job with checkpoints/last.ckpt")
    models = {j.dir.name: load_model(j.dir / "checkpoints" / "last.ckpt") for j in jobs}
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up of every model first
        model_speed(model, batch_size=1, input_size=model.input_size, iters=warmup, warmup=1)
    for _ in range(rounds):
        for name, model in models.items():
            speeds[name].append(model_speed(model, batch_size=1, input_size=model.input_size, iters=iters, warmup=1))
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    for job in jobs:
        results = json.loads((job.dir / RESULTS_FILE).read_text())
        results.setdefault("fps_at_end_of_training", results.get("fps"))
        results["fps"] = medians[job.dir.name]
        results["fps_method"] = (
            f"python -m ttfnet_lightning.speed: median of {rounds} interleaved rounds of {iters} batch-1 passes, "
            f"all {len(jobs)} models in one process, {torch.get_num_threads()} threads"
        )
        tmp = job.dir / (RESULTS_FILE + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
        tmp.replace(job.dir / RESULTS_FILE)
    return medians
