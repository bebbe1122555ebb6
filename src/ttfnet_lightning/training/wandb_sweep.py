"""Which settings a Hydra multirun varies, and the W&B run name and tags that follow from them.

A multirun job's task overrides (``hydra.overrides.task``) mix the values the sweep varies with the
constants of its command line (``logger=wandb``, ``protocol=cpu``, ...). The varied settings
(:func:`sweep_keys`) are

* the keys of the sweeper's ``hydra.sweeper.params`` (the paper tables' grids, the Optuna search
  space of ``hparams_search=beta_lr``), and
* the command-line overrides written with sweep syntax (``kernel.beta=0.1,0.54``, ``range(...)``,
  ``choice(...)``, ``interval(...)``, ``glob(...)``), as Hydra's own override parser classifies them
  (``Override.is_sweep_override``), read from the sweep's command line as Hydra's basic sweeper saves
  it in ``<sweep dir>/multirun.yaml`` before its first job, or, where no sweeper wrote that file (the
  Optuna sweeper), from this process's command line.

A job's W&B name is then its varied values (``beta=0.1``; :func:`sweep_run_name`), unique within the
sweep, and its tags are only those values; a constant given on the command line is neither.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

__all__ = ["sweep_keys", "sweep_keys_from", "override_key_value", "varied_overrides", "sweep_run_name", "short_names"]


def override_key_value(text: str) -> tuple[str, str] | None:
    """``("kernel.beta", "0.1")`` for ``kernel.beta=0.1`` (also ``+seed=1`` -> ``("seed", "1")``,
    ``backbone@pkg=r18`` -> ``("backbone@pkg", "r18")``); None for a deletion (``~key``) or text
    without ``=``."""
    text = str(text).strip()
    if not text or text.startswith("~") or "=" not in text:
        return None
    key, value = text.lstrip("+").split("=", 1)
    return key, value


def _sweep_overrides_keys(overrides: Iterable[str]) -> list[str]:
    """Keys of the overrides in ``overrides`` that Hydra's parser reads as sweeps (a list of
    values, ``range``/``choice``/``interval``/``glob``); unparsable text is skipped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([str(text)])
        except Exception:  # not a Hydra override (e.g. a program argument): not a setting either
            continue
        if override.is_sweep_override():
            keys.append(override.get_key_element().lstrip("+"))
    return keys


def _multirun_yaml(hc: Any) -> Path | None:
    """``<sweep dir>/multirun.yaml`` of the running multirun (the sweep dir taken relative to the
    directory Hydra was started from), or None when there is none."""
    try:
        sweep_dir = Path(str(hc.sweep.dir))
        if not sweep_dir.is_absolute():
            cwd = OmegaConf.select(hc, "runtime.cwd", default=None)
            sweep_dir = Path(cwd) / sweep_dir if cwd else sweep_dir
    except Exception:  # no sweep dir (not a multirun config)
        return None
    path = sweep_dir / "multirun.yaml"
    return path if path.is_file() else None


def sweep_keys_from(params: Mapping[str, Any] | None, task: Sequence[str]) -> list[str]:
    """The keys a sweep varies: those of its sweeper ``params`` (``hydra.sweeper.params``), then
    those its command line ``task`` (``hydra.overrides.task`` of ``multirun.yaml``) gives with
    sweep syntax; ``hydra.*`` keys left out."""
    keys = [str(k).lstrip("+") for k in (params or {})] + _sweep_overrides_keys(task)
    return list(dict.fromkeys(k for k in keys if not k.startswith("hydra.")))


def sweep_keys(hc: Any, argv: Sequence[str] | None = None) -> list[str]:
    """The settings the running multirun varies (see the module docstring), in the order the
    sweeper lists them: ``hydra.sweeper.params`` first, then the command line's sweeps.

    Args:
        hc: the job's Hydra config (``HydraConfig.get()``).
        argv: the command line to read when the sweep dir has no ``multirun.yaml``; default this
            process's ``sys.argv[1:]``.
    """
    try:
        params = OmegaConf.to_container(hc.sweeper.params, resolve=True) if hc.sweeper.get("params") else {}
    except Exception as exc:  # an interpolation that does not resolve in this job
        log.warning("hydra.sweeper.params not readable (%s): sweep keys from the command line only", exc)
        params = {}
    mr_file = _multirun_yaml(hc)
    if mr_file is not None:
        mr = OmegaConf.load(mr_file)
        task = OmegaConf.select(mr, "hydra.overrides.task", default=None) or []
        try:  # the same params, as the sweeper saw them
            params = {**(OmegaConf.to_container(mr.hydra.sweeper.params, resolve=True) or {}), **(params or {})}
        except Exception:  # none, or not resolvable outside the sweep
            pass
    else:
        task = sys.argv[1:] if argv is None else argv
    return sweep_keys_from(params, [str(t) for t in task])


def varied_overrides(overrides: Sequence[str], keys: Iterable[str]) -> list[str]:
    """The job's overrides (``hydra.overrides.task``) that set one of the varied ``keys``, as
    ``key=value`` text (``+``/``++`` dropped), in the job's order."""
    keys = set(keys)
    varied = []
    for text in overrides:
        kv = override_key_value(text)
        if kv is not None and kv[0] in keys:
            varied.append(f"{kv[0]}={kv[1]}")
    return varied


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last dotted part (``kernel.beta`` -> ``beta``), or the whole key where two keys
    share their last part (``model.lr`` and ``schedule.lr`` stay whole)."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    counts = Counter(last.values())
    return {k: last[k] if counts[last[k]] == 1 else k for k in keys}


def sweep_run_name(base: str, varied: Sequence[str], *, job_num: int | None = None, prefix: bool = False) -> str:
    """A multirun job's W&B name: its varied values with short keys (``beta=0.1,lr=0.01``), after
    ``base:`` when ``prefix`` (the user named the sweep with ``name=...``). With no varied value
    found, ``base#<job number>`` keeps the name unique within the sweep."""
    pairs = [kv for kv in (override_key_value(v) for v in varied) if kv is not None]
    if not pairs:
        return base if job_num is None else f"{base}#{job_num}"
    short = short_names([k for k, _ in pairs])
    values = ",".join(f"{short[k]}={v}" for k, v in pairs)
    return f"{base}:{values}" if prefix and base else values
