"""The inference path: a trained :class:`~ttfnet_lightning.core.models.TTFNet` made fast for
prediction, with the same call signature and outputs (to a tolerance).

    fast = optimize_for_inference(net.eval(), precision="bf16")
    heatmap_logits, wh = fast(images)          # (B, C, h, w), (B, 4 or 4C, h, w), float32

What it does, each step optional:

* **BN folding** (``fold_bn``): every BatchNorm that follows a convolution (plain, or the
  modulated deformable conv of the neck, whose output is linear in its weight and bias) is folded
  into that convolution's weight and bias and replaced by ``nn.Identity``. Pairs are found in
  ``nn.Sequential`` containers (neck, DarkNet-53) and as ``convN``/``bnN`` siblings (torchvision
  ResNets: stem, blocks, downsample).
* **weight-first deformable convs** (``fast_deform``): the neck's modulated deformable convs
  (``deform_impl="native"``) become :class:`InferenceDeformConv2d`, which on CPU applies the
  weight first (one 1x1 conv to K*Cout channels) and then sums the bilinear corners of all taps
  with ``F.embedding_bag`` (:func:`deform_conv2d_by_taps`): same function, 2.3-3x faster than
  ``grid_sample`` + mask + ``bmm`` (the native implementation) for the neck's three shapes.
* **channels_last** memory format for weights and input (faster convolutions on CPU and GPU).
* **precision**: ``"fp32"``, ``"bf16"`` (autocast; CPUs with bf16 support and GPUs) or ``"fp16"``
  (autocast, GPU only). Outputs are returned as float32.
* ``torch.compile`` (``compile=True``), off by default: compilation takes minutes on the first
  call, and the deformable convs are then compiled from their ``grid_sample`` form. On a 2-core
  AMD EPYC CPU (TTFNet-R18@512, 1 thread) the compiled path took 2.5 minutes to compile and ran
  1.34x slower than the eager path; it is there for GPUs and other setups, not as a CPU speed-up.
* Runs under ``torch.inference_mode``.

The input network is not modified (a copy is optimised).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttfnet_lightning.core.models.neck import ModulatedDeformConv2d

__all__ = [
    "optimize_for_inference",
    "fold_batchnorm",
    "InferenceModel",
    "InferenceDeformConv2d",
    "use_inference_deform_convs",
    "deform_conv2d_by_taps",
    "taps_weight",
    "PRECISIONS",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place: y = bn(conv(x)) = conv'(x)."""
    w = conv.weight
    scale = (
        bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    )
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


def _plain_bn(module: nn.Module | None) -> bool:
    """A BatchNorm2d whose forward is BatchNorm2d's own: subclasses that add work to it (timm's
    BatchNormAct2d = BN + activation) are not folded, or the added work would be lost."""
    return isinstance(module, nn.BatchNorm2d) and type(module).forward is nn.BatchNorm2d.forward


def _pairs(root: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Conv2d, nn.BatchNorm2d]]:
    """(parent, name of the BN in it, conv, bn) for every conv -> BN pair."""
    for parent in root.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                conv = _conv_of(children[a])
                if conv is not None and _plain_bn(children[b]):
                    yield parent, b, conv, children[b]
        else:
            for name, child in children.items():
                if _plain_bn(child) and name.startswith("bn"):
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


def taps_weight(weight: Tensor) -> Tensor:
    """(Cout, Cin, kh, kw) -> (K*Cout, Cin, 1, 1), K = kh*kw: output channel ``k*Cout + co`` holds
    ``weight[co, :, i, j]`` of tap ``k = i*kw + j`` (the weight of :func:`deform_conv2d_by_taps`)."""
    cout, cin, kh, kw = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(kh * kw * cout, cin, 1, 1).contiguous()


def _conv1x1(x: Tensor, weight: Tensor) -> Tensor:
    """1x1 convolution without bias. On CPU it calls oneDNN directly: ``F.conv2d`` sends a 1x1
    conv of batch 1 to PyTorch's slow native kernel when running on one thread, and MKL's GEMM
    (``torch.mm``) was about 2x slower than oneDNN here (AMD EPYC)."""
    weight = weight.to(x.dtype)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, weight, None, (0, 0), (1, 1), (1, 1), 1)
    return F.conv2d(x, weight)


def deform_conv2d_by_taps(
    x: Tensor,
    offset_mask: Tensor,
    tap_weight: Tensor,
    bias: Tensor | None,
    *,
    kernel_size: tuple[int, int],
    padding: int,
) -> Tensor:
    """Modulated deformable conv (stride 1, dilation 1, one group) computed weight-first; for
    inference (it is differentiable, but its backward is not what it is meant for).

    The deformable conv ``out[p] = bias + sum_k m_k(p) sum_ci W[:, ci, k] x_ci(p + p_k + d_k(p))``
    samples ``x`` bilinearly, which is linear in ``x``; so the weight can be applied first, at the
    input pixels: ``Y_k = W[:, :, k] x`` for every tap ``k``, one 1x1 convolution to K*Cout channels
    (as many multiply-adds as the conv itself, at the speed of a dense conv). Each output pixel is
    then a weighted sum of 4 bilinear corners x K taps of ``Y``'s rows, the weights being the
    bilinear weights times the tap's mask (zero for corners outside the map, as ``grid_sample``'s
    zero padding): one ``F.embedding_bag(mode="sum", per_sample_weights=...)`` over the
    channels_last ``Y`` seen as (pixels*K, Cout) rows. Nothing of size Cin x K x pixels is made
    (``deform_conv2d_native`` samples, masks and multiplies K*Cin channels per pixel).

    Args:
        x: (B, Cin, H, W).
        offset_mask: (B, 3K, Ho, Wo), the raw output of the offset/mask conv: channels ``2k, 2k+1``
            are (dy, dx) of tap ``k``, the last K the mask logits (sigmoid applied here).
        tap_weight: (K*Cout, Cin, 1, 1) from :func:`taps_weight`.
        bias: (Cout,) or None.
        kernel_size: (kh, kw); padding: zero padding (the output is H + 2*padding - kh + 1 high).
    Returns:
        (B, Cout, Ho, Wo) in ``x``'s memory format (channels_last or contiguous).
    """
    b, cin, h, w = x.shape
    kh, kw = kernel_size
    k = kh * kw
    cout = tap_weight.shape[0] // k
    ho, wo = offset_mask.shape[-2:]
    # sampling positions and weights in float32 (also under autocast), or float64
    f32 = torch.float64 if offset_mask.dtype == torch.float64 else torch.float32
    om = offset_mask.to(f32)
    off = om[:, : 2 * k].reshape(b, k, 2, ho, wo)
    mask = om[:, 2 * k :].sigmoid()  # (B, K, Ho, Wo)
    dev = x.device
    ti = torch.arange(kh, device=dev, dtype=f32).repeat_interleave(kw).view(1, k, 1, 1) - padding
    tj = torch.arange(kw, device=dev, dtype=f32).repeat(kh).view(1, k, 1, 1) - padding
    py = off[:, :, 0] + (torch.arange(ho, device=dev, dtype=f32).view(1, 1, ho, 1) + ti)
    px = off[:, :, 1] + (torch.arange(wo, device=dev, dtype=f32).view(1, 1, 1, wo) + tj)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    # row of Y for (image, input pixel (y, x), tap): ((b*H + y)*W + x)*K + k
    base = torch.arange(b, device=dev).view(b, 1, 1, 1) * (h * w * k) + torch.arange(k, device=dev).view(1, k, 1, 1)
    idx, wts = [], []
    for cy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        in_y = (cy >= 0) & (cy < h)
        row = base + cy.clamp(0, h - 1) * (w * k)
        for cx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            idx.append(row + cx.clamp(0, w - 1) * k)
            wts.append(torch.where(in_y & (cx >= 0) & (cx < w), wy * wx * mask, 0.0))
    # one bag per output pixel (B*Ho*Wo): 4 corners x K taps
    idx_t = torch.stack(idx, -1).permute(0, 2, 3, 1, 4).reshape(b * ho * wo, 4 * k)
    wts_t = torch.stack(wts, -1).permute(0, 2, 3, 1, 4).reshape(b * ho * wo, 4 * k)
    y = _conv1x1(x.contiguous(memory_format=torch.channels_last), tap_weight)  # (B, K*Cout, H, W)
    rows = y.permute(0, 2, 3, 1).reshape(b * h * w * k, cout)  # a view: y is channels_last
    out = F.embedding_bag(idx_t, rows, per_sample_weights=wts_t.to(rows.dtype), mode="sum")
    if bias is not None:
        out = out + bias.to(out.dtype)
    out = out.view(b, ho, wo, cout).permute(0, 3, 1, 2)  # NCHW shape, channels_last memory
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


class InferenceDeformConv2d(ModulatedDeformConv2d):
    """:class:`ModulatedDeformConv2d` for the inference path: the same parameters (shared with the
    module it is made from) and outputs (to float rounding), computed weight-first on CPU
    (:func:`deform_conv2d_by_taps`, several times faster than ``grid_sample`` + ``bmm``), with the
    rearranged weight kept (call :meth:`refresh` after changing ``conv.weight``).

    It falls back to :meth:`ModulatedDeformConv2d.forward` (the module's own implementation) off
    the CPU, when a gradient is needed, and while being traced, scripted or exported (ONNX export
    maps the native implementation's ``grid_sample`` to ``GridSample``).
    """

    taps: Tensor

    def __init__(self, module: ModulatedDeformConv2d) -> None:
        nn.Module.__init__(self)
        self.conv = module.conv
        self.offset_mask = module.offset_mask
        self.padding = module.padding
        self.deform_impl = module.deform_impl
        self.register_buffer("taps", taps_weight(module.conv.weight.detach()), persistent=False)

    def refresh(self) -> None:
        """Recompute the kept (K*Cout, Cin, 1, 1) weight from ``conv.weight``."""
        self.taps = taps_weight(self.conv.weight.detach()).to(self.taps.device)

    def forward(self, x: Tensor) -> Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad)
        if x.device.type != "cpu" or needs_grad or _capturing():
            return super().forward(x)
        return deform_conv2d_by_taps(
            x, self.offset_mask(x), self.taps, self.conv.bias, kernel_size=self.conv.kernel_size, padding=self.padding
        )


def _capturing() -> bool:
    """Inside ``torch.jit`` tracing/scripting, ONNX export, or ``torch.compile``/``torch.export``."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def use_inference_deform_convs(net: nn.Module) -> int:
    """Replace every :class:`ModulatedDeformConv2d` of ``net`` by an :class:`InferenceDeformConv2d`
    (same parameters) in place; returns how many. Call it after BN folding."""
    count = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, ModulatedDeformConv2d)
                and child.deform_impl == "native"
                and not isinstance(child, InferenceDeformConv2d)
            ):
                setattr(parent, name, InferenceDeformConv2d(child))
                count += 1
    return count


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
    fast_deform: bool = True,
    compile: bool = False,
) -> nn.Module:
    """A copy of the eval-mode ``net`` (a :class:`TTFNet`) made fast for inference; same call
    signature and outputs (to a tolerance: float rounding for fp32, about 1e-2 relative for
    bf16/fp16). See the module docstring for each option (``fold_bn``, ``channels_last``,
    ``fast_deform``: weight-first deformable convs, ``compile``).

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
    if fast_deform:
        use_inference_deform_convs(fast)  # after folding: it copies the (folded) weights
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if compile:
        # compile the network, not InferenceModel.forward: with torch.inference_mode inside the
        # compiled region, inductor fails ("Cannot set version_counter for inference tensor")
        fast = torch.compile(fast)
    return InferenceModel(fast, precision=precision, channels_last=channels_last)
