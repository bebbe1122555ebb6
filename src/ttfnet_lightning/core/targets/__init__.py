"""Batched Gaussian target encoding: boxes -> heatmap, box_target, reg_weight.

This is the paper's contribution (equations (4)-(7)) and the only place it lives. The defaults
reproduce the released TTFNet code exactly (docs/paper.md, "Target encoder variants"):

* heatmap: one aspect-ratio-aware Gaussian per box, radii ``r_h = int(h_f / 2 * alpha)`` and
  ``r_w = int(w_f / 2 * alpha)`` on the feature-scale box, evaluated on integer offsets inside a
  ``(2 r_h + 1) x (2 r_w + 1)`` window with ``sigma = (2 r + 1) / 6``, peak exactly 1 at
  ``(floor(cx / stride), floor(cy / stride))``, clipped at the map border, element-wise max per class;
* regression area: the (clipped) window of the beta kernel (the same kernel when beta == alpha);
* ambiguous pixels: boxes are drawn largest area first, so the smallest box covering a pixel owns
  its regression target and weight (ties in area: the later box in input order wins);
* weights: ``log(area) * G(i, j) / sum(G over the box's clipped area)``, area = ``(w + 1) * (h + 1)``.

How it is batched: every kernel is separable, ``G(y, x) = gy(y) * gx(x)``, so each box contributes
two 1-D profiles (length h and w) and every per-box sum is a product of two 1-D sums. The only 2-D
work is the per-class max for the heatmap and the "who owns this pixel" reduction (max drawing
rank), each an in-place scatter-max of every box's values over its own window only (not the whole
map), written straight into the zero-filled output; then the owner's target and weight are
gathered per pixel. Boxes are drawn in groups that share a window size: on an accelerator, a
static bound known from the map size and kernel options (no host synchronisation); on the CPU,
where reading a tensor costs nothing, the boxes are sorted by window size and each group gets the
size its boxes need. There is no Python loop over boxes or images (only over groups of boxes);
the result does not depend on the grouping (max is exact and order-free).

:func:`regression_coverage` counts, per output pixel, the boxes whose regression area covers it
(the ambiguity analysis of the paper's Tables 2 and 3); it shares the geometry (box order, centres,
radii, rectangle sub-boxes, clipping) with :func:`encode_targets` through one private helper.

Shapes: B images, M boxes per image (padded; label -1 marks padding), C classes, h x w output map.
"""

from __future__ import annotations

from ttfnet_lightning.core.targets.encode import encode_targets, regression_coverage
from ttfnet_lightning.core.targets.geometry import AreaWeight, RadiusFormula, gaussian_radius

__all__ = ["encode_targets", "regression_coverage", "gaussian_radius", "AreaWeight", "RadiusFormula"]
