"""The paper's Figure 3 for every target encoder (:func:`targets_figure`), a model's detections and
heatmaps (:func:`run_model`), and the matplotlib helpers every figure uses (:func:`subplots`,
:func:`save_figure`). matplotlib is imported inside the functions only (the ``viz`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from ttfnet_lightning.core.drawing import AMBIGUOUS_RGB, BOX_PALETTE, colorize
from ttfnet_lightning.core.targets import encode_targets, regression_coverage


@torch.no_grad()
def run_model(model: Any, images: Sequence[Tensor]) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
    """Detections and predicted heatmaps of a :class:`~ttfnet_lightning.training.lit_module.TTFNetModule`
    for images of any size: each (3, H, W) uint8 image is resized to the model's input size (as
    ``predict`` does), boxes come back in its own pixels, heatmaps (h, w) are the sigmoid, max
    over classes, at the output map's resolution (none for a module without heatmap: ``has_heatmap`` false)."""
    from torchvision.transforms.v2 import functional as TF

    if not images:
        return [], []
    device = next(model.parameters()).device
    size = list(model.input_size)
    batch = torch.stack([TF.resize(im, size, antialias=True) for im in images]).to(device)
    meta = [{"orig_size": tuple(im.shape[-2:])} for im in images]
    hm, wh = model(model.normalize(batch))
    dets = model.decode(hm, wh, meta, tuple(size))
    # torchvision's detectors (PeerDetectorModule) have no heatmap: none
    heat = list(hm.float().sigmoid().amax(1).cpu()) if getattr(model, "has_heatmap", True) else []
    return [{k: v.cpu() for k, v in d.items()} for d in dets], heat


# ------------------------------------------------------------------------------------ targets
@dataclass
class TargetMaps:
    """What one target encoder makes of one image's boxes, on the output map (h, w).

    heatmap: max over classes; weight: regression weight, summed over class channels (class-aware);
    owner: index of the box a pixel regresses to (-1: no sample; class-aware: the channel with the
    largest weight); coverage: boxes whose regression area covers the pixel (max over class channels);
    num_samples / num_ambiguous: regression samples and those covered by 2+ boxes, counted per class
    channel as :mod:`ttfnet_lightning.paper.analyze` does.
    """

    heatmap: Tensor
    weight: Tensor
    owner: Tensor
    coverage: Tensor
    num_samples: int
    num_ambiguous: int
    stride: int

    @property
    def ambiguous(self) -> Tensor:
        return self.coverage >= 2

    @property
    def ambiguous_ratio(self) -> float:
        """Ambiguous / all regression samples, in percent (0 when there are none)."""
        return 100.0 * self.num_ambiguous / self.num_samples if self.num_samples else 0.0


def target_maps(
    boxes: Tensor, labels: Tensor, *, num_classes: int, image_size: Sequence[int], stride: int = 4, **options: Any
) -> TargetMaps:
    """:func:`~ttfnet_lightning.core.targets.encode_targets` and
    :func:`~ttfnet_lightning.core.targets.regression_coverage` for one image's boxes (M, 4) xyxy input pixels and
    labels (M,), with the encoder's keyword ``options`` (a kernel config's keys; ``name`` is ignored)."""

    options = {k: v for k, v in options.items() if k != "name"}
    H, W = (int(s) for s in image_size)
    out = (H // stride, W // stride)
    b = boxes.detach().float().cpu().reshape(1, -1, 4)
    lab = labels.detach().cpu().long().reshape(1, -1)
    hm, tgt, wt = encode_targets(b, lab, num_classes=num_classes, output_size=out, stride=stride, **options)
    cov = regression_coverage(b, lab, num_classes=num_classes, output_size=out, stride=stride, **options)[
        0
    ]  # (G, h, w)
    G = wt.shape[1]
    wt, tgt = wt[0], tgt[0].reshape(G, 4, *out)
    best = wt.argmax(0)  # (h, w): the class channel shown where several own a pixel
    owner_box = tgt.gather(0, best[None, None].expand(1, 4, *out))[0]  # (4, h, w)
    match = (owner_box[None] == b[0][:, :, None, None]).all(1)  # (M, h, w)
    owner = torch.where((wt.amax(0) > 0) & match.any(0), match.float().argmax(0), torch.full(out, -1))
    return TargetMaps(
        heatmap=hm[0].amax(0),
        weight=wt.sum(0),
        owner=owner.long(),
        coverage=cov.amax(0),
        num_samples=int((cov >= 1).sum()),
        num_ambiguous=int((cov >= 2).sum()),
        stride=stride,
    )


def _kernel_dir() -> Path:
    return Path(str(resources.files("ttfnet_lightning").joinpath("conf", "kernel")))


def kernel_names() -> list[str]:
    """The ``kernel`` config group's options (``conf/kernel/*.yaml``), the released one first."""
    names = sorted(p.stem for p in _kernel_dir().glob("*.yaml"))
    return sorted(names, key=lambda n: n != "ttfnet")


def kernel_options(name: str = "ttfnet", **overrides: Any) -> dict[str, Any]:
    """The encoder options of ``conf/kernel/<name>.yaml`` (its ``defaults`` followed, as Hydra
    composes them), with ``overrides`` on top; ``name`` is left out."""
    path = _kernel_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown kernel {name!r}; options: {kernel_names()}")
    raw = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {}
    for d in raw.pop("defaults", None) or ["_self_"]:
        out.update(raw if d == "_self_" else kernel_options(str(d)))
    out.update(overrides)
    out.pop("name", None)
    return out


def figure3_variants(alpha: float = 0.54, beta: float = 0.54, rect_beta: float = 0.3) -> dict[str, dict[str, Any]]:
    """The paper's Figure 3 as encoder options: (a) CenterNet (isotropic heatmap, the centre pixel
    as the only regression sample), (b) the whole box (FCOS), (c) a centre rectangle of relative
    size ``rect_beta``, (d) TTFNet's Gaussian area with Gaussian weights (``alpha``, ``beta``)."""
    return {
        "(a) CenterNet: centre pixel": kernel_options("ttfnet", alpha=alpha, beta=0.01, aspect_ratio=False),
        "(b) FCOS: whole box": kernel_options("rect", alpha=alpha, beta=1.0),
        f"(c) rectangle, beta={rect_beta:g}": kernel_options("rect", alpha=alpha, beta=rect_beta),
        f"(d) TTFNet, a={alpha:g} b={beta:g}": kernel_options("ttfnet", alpha=alpha, beta=beta),
    }


def ablation_variants(alpha: float = 0.54, beta: float = 0.54, rect_beta: float = 0.3) -> dict[str, dict[str, Any]]:
    """Every other option of the ``kernel`` config group (the paper's ablations, Tables 1-3) at
    ``alpha``/``beta`` (``rect`` at ``rect_beta``), plus the sqrt area weight of Table 1."""
    out = {}
    for name in kernel_names():
        if name == "ttfnet":
            continue
        out[f"{name}" + (f", beta={rect_beta:g}" if name == "rect" else "")] = kernel_options(
            name, alpha=alpha, beta=rect_beta if name == "rect" else beta
        )
    out["area weight sqrt"] = kernel_options("ttfnet", alpha=alpha, beta=beta, area_weight="sqrt")
    return out


def subplots(nrows: int, ncols: int, figsize: tuple[float, float], *, squeeze: bool = False) -> tuple[Any, Any]:
    """A matplotlib Figure and its axes without pyplot (no global figure state: nothing to close,
    nothing shown twice in a notebook; Jupyter displays a returned Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _upsample(a: np.ndarray, stride: int, size: tuple[int, int]) -> np.ndarray:
    """A map of the output grid at input resolution (each cell a stride x stride block)."""
    up = np.repeat(np.repeat(a, stride, axis=0), stride, axis=1)
    H, W = size
    pad = [(0, max(0, H - up.shape[0])), (0, max(0, W - up.shape[1]))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(up, pad, mode="edge")[:H, :W]


def _blend(base: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32)
    return (base.astype(np.float32) * (1 - a) + rgb.astype(np.float32) * a).clip(0, 255).astype(np.uint8)


def _variant_panels(
    m: TargetMaps, dim: np.ndarray, box_rgb: np.ndarray, *, stride: int, weight_decades: float
) -> list[np.ndarray]:
    """Figure 3's three pictures (H, W, 3) uint8 of one variant over the faded image ``dim``: heatmap,
    regression area (owner colours, ambiguous samples red) and regression weight (log scale)."""
    H, W = dim.shape[:2]
    hm = m.heatmap.numpy()
    heat_rgb = colorize(torch.from_numpy(_upsample(hm, stride, (H, W)))).permute(1, 2, 0).numpy()
    panels = [_blend(dim, heat_rgb, 0.9 * _upsample(hm, stride, (H, W)))]
    owner = _upsample(m.owner.numpy(), stride, (H, W))
    area = _blend(dim, box_rgb[np.clip(owner, 0, None)], 0.8 * (owner >= 0))
    amb = _upsample(m.ambiguous.numpy(), stride, (H, W))
    panels.append(_blend(area, np.broadcast_to(np.array(AMBIGUOUS_RGB, np.uint8), (H, W, 3)), 0.95 * amb))
    wt = m.weight.numpy()
    with np.errstate(divide="ignore"):
        wn = np.clip(1 + np.log10(wt / wt.max()) / weight_decades, 0, 1) if wt.max() > 0 else wt
    w_rgb = colorize(torch.from_numpy(0.2 + 0.8 * _upsample(wn, stride, (H, W)))).permute(1, 2, 0).numpy()
    panels.append(_blend(dim // 2, w_rgb, _upsample((wt > 0).astype(np.float32), stride, (H, W))))
    return panels


def _mark_samples(ax: Any, row: int, m: TargetMaps, box_rgb: np.ndarray, *, stride: int) -> None:
    """Heatmap row: a white dot on each peak (the positives); regression-area row with at most 100
    samples: each sample as a square in its box's colour (single pixels would be invisible)."""
    if row == 0:
        ys, xs = np.nonzero(m.heatmap.numpy() >= 1.0)
        ax.scatter((xs + 0.5) * stride, (ys + 0.5) * stride, s=6, c="white", marker="o", linewidths=0)
    if row == 1 and 0 < m.num_samples <= 100:
        ys, xs = np.nonzero(m.owner.numpy() >= 0)
        colours = box_rgb[m.owner.numpy()[ys, xs]] / 255
        ax.scatter(
            (xs + 0.5) * stride, (ys + 0.5) * stride, s=10, c=colours, marker="s", edgecolors="white", linewidths=0.4
        )


def targets_figure(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    variants: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    stride: int = 4,
    panel_size: float = 2.6,
    weight_decades: float = 3.0,
    title: str | None = None,
) -> Any:
    """Figure 3 for one image: a column per encoder variant, rows = heatmap (its peaks, the positive
    samples, marked), regression area (each sample coloured by the box it regresses to, ambiguous
    samples, covered by 2+ boxes, in red; with few samples each is also marked by a dot) and
    regression weight (brighter = larger; log scale over ``weight_decades`` decades below the
    panel's largest weight). Returns a matplotlib Figure."""
    from matplotlib.patches import Rectangle

    H, W = image.shape[-2:]
    img = image.detach().cpu().permute(1, 2, 0).numpy()
    dim = (img.astype(np.float32) * 0.45 + 255 * 0.1).astype(np.uint8)  # the image, faded
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    labels = labels.detach().cpu().long().reshape(-1)
    box_rgb = np.array([BOX_PALETTE[i % len(BOX_PALETTE)] for i in range(len(boxes))] or [(0, 0, 0)], dtype=np.uint8)
    n = len(variants)
    fig, axes = subplots(3, n, (panel_size * n, panel_size * 3 + 0.6))
    rows = [
        "heatmap (peaks: positives)",
        "regression area\n(red: ambiguous)",
        f"regression weight\n(log scale, {weight_decades:g} decades)",
    ]
    for j, (name, opts) in enumerate(variants.items()):
        m = target_maps(boxes, labels, num_classes=num_classes, image_size=(H, W), stride=stride, **opts)
        panels = _variant_panels(m, dim, box_rgb, stride=stride, weight_decades=weight_decades)
        for i, pic in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(pic, interpolation="nearest")
            for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=0.8, ec=tuple(box_rgb[k] / 255)))
            _mark_samples(ax, i, m, box_rgb, stride=stride)
            ax.set_xlim(-0.5, W - 0.5)  # markers near the border would widen the axes
            ax.set_ylim(H - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
        axes[0, j].set_title(f"{name}\n{m.num_samples} samples, {m.ambiguous_ratio:.1f}% ambiguous", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100, colors: int | None = 256) -> Path:
    """Save a figure as PNG; with ``colors`` the PNG is palette-quantised (a few times smaller,
    for figures committed to the repository)."""
    import io

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    im = Image.open(buf).convert("RGB")
    if colors:
        im = im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(path, optimize=True)
    return path
