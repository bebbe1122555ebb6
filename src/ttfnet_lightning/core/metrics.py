"""The six COCO box APs under one set of names, and how "no ground truth of this size" is shown.

COCO reports AP, AP50, AP75 and AP for small / medium / large objects; torchmetrics' mAP and
pycocotools' ``COCOeval.stats`` hold them under other names and positions, and both use -1 where a
size range has no ground truth (e.g. APl at 128 px). Logged as ``val/<name>`` in percent.
"""

from __future__ import annotations

__all__ = ["AP_NAMES", "TORCHMETRICS_KEYS", "COCO_STATS", "NA_NOTE", "is_na", "format_ap"]

#: our names, in COCO's order
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: torchmetrics MeanAveragePrecision result keys, by our names
TORCHMETRICS_KEYS = dict(zip(AP_NAMES, ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")))
#: COCOeval ``stats`` positions, by our names
COCO_STATS = {name: i for i, name in enumerate(AP_NAMES)}
NA_NOTE = "n/a (no ground truth of this size)"


def is_na(value: float) -> bool:
    """True for the -1 that torchmetrics and COCOeval report where a size range has no ground truth."""
    return value < 0


def format_ap(value: float, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or ``n/a`` (padded to the same width) when it is -1."""
    text = format(value, spec)
    return "n/a".rjust(len(text)) if is_na(value) else text
