"""The paper's six table layouts filled with a sweep's jobs: :class:`Cell` (mean +- std over seeds, the
paper's value, missing/failed/running), :class:`Table`, and one builder per table (:func:`table1` ...
:func:`table6`)."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from ttfnet_lightning.paper.sweeps import Job

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """Values of one table cell over the seeds of that setting."""

    values: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    paper: float | None = None
    digits: int = 1
    seeds: list[int | None] = field(default_factory=list)  # the seed of each value (pairs cells by seed)
    collapsed: int = 0  # values from jobs whose box regression never learned (marked with a dagger)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, with_paper: bool = True) -> str:
        d = self.digits
        if self.values:
            s = f"{self.mean:.{d}f}"
            if self.std is not None:
                s += f" ± {self.std:.{d}f}"
            if len(self.values) < len(self.statuses):
                s += f" ({len(self.values)}/{len(self.statuses)})"
            if self.collapsed:
                s += " †"
        elif "running" in self.statuses:
            s = "running"
        elif "failed" in self.statuses:
            s = "failed"
        elif self.statuses:
            s = "missing"
        else:
            s = "-"
        if with_paper and self.paper is not None:
            s += f" [{self.paper:.{d}f}]"
        return s


@dataclass
class Table:
    """A table in the paper's layout: ``cells[(row, column)]``; rows and columns in print order."""

    name: str
    title: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    corner: str = ""
    notes: list[str] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)
    # noise (AP std of one run) assumed for cells of one seed when no cell of the table has several
    # (Table 6's CPU grid): set by build_table for the CPU protocol, see CPU_SEED_SPREAD
    seed_spread: float | None = None

    def markdown(self) -> str:
        head = [self.corner, *self.columns]
        header = " | ".join(head)
        lines = [f"**{self.title}**", "", "| " + header + " |", "|" + "---|" * len(header.split(" | "))]
        for r in self.rows:
            lines.append("| " + " | ".join([r, *(self.cells.get((r, c), Cell()).text() for c in self.columns)]) + " |")
        lines += ["", "Cells: ours, mean ± std over seeds ((n/N): only n of N jobs finished); [paper].", ""]
        lines += self.notes
        if self.verdicts:
            lines += [
                "",
                "The paper's claims on our numbers (reproduced: the difference exceeds 2 standard errors; "
                "within noise: it does not; not reproduced: the opposite beyond 2 SE):",
                "",
            ]
            lines += [v.line() for v in self.verdicts]
        return "\n".join(lines) + "\n"

    def csv_rows(self) -> list[dict[str, Any]]:
        out = []
        for (r, c), cell in self.cells.items():
            out.append(
                {
                    "table": self.name,
                    "row": r,
                    "column": c,
                    "mean": cell.mean,
                    "std": cell.std,
                    "n": len(cell.values),
                    "jobs": len(cell.statuses),
                    "values": " ".join(f"{v:.4f}" for v in cell.values),
                    "paper": cell.paper,
                    "statuses": " ".join(cell.statuses),
                    "collapsed": cell.collapsed,
                }
            )
        return out


def _fill(
    jobs: Sequence[Job], key: Callable[[Job], tuple[str, str] | None], metric: Callable[[Job], float | None]
) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for job in jobs:
        k = key(job)
        if k is None:
            continue
        cell = cells.setdefault(k, Cell())
        cell.statuses.append(job.status)
        v = metric(job)
        if v is not None:
            cell.values.append(v)
            cell.seeds.append(job.cfg.get("seed"))
            if metric is _ap and job.box_collapse is not None:
                cell.collapsed += 1
    return cells


def _ap(job: Job) -> float | None:
    return job.metric("val/AP")


def _fmt_beta(beta: float) -> str:
    return f"{float(beta):g}"


def _ratio_cells(
    jobs: Sequence[Job], key: Callable[[Job], tuple[str, str] | None], ratio_fn: Callable[[DictConfig], float] | None
) -> tuple[dict[tuple[str, str], Cell], list[str]]:
    """One Ratio value per cell (it depends on the kernel and the training boxes, not the seed)."""
    cells: dict[tuple[str, str], Cell] = {}
    notes: list[str] = []
    if ratio_fn is None:
        return cells, ["Ratio: not computed (--no-ratio)."]
    for job in jobs:
        k = key(job)
        if k is None or k in cells:
            continue
        try:
            cells[k] = Cell(values=[ratio_fn(job.cfg)], statuses=["finished"], digits=2)
        except Exception as exc:  # e.g. the COCO root is not on this machine
            cells[k] = Cell(statuses=["missing"], digits=2)
            msg = f"Ratio not computed: {type(exc).__name__}: {exc}"
            if msg not in notes:
                notes.append(msg)
    return cells, notes


# ------------------------------------------------------------------------------ the six tables
_T1_COLUMNS = {
    ("none", False): "none",
    ("norm", False): "Norm",
    ("sqrt", False): "Norm+Sqrt",
    ("log", False): "Norm+Log",
    ("sqrt", True): "Norm+Sqrt+Gaussian",
    ("log", True): "Norm+Log+Gaussian",
}


def _gaussian_weight(k: DictConfig) -> bool:
    return bool(k.wh_gaussian if k.get("gaussian_weight") is None else k.gaussian_weight)


def table1(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn=None) -> Table:
    p = paper["table1"]
    cols = list(p["columns"])

    def key(job: Job) -> tuple[str, str] | None:
        k = job.cfg.kernel
        col = _T1_COLUMNS.get((str(k.area_weight), _gaussian_weight(k)))
        return None if col is None else ("AP", col)

    cells = _fill(jobs, key, _ap)
    for c, v in zip(cols, p["AP"]):
        cells.setdefault(("AP", c), Cell()).paper = v
    marks = {
        "+Norm": lambda c: c != "none",
        "+Sqrt": lambda c: "Sqrt" in c,
        "+Log": lambda c: "Log" in c,
        "+Gaussian": lambda c: "Gaussian" in c,
    }
    for row, has in marks.items():
        for c in cols:
            cells[(row, c)] = _Text("X" if has(c) else "")
    return Table("table1", "Table 1: regression weights W_ij (beta = 0.54), AP", [*marks, "AP"], cols, cells)


def table2(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn=None) -> Table:
    p = paper["table2"]
    betas = sorted({float(j.cfg.kernel.beta) for j in jobs} | set(p["beta"]))
    cols = [_fmt_beta(b) for b in betas]

    def mode(job: Job) -> str:
        return "Aware" if job.cfg.kernel.class_aware else "Agnostic"

    cells = _fill(jobs, lambda j: (f"{mode(j)} AP", _fmt_beta(j.cfg.kernel.beta)), _ap)
    rcells, notes = _ratio_cells(jobs, lambda j: (f"{mode(j)} Ratio %", _fmt_beta(j.cfg.kernel.beta)), ratio_fn)
    cells.update(rcells)
    for m in ("Agnostic", "Aware"):
        for b, ap, ratio in zip(p["beta"], p[m]["AP"], p[m]["Ratio"]):
            cells.setdefault((f"{m} AP", _fmt_beta(b)), Cell()).paper = ap
            cells.setdefault((f"{m} Ratio %", _fmt_beta(b)), Cell(digits=2)).paper = ratio
    rows = ["Agnostic AP", "Agnostic Ratio %", "Aware AP", "Aware Ratio %"]
    return Table(
        "table2",
        "Table 2: rectangle sub-area of relative size beta, class-agnostic vs class-aware",
        rows,
        cols,
        cells,
        corner="beta",
        notes=notes,
    )


def _t3_row(beta: float, gaussian: bool, aspect: bool) -> str:
    return f"{_fmt_beta(beta)} | {'X' if gaussian else ''} | {'X' if aspect else ''}"


def table3(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn=None) -> Table:
    p = paper["table3"]

    def row(job: Job) -> str:
        k = job.cfg.kernel
        return _t3_row(float(k.beta), bool(k.wh_gaussian), bool(k.aspect_ratio))

    cells = _fill(jobs, lambda j: (row(j), "AP"), _ap)
    rcells, notes = _ratio_cells(jobs, lambda j: (row(j), "Ratio %"), ratio_fn)
    cells.update(rcells)
    rows = []
    for beta, gaussian, aspect, ap, ratio in p["rows"]:
        r = _t3_row(beta, gaussian, aspect)
        rows.append(r)
        cells.setdefault((r, "AP"), Cell()).paper = ap
        cells.setdefault((r, "Ratio %"), Cell(digits=2)).paper = ratio
    rows += sorted({r for r, _ in cells} - set(rows))
    return Table(
        "table3",
        "Table 3: kernels producing the regression samples",
        rows,
        ["AP", "Ratio %"],
        cells,
        corner="beta | w/ Gaussian | w/ Aspect Ratio",
        notes=notes,
    )


def table4(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn=None) -> Table:
    p = paper["table4"]
    settings = [tuple(s) for s in p["shortcuts"]]
    settings += sorted({tuple(int(x) for x in j.cfg.model.shortcut_convs) for j in jobs} - set(settings))
    cols = ["(" + ",".join(map(str, s)) + ")" for s in settings]

    def col(job: Job) -> str:
        return "(" + ",".join(str(int(x)) for x in job.cfg.model.shortcut_convs) + ")"

    def fps(job: Job) -> float | None:
        return float(job.results["fps"]) if job.status == "finished" and "fps" in job.results else None

    cells = _fill(jobs, lambda j: ("AP", col(j)), _ap)
    cells.update(_fill(jobs, lambda j: ("FPS", col(j)), fps))
    for i, (s, c) in enumerate(zip(settings, cols)):
        for st in range(3):
            cells[(f"Stage {st + 2}", c)] = _Text(str(s[st]))
        if i < len(p["AP"]):
            cells.setdefault(("AP", c), Cell()).paper = p["AP"][i]
            cells.setdefault(("FPS", c), Cell()).paper = p["FPS"][i]
    devices = sorted({str(j.results.get("fps_device")) for j in jobs if j.results.get("fps_device")})
    notes = [
        f"FPS: model-only images/s at batch 1 on {', '.join(devices) or 'the run device'} (ours); the paper's on one "
        "GTX 1080Ti."
    ]
    methods = sorted({str(j.results["fps_method"]) for j in jobs if j.results.get("fps_method")})
    notes += [f"FPS measured again after the sweep ({m})." for m in methods]
    rows = ["Stage 2", "Stage 3", "Stage 4", "AP", "FPS"]
    return Table(
        "table4", "Table 4: shortcut convs per stage, speed-accuracy trade-off", rows, cols, cells, notes=notes
    )


class _Text(Cell):
    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def text(self, with_paper: bool = True) -> str:
        return self._text


_SCHEDULE_NAMES = {"fast": "1x"}


def table5(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn=None) -> Table:
    p = paper["table5"]
    paper_mult = [round(lr / p["default_lr"], 2) for lr in p["lr"]]

    def mult(job: Job) -> float:
        return round(float(job.cfg.schedule.lr) / float(job.cfg.backbone.lr), 2)

    def sched(job: Job) -> str:
        return _SCHEDULE_NAMES.get(str(job.cfg.schedule.name), str(job.cfg.schedule.name))

    lrs = sorted({(mult(j), float(j.cfg.schedule.lr)) for j in jobs})
    scheds = [s for s in p["schedules"] if s in {sched(j) for j in jobs}] or list(p["schedules"])
    scheds += sorted({sched(j) for j in jobs} - set(scheds))

    def col_name(m: float, lr: float, s: str) -> str:
        return f"LR {lr:g} ({m:g}x) {s}"

    cols = [col_name(m, lr, s) for m, lr in lrs for s in scheds]
    cells = _fill(
        jobs, lambda j: (_fmt_beta(j.cfg.kernel.beta), col_name(mult(j), float(j.cfg.schedule.lr), sched(j))), _ap
    )
    betas = sorted({float(j.cfg.kernel.beta) for j in jobs})
    for i, b in enumerate(p["beta"]):
        if b not in betas:
            continue
        for m, lr in lrs:
            for s in scheds:
                if m in paper_mult and s in p["schedules"]:
                    cells.setdefault((_fmt_beta(b), col_name(m, lr, s)), Cell()).paper = p["AP"][i][
                        2 * paper_mult.index(m) + p["schedules"].index(s)
                    ]
    notes = (
        [
            f"Columns: LR (its multiple of the backbone's default LR {float(jobs[0].cfg.backbone.lr):g}) and schedule; "
            "[paper] is the paper's column with the same multiple "
            f"(6e-3, 1.2e-2, 1.8e-2 = {', '.join(f'{m:g}x' for m in paper_mult)} of 0.015)."
        ]
        if jobs
        else []
    )
    return Table(
        "table5",
        "Table 5: kernel size beta x learning rate x schedule (alpha = 0.54, Gaussian area)",
        [_fmt_beta(b) for b in betas],
        cols,
        cells,
        corner="beta",
        notes=notes,
    )


_BACKBONE_NAMES = {"r18": "R18", "r34": "R34", "d53": "D53"}


def table6(jobs: Sequence[Job], paper: dict[str, Any], ratio_fn=None) -> Table:
    p = paper["table6"]

    def row(job: Job) -> str:
        s = _SCHEDULE_NAMES.get(str(job.cfg.schedule.name), str(job.cfg.schedule.name))
        return f"{s} {'pretrained' if job.cfg.backbone.pretrained else 'scratch'}"

    cells = _fill(
        jobs, lambda j: (row(j), _BACKBONE_NAMES.get(str(j.cfg.backbone.name), str(j.cfg.backbone.name))), _ap
    )
    for r, values in zip(p["rows"], p["AP"]):
        for c, v in zip(p["backbones"], values):
            cells.setdefault((r, c), Cell()).paper = v
    rows = list(p["rows"]) + sorted({r for r, _ in cells} - set(p["rows"]))
    cols = list(p["backbones"]) + sorted({c for _, c in cells} - set(p["backbones"]))
    return Table("table6", "Table 6: long schedules, from scratch vs pretrained", rows, cols, cells, corner="schedule")


BUILDERS: dict[str, Callable[..., Table]] = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5": table5,
    "table6": table6,
}
