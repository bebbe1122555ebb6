"""Modulated deformable convolution (DCNv2) in plain PyTorch ops.

``deform_conv2d_native`` computes the same thing as
``torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=1, padding=1, dilation=1, mask=mask)``
with one ``F.grid_sample`` call (bilinear, zeros outside the map) that samples all kernel taps of all
channels at once, a multiplication by the mask and one batched matmul with the weight. Autograd then uses ``grid_sample``'s and
``matmul``'s backward kernels, which are multi-threaded / vectorised on CPU, whereas torchvision's CPU
backward for deformable conv is close to single-threaded.

Only the configuration the TTFNet neck uses is supported: stride 1, padding 1, dilation 1, one
offset group and one weight group (any kernel size; the output is ``H + 3 - kh`` by ``W + 3 - kw``,
i.e. ``H`` by ``W`` for the 3x3 kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["deform_conv2d_native"]

_PAD = 1  # fixed: stride 1, padding 1, dilation 1


def deform_conv2d_native(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Modulated deformable conv, stride 1, padding 1, dilation 1, one offset group, one group.

    Args:
        input: (B, Cin, H, W).
        offset: (B, 2*kh*kw, Ho, Wo); channels ``2k, 2k+1`` are the (dy, dx) of kernel tap ``k``
            (taps in row-major kernel order), as in torchvision.
        weight: (Cout, Cin, kh, kw).
        bias: (Cout,) or None.
        mask: (B, kh*kw, Ho, Wo) modulation of each tap, or None (no modulation).
    Returns:
        (B, Cout, Ho, Wo) with Ho = H + 3 - kh, Wo = W + 3 - kw (= H, W for a 3x3 kernel).

    Tap ``k = (i, j)`` at output ``(h, w)`` reads the input at ``(h - 1 + i + dy, w - 1 + j + dx)``
    with bilinear interpolation; pixels outside the map count as zero.
    """
    if input.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise ValueError(
            "deform_conv2d_native expects 4-D input, offset and weight, got shapes "
            f"{tuple(input.shape)}, {tuple(offset.shape)}, {tuple(weight.shape)}"
        )
    b, cin, h, w = input.shape
    cout, cin_w, kh, kw = weight.shape
    k = kh * kw
    ho, wo = h + 2 * _PAD - kh + 1, w + 2 * _PAD - kw + 1
    if cin_w != cin:
        raise ValueError(
            f"deform_conv2d_native supports groups=1 only: weight has {cin_w} input channels, input has {cin}"
        )
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {h + 2 * _PAD}x{w + 2 * _PAD}")
    if tuple(offset.shape) != (b, 2 * k, ho, wo):
        raise ValueError(
            f"offset must have shape (B, 2*kh*kw, Ho, Wo) = {(b, 2 * k, ho, wo)} (stride 1, padding 1, "
            f"dilation 1, one offset group), got {tuple(offset.shape)}"
        )
    if mask is not None and tuple(mask.shape) != (b, k, ho, wo):
        raise ValueError(
            f"mask must have shape (B, kh*kw, Ho, Wo) = {(b, k, ho, wo)} (one offset group), got {tuple(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")

    # sampling positions in input pixels, (B, K, Ho, Wo); tap k = i*kw + j
    dt, dev = offset.dtype, offset.device
    ys = torch.arange(kh, dtype=dt, device=dev).view(kh, 1, 1, 1) + torch.arange(ho, dtype=dt, device=dev).view(ho, 1)
    xs = torch.arange(kw, dtype=dt, device=dev).view(1, kw, 1, 1) + torch.arange(wo, dtype=dt, device=dev)
    off = offset.reshape(b, k, 2, ho, wo)
    y = off[:, :, 0] + (ys - _PAD).expand(kh, kw, ho, wo).reshape(k, ho, wo)
    x = off[:, :, 1] + (xs - _PAD).expand(kh, kw, ho, wo).reshape(k, ho, wo)
    # align_corners=False normalisation: pixel p -> (2p + 1) / size - 1 (well defined for size 1)
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1).view(b, k * ho, wo, 2)
    cols = F.grid_sample(input, grid.to(input.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.view(b, cin, k, ho * wo)  # (B, Cin, K*Ho, Wo) -> taps next to channels, like weight
    if mask is not None:
        cols = cols * mask.reshape(b, 1, k, ho * wo).to(cols.dtype)
    # bmm with a broadcast (stride-0) weight: no transposed copies of the big cols tensor, unlike
    # torch.matmul(2-D, 3-D), which folds the batch into one mm through transposes
    w2 = weight.reshape(1, cout, cin * k).to(cols.dtype).expand(b, cout, cin * k)
    out = torch.bmm(w2, cols.view(b, cin * k, ho * wo))
    if bias is not None:
        out = out + bias.view(1, cout, 1).to(out.dtype)
    return out.view(b, cout, ho, wo)
