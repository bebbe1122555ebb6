"""One training run per output folder at a time.

:func:`run_lock` takes an exclusive OS lock (``fcntl.flock``) on ``<output dir>/.run.lock`` for the
whole run and writes who holds it (pid, host, start time, command) into the file. A second run
started into the same folder is refused at once, before it reads or writes anything else there,
with an error naming the running one (:class:`RunLockedError`).

The kernel releases the lock when its holder exits in any way (SIGKILL, a crash, power loss of a
client of a network file system with lock support), so a dead run never leaves it stuck: the lock
file may remain, but it is not locked, and the next run takes it. Forked children of the holder
(data-loader workers, which can outlive a killed parent by seconds) close their copy of the lock's
descriptor right after the fork, so that only the holder itself keeps the folder locked.

Under DDP one lock is taken per run, by the launching process (global rank 0 as its launcher set
it, :func:`~ttfnet_lightning.training.distributed.is_launch_rank_zero`); the other ranks of the same run
take none (:func:`lock_output_dir`). Jobs of a Hydra sweep each lock their own folder. From the
command line with ``output_dir=...``, :class:`HydraRunLock` takes the lock before Hydra writes its
own files (``.hydra/``, the job log) into the folder; the run itself then holds it on (a process
that holds a folder's lock takes it again without waiting).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ttfnet_lightning.training.distributed import is_launch_rank_zero

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "RunLockedError", "run_lock", "lock_output_dir", "HydraRunLock"]

LOCK_FILE = ".run.lock"

# the locks this process holds: lock file (resolved) -> descriptor; a forked child closes them (see
# the module docstring)
_held: dict[str, int] = {}


def _close_held_in_child() -> None:
    for fd in list(_held.values()):
        with contextlib.suppress(OSError):
            os.close(fd)  # closes the child's copy only: the parent keeps the lock
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLockedError(RuntimeError):
    """Another process is training into this output folder now (the message names it)."""


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's record in the lock file (retried briefly: a holder writes it just after locking)."""
    for _ in range(20):
        try:
            raw = os.pread(fd, 1 << 16, 0)
            if raw:
                return dict(json.loads(raw.decode("utf-8")))
        except (OSError, ValueError, TypeError):
            pass
        time.sleep(0.05)
    return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not said who it is"
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}, "
        f"command: {holder.get('command', '?')}"
    )


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock; None if the file system has no
    locks. Raises RunLockedError when another process holds it."""
    out = path.parent
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{out} is in use by another training run ({_describe(holder)}; lock file {path}). This run did not "
                f"start and changed nothing in that folder: wait for the other run to end (or stop it), or choose "
                f"another output_dir."
            ) from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without locks
            os.close(fd)
            log.warning("cannot lock %s (%s): a second run started into %s would not be refused", path, exc, out)
            return None
        # a holder that ended between our open and flock unlinked the file we opened: start again
        try:
            mine, there = os.fstat(fd), os.stat(path)
            if (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise RunLockedError(f"could not lock {path}: other processes keep replacing it")


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[Path | None]:
    """Hold the exclusive lock of the output folder ``out`` (created if missing) for the ``with``
    block; yields the lock file (None where the OS or file system offers no lock).

    Raises:
        RunLockedError: another process holds the lock (the message names it: pid, host, start
            time, command); nothing in ``out`` is changed.
    """
    out = Path(out)
    if fcntl is None:
        log.warning("no file locks on this platform: a second run started into %s would not be refused", out)
        yield None
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    key = os.path.realpath(path)
    if key in _held:  # this process holds it already (HydraRunLock): held on by the outer holder
        yield path
        return
    fd = _try_lock(path)
    if fd is None:
        yield None
        return
    _held[key] = fd
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "output_dir": str(out.absolute()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a process that opened it retries on the new file
        _held.pop(key, None)
        os.close(fd)


@contextlib.contextmanager
def lock_output_dir(out: str | Path) -> Iterator[Path | None]:
    """:func:`run_lock` in the launching process of a run (global rank 0 as its launcher set it);
    nothing in the other DDP ranks of the same run, which must not be refused."""
    if not is_launch_rank_zero():
        yield None
        return
    with run_lock(out) as path:
        yield path


class HydraRunLock(Callback):
    """Hydra callback (``hydra.callbacks.run_lock`` in ``train.yaml``): a single run with
    ``output_dir`` set locks that folder before Hydra writes into it, and keeps it locked until the
    run ends; a refused run exits before Hydra's ``.hydra/`` files and log of the running one are
    touched. (A run without ``output_dir`` gets a new, time-stamped folder; sweep jobs are locked by
    the run itself.)"""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        out = config.get("output_dir")
        if not out or not is_launch_rank_zero():
            return
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(run_lock(str(out)))
        except RunLockedError as exc:
            # Hydra turns a callback's exception into a warning and runs the job anyway: exit instead
            raise SystemExit(f"{type(exc).__name__}: {exc}") from None
        self._stack = stack

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
