"""Modulated deformable convolution (DCNv2) in plain PyTorch ops.

``deform_conv2d_native`` computes the same thing as
``torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=1, padding=1, dilation=1, mask=mask)``
with ``F.grid_sample`` (bilinear, zeros outside the map) sampling the kernel taps of all channels, a
multiplication by the mask and a batched matmul with the weight. ``grid_sample``'s and ``bmm``'s
kernels are multi-threaded / vectorised on CPU, whereas torchvision's CPU backward for deformable
conv is close to single-threaded.

Memory: the sampled taps ``cols`` (B, Cin, K, Ho*Wo), K = kh*kw, are K times the input, and
autograd through the ops above keeps them twice (before and after the mask) until the backward
pass: about 1 GB for the TTFNet neck at batch 16 x 512 px. So when a gradient is needed,
``_DeformConv2dFunction`` saves only the input, mask, weight and the sampling grid (the offset's
size) and samples the taps again in the backward; both passes go through the output in chunks
(whole images, or row blocks of one image) whose taps take at most ``_CHUNK_INPUTS`` (4) times the
input's bytes (one whole image up to twice that), so the taps exist only transiently, one chunk of
one layer at a time. The cost is a second ``grid_sample`` in the backward. Without gradients
(inference) the output is computed in one shot by ``_deform_conv2d_autograd``, the implementation
before the recomputing backward (which ``_RECOMPUTE = False`` also uses under autograd, for
comparison in ``benchmarks/bench_model.py``).

Only the configuration the TTFNet neck uses is supported: stride 1, padding 1, dilation 1, one
offset group and one weight group (any kernel size; the output is ``H + 3 - kh`` by ``W + 3 - kw``,
i.e. ``H`` by ``W`` for the 3x3 kernel).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["deform_conv2d_native"]

_PAD = 1  # fixed: stride 1, padding 1, dilation 1
# under autograd the taps are sampled in chunks of at most _CHUNK_INPUTS x the input's bytes
# (but at least _MIN_CHUNK_BYTES): the transient taps of the forward and the backward pass
_CHUNK_INPUTS = 4.0
_MIN_CHUNK_BYTES = 1 << 20
# False: under autograd too, the one-shot implementation from before the recomputing backward
# (``_deform_conv2d_autograd``, keeps the taps for the backward); benchmarks/bench_model.py compares
_RECOMPUTE = True


def deform_conv2d_native(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Modulated deformable conv, stride 1, padding 1, dilation 1, one offset group, one group.

    Args:
        input: (B, Cin, H, W).
        offset: (B, 2*K, Ho, Wo), K = kh*kw; channels ``2k, 2k+1`` are the (dy, dx) of kernel tap
            ``k`` (taps in row-major kernel order), as in torchvision.
        weight: (Cout, Cin, kh, kw).
        bias: (Cout,) or None.
        mask: (B, K, Ho, Wo) modulation of each tap, or None (no modulation).
    Returns:
        (B, Cout, Ho, Wo) with Ho = H + 3 - kh, Wo = W + 3 - kw (= H, W for a 3x3 kernel).

    Tap ``k = (i, j)`` at output ``(h, w)`` reads the input at ``(h - 1 + i + dy, w - 1 + j + dx)``
    with bilinear interpolation; pixels outside the map count as zero.

    Under autograd the sampled taps (B, Cin, K, Ho*Wo) are not saved for the backward pass but
    sampled again there (see the module docstring): the saved tensors are input, mask, weight and
    the sampling grid (B, K*Ho, Wo, 2), as large as offset. Double backward (gradients of the
    gradients) is not supported.
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
    tensors = (input, offset, weight, bias, mask)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if _RECOMPUTE and needs_grad and input.numel() > 0:
        return _DeformConv2dFunction.apply(*tensors)
    return _deform_conv2d_autograd(*tensors)


def _grid(offset: Tensor, kh: int, kw: int, h: int, w: int) -> Tensor:
    """grid_sample grid (B, K*Ho, Wo, 2) of all taps' sampling positions (x, y), in offset's dtype."""
    b, _, ho, wo = offset.shape
    k = kh * kw
    dt, dev = offset.dtype, offset.device
    ys = torch.arange(kh, dtype=dt, device=dev).view(kh, 1, 1, 1) + torch.arange(ho, dtype=dt, device=dev).view(ho, 1)
    xs = torch.arange(kw, dtype=dt, device=dev).view(1, kw, 1, 1) + torch.arange(wo, dtype=dt, device=dev)
    off = offset.reshape(b, k, 2, ho, wo)
    y = off[:, :, 0] + (ys - _PAD).expand(kh, kw, ho, wo).reshape(k, ho, wo)
    x = off[:, :, 1] + (xs - _PAD).expand(kh, kw, ho, wo).reshape(k, ho, wo)
    # align_corners=False normalisation: pixel p -> (2p + 1) / size - 1 (well defined for size 1)
    return torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1).view(b, k * ho, wo, 2)


def _sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sampling positions and samples: ``dtype``, at least float32 (see the callers)."""
    return torch.promote_types(dtype, torch.float32)


def _sample(input: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(input, grid.to(input.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _deform_conv2d_autograd(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """``deform_conv2d_native`` in one shot (no argument checks): one ``grid_sample`` over all K taps,
    mask multiply, one ``bmm``. Under autograd it keeps the sampled taps (B, Cin, K, Ho*Wo) twice
    (before and after the mask) for the backward pass: the implementation before the recomputing
    ``_DeformConv2dFunction``, used without gradients and as the baseline of ``bench_model.py``."""
    b, cin, h, w = input.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    sdt = _sampling_dtype(input.dtype)  # positions and samples at least in float32, as in _DeformConv2dFunction
    cols = _sample(input.to(sdt), _grid(offset.to(_sampling_dtype(offset.dtype)), kh, kw, h, w))
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


def _chunks(b: int, ho: int, row_bytes: int, budget: int) -> list[tuple[int, int, int, int]]:
    """(b0, b1, r0, r1): images b0..b1-1, output rows r0..r1-1, whose taps take at most ``budget``
    bytes (``row_bytes`` per output row of one image), or a single output row. Whole images are
    preferred: one image, even if its taps take up to twice the budget, is not split in rows
    (fewer, larger chunks and no slicing of the rows)."""
    image_bytes = row_bytes * ho
    if image_bytes <= 2 * budget:
        n = max(1, -(-b // max(1, budget // image_bytes)))  # chunks of (nearly) equal numbers of images
        edges = [b * j // n for j in range(n + 1)]
        return [(b0, b1, 0, ho) for b0, b1 in zip(edges[:-1], edges[1:])]
    n = min(ho, -(-image_bytes // max(budget, 1)))  # row blocks per image, of (nearly) equal size
    edges = [ho * j // n for j in range(n + 1)]
    return [(i, i + 1, r0, r1) for i in range(b) for r0, r1 in zip(edges[:-1], edges[1:])]


class _DeformConv2dFunction(torch.autograd.Function):
    """``deform_conv2d_native`` that saves (input, sampling grid, mask, weight) for the backward pass
    and samples the taps again there. Both passes go through the output in chunks of whole images or
    of row blocks of one image (``_chunk_plan``) whose taps take at most ``_CHUNK_INPUTS`` x the
    input's bytes (at least ``_MIN_CHUNK_BYTES``; one whole image up to twice that); the backward
    holds at most two tensors of a chunk's taps at a time. The dtypes of the forward (which autocast may choose: the
    samples'
    and the matmul's) are recorded and used again in the backward. Double backward is not
    supported (``once_differentiable``)."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None
    ) -> Tensor:
        b, cin, h, w = input.shape
        cout, _, kh, kw = weight.shape
        k = kh * kw
        ho, wo = offset.shape[-2:]
        # sampling positions, as grid_sample takes them: saved instead of offset. At least float32, positions and
        # samples alike (grid_sample takes one dtype): in bf16 a position of 32-64 px is off by up to 0.125 px
        sdt = _sampling_dtype(input.dtype)
        grid = _grid(offset.to(_sampling_dtype(offset.dtype)), kh, kw, h, w).to(sdt).view(b, k, ho, wo, 2)
        out = None
        for b0, b1, r0, r1 in _chunk_plan(input, k, ho, wo):
            nb, n = b1 - b0, (r1 - r0) * wo
            cols = _sample(input[b0:b1].to(sdt), grid[b0:b1, :, r0:r1].reshape(nb, k * (r1 - r0), wo, 2))
            if mask is not None:
                cols.view(nb, cin, k, n).mul_(mask[b0:b1, None, :, r0:r1].reshape(nb, 1, k, n).to(cols.dtype))
            w2 = weight.reshape(1, cout, cin * k).to(cols.dtype).expand(nb, -1, -1)
            mm = torch.bmm(w2, cols.view(nb, cin * k, n))  # autocast may pick a lower precision
            if out is None:
                out = mm.new_empty((b, cout, ho, wo))
                ctx.dtypes = (cols.dtype, mm.dtype)
            out[b0:b1, :, r0:r1] = mm.view(nb, cout, r1 - r0, wo)
            del cols, mm
        assert out is not None
        if bias is not None:
            out += bias.view(1, cout, 1, 1).to(out.dtype)
        ctx.save_for_backward(input, grid, weight, mask)
        ctx.offset_dtype = offset.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        input, grid, weight, mask = ctx.saved_tensors
        need_in, need_off, need_w, need_b, need_m = ctx.needs_input_grad
        sdt, mdt = ctx.dtypes  # dtypes of the samples and of the matmul in the forward
        grad_b = None
        if ctx.bias_dtype is not None and need_b:
            grad_b = grad_out.sum((0, 2, 3), dtype=torch.promote_types(grad_out.dtype, ctx.bias_dtype)).to(
                ctx.bias_dtype
            )
        need_m = need_m and mask is not None
        if not (need_in or need_off or need_w or need_m):
            return None, None, None, grad_b, None
        with torch.autocast(input.device.type, enabled=False):  # the forward's dtypes, explicitly
            grad_in, grad_off, grad_w, grad_m = _backward(
                grad_out, input, grid, weight, mask, sdt, mdt, (need_in, need_off, need_w, need_m)
            )
        if grad_off is not None:
            grad_off = grad_off.to(ctx.offset_dtype)
        return grad_in, grad_off, grad_w, grad_b, grad_m


def _add_weight_grad(grad_w: Tensor, g: Tensor, cols: Tensor) -> None:
    """grad_w (Cout, Cin*K) += sum over the chunk's images of g (nb, Cout, n) @ cols (nb, Cin*K, n)^T,
    one image at a time: one bmm would make nb weight-sized gradients at once."""
    for i in range(g.shape[0]):
        if grad_w.dtype == cols.dtype:
            grad_w.addmm_(g[i], cols[i].T)
        else:
            grad_w += torch.mm(g[i], cols[i].T)


def _grad_buffers(
    x: Tensor,
    grid: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    mdt: torch.dtype,
    needs: tuple[bool, ...],
    *,
    split: bool,
) -> tuple[Tensor | None, ...]:
    """The gradients _backward fills (None where not needed): input (zeroed when an image's rows come in
    several chunks, which add up), grid, mask (in the samples' dtype) and weight (Cout, Cin*K), zeroed."""
    need_in, need_off, need_w, need_m = needs
    cout, cin, kh, kw = weight.shape
    grad_in = (torch.zeros if split else torch.empty)(x.shape, dtype=x.dtype, device=x.device) if need_in else None
    grad_grid = torch.empty_like(grid) if need_off else None
    grad_m = torch.empty(mask.shape, dtype=x.dtype, device=mask.device) if need_m and mask is not None else None
    grad_w = None
    if need_w:
        grad_w = torch.zeros(cout, cin * kh * kw, dtype=torch.promote_types(weight.dtype, mdt), device=weight.device)
    return grad_in, grad_grid, grad_m, grad_w


def _backward(
    grad_out: Tensor,
    input: Tensor,
    grid: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    sdt: torch.dtype,
    mdt: torch.dtype,
    needs: tuple[bool, bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for input, offset, weight, mask (those in ``needs``) of ``_DeformConv2dFunction``;
    grid: (B, K, Ho, Wo, 2) the forward's sampling positions; sdt, mdt: dtypes of the samples and
    of the matmul in the forward (autocast may have chosen them)."""
    need_in, need_off, need_w, need_m = needs
    b, cin, h, w = input.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    ho, wo = grid.shape[2:4]
    grid = grid.to(sdt)
    x = input.to(sdt)
    w2 = weight.reshape(1, cout, cin * k).to(mdt)
    chunks = _chunk_plan(input, k, ho, wo)
    split = any(r1 - r0 < ho for *_, r0, r1 in chunks)  # an image in several row blocks
    grad_in, grad_grid, grad_m, grad_w = _grad_buffers(x, grid, weight, mask, mdt, needs, split=split)
    for b0, b1, r0, r1 in chunks:
        nb, r, n = b1 - b0, r1 - r0, (r1 - r0) * wo
        grid_c = grid[b0:b1, :, r0:r1].reshape(nb, k * r, wo, 2)
        s = _sample(x[b0:b1], grid_c).view(nb, cin, k, n)  # the forward's samples again
        m = None if mask is None else mask[b0:b1, :, r0:r1].reshape(nb, 1, k, n).to(sdt)
        g = grad_out[b0:b1, :, r0:r1].reshape(nb, cout, n).to(mdt)
        if grad_w is not None:
            _add_weight_grad(grad_w, g, (s if m is None else s * m).view(nb, cin * k, n).to(mdt))
        grad_cols = torch.bmm(w2.expand(nb, -1, -1).transpose(1, 2), g).to(sdt).view(nb, cin, k, n)
        if grad_m is not None:
            grad_m[b0:b1, :, r0:r1] = s.mul_(grad_cols).sum(1).view(nb, k, r, wo)
        del s
        if not (need_in or need_off):
            continue
        if m is not None:
            grad_cols.mul_(m)  # now d loss / d samples
        gx, gg = torch.ops.aten.grid_sampler_2d_backward(
            grad_cols.view(nb, cin, k * r, wo), x[b0:b1], grid_c, 0, 0, False, [need_in, need_off]
        )  # bilinear, zeros padding, align_corners=False, as in _sample
        del grad_cols
        if grad_in is not None:
            if split:
                grad_in[b0:b1] += gx
            else:
                grad_in[b0:b1] = gx
        if grad_grid is not None:
            grad_grid[b0:b1, :, r0:r1] = gg.view(nb, k, r, wo, 2)
        del gx, gg
    grad_off = None
    if grad_grid is not None:
        # grid = ((2 (off_x + j + w_idx - 1) + 1) / W - 1, same in y): d grid / d offset = 2/W, 2/H
        grad_off = torch.stack((grad_grid[..., 1] * (2 / h), grad_grid[..., 0] * (2 / w)), dim=2)
        grad_off = grad_off.view(b, 2 * k, ho, wo)
    return (
        None if grad_in is None else grad_in.to(input.dtype),
        grad_off,
        None if grad_w is None else grad_w.view_as(weight).to(weight.dtype),
        None if grad_m is None or mask is None else grad_m.to(mask.dtype),
    )


def _chunk_plan(input: Tensor, k: int, ho: int, wo: int) -> list[tuple[int, int, int, int]]:
    """``_chunks`` of the taps (B, Cin, K, Ho*Wo) of ``input`` (counted as float32 at least: autocast
    may sample in float32)."""
    b, cin = input.shape[:2]
    row_bytes = cin * k * wo * max(input.element_size(), 4)
    return _chunks(b, ho, row_bytes, max(int(_CHUNK_INPUTS * input.numel() * input.element_size()), _MIN_CHUNK_BYTES))
