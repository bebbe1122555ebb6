"""The training precision ``trainer.precision: ${ttf_auto_precision:}`` chooses (``conf/trainer/auto.yaml``).

On a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX, e.g. AMD Zen 4, Intel Sapphire Rapids)
``bf16-mixed``: Lightning runs forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with the
weights, gradients and optimiser in float32 (the native deformable convolution keeps its sampling positions in
float32, :mod:`ttfnet_lightning.core.models.deform`). Elsewhere, and whenever a GPU is visible, ``32-true``: on
GPUs the released code's fp32 stays the default (``trainer=gpu``; set ``trainer.precision=bf16-mixed`` yourself).
What it gives and costs on the built-in data: ``benchmarks/bench_train_speed.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

import torch

__all__ = ["cpu_has_native_bf16", "auto_precision"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX tiles); emulated bf16 is slower
    than fp32, so without them autocast is not worth it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's (private) feature probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_precision() -> str:
    """``bf16-mixed`` when training will run on a CPU with native bf16, else ``32-true``."""
    if torch.cuda.is_available() or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
