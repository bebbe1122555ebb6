"""The inference path: a trained :class:`~ttfnet_lightning.models.TTFNet` made fast for
prediction, with the same call signature and outputs (to a tolerance).

    fast = optimize_for_inference(net.eval(), precision="bf16")
    heatmap_logits, wh = fast(images)          # (B, C, h, w), (B, 4 or 4C, h, w), float32

What it does, each step optional:

* **BN folding** (``fold_bn``): every BatchNorm that follows a convolution (plain, or the
  modulated deformable conv of the neck, whose output is linear in its weight and bias) is folded
  into that convolution's weight and bias and replaced by ``nn.Identity``. Pairs are found in
  ``nn.Sequential`` containers (neck, DarkNet-53) and as ``convN``/``bnN`` siblings (torchvision
  ResNets: stem, blocks, downsample).
* **channels_last** memory format for weights and input (faster convolutions on CPU and GPU).
* **precision**: ``"fp32"``, ``"bf16"`` (autocast; CPUs with bf16 support and GPUs) or ``"fp16"``
  (autocast, GPU only). Outputs are returned as float32.
* ``torch.compile`` (``compile=True``), off by default (compilation takes minutes on first call).
* Runs under ``torch.inference_mode``.

The input network is not modified (a copy is optimised).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .models.neck import ModulatedDeformConv2d

__all__ = ["optimize_for_inference", "fold_batchnorm", "InferenceModel", "PRECISIONS"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place: y = bn(conv(x)) = conv'(x)."""
    w = conv.weight
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.copy_(w.detach() * scale.reshape(-1, 1, 1, 1))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias * scale + shift)
        else:
            conv.bias.copy_(bias * scale + shift)


def _conv_of(module: nn.Module) -> nn.Conv2d | None:
    """The convolution whose output a following BatchNorm normalises (plain or deformable)."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, ModulatedDeformConv2d):
        return module.conv  # output = sum(taps * weight) + bias: linear in weight and bias
    return None


def _pairs(root: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Conv2d, nn.BatchNorm2d]]:
    """(parent, name of the BN in it, conv, bn) for every conv -> BN pair."""
    for parent in root.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                conv = _conv_of(children[a])
                if conv is not None and isinstance(children[b], nn.BatchNorm2d):
                    yield parent, b, conv, children[b]
        else:
            for name, child in children.items():
                if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                    conv = _conv_of(children.get("conv" + name[2:]))  # torchvision: conv1/bn1, conv2/bn2, ...
                    if conv is not None:
                        yield parent, name, conv, child


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of ``net`` (in eval mode) in place; returns how many."""
    if net.training:
        raise ValueError("fold_batchnorm needs an eval-mode network (net.eval()): it uses the running statistics")
    pairs = list(_pairs(net))
    for parent, bn_name, conv, bn in pairs:
        _fold_into(conv, bn)
        setattr(parent, bn_name, nn.Identity())
    return len(pairs)


class InferenceModel(nn.Module):
    """``images -> (heatmap_logits, wh)`` like :class:`TTFNet`, with the chosen memory format and
    precision; float32 outputs; runs under ``torch.inference_mode``."""

    def __init__(self, net: nn.Module, *, precision: str, channels_last: bool) -> None:
        super().__init__()
        self.net = net
        self.precision = precision
        self.channels_last = channels_last
        self.stride = getattr(net, "stride", 4)
        self.num_classes = getattr(net, "num_classes", None)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            dtype = PRECISIONS[self.precision]
            if dtype is None:
                heatmap, wh = self.net(images)
            else:
                with torch.autocast(device_type=images.device.type, dtype=dtype):
                    heatmap, wh = self.net(images)
            return heatmap.float().contiguous(), wh.float().contiguous()


def optimize_for_inference(
    net: nn.Module,
    *,
    precision: str = "fp32",
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
) -> nn.Module:
    """A copy of the eval-mode ``net`` (a :class:`TTFNet`) made fast for inference; same call
    signature and outputs (to a tolerance: float rounding for fp32, about 1e-2 relative for
    bf16/fp16). See the module docstring for each option.

    Raises:
        ValueError: ``net`` is in training mode, or ``precision`` is unknown.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if net.training:
        raise ValueError("optimize_for_inference needs an eval-mode network: call net.eval() first")
    fast = copy.deepcopy(net)
    for p in fast.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    model: nn.Module = InferenceModel(fast, precision=precision, channels_last=channels_last)
    if compile:
        model = torch.compile(model)
    return model
