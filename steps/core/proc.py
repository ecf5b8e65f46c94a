"""Process helpers for the detached processes the local serving plane keeps (model servers, HAProxy).

A pid read back from a state file may name another process by now: the one that was started exited and the
kernel gave its pid to a new one. So whoever starts a process records its creation time (`started(pid)`, psutil's
`create_time`), and `alive` and `terminate` take it back: a process whose creation time differs is not the one
that was started, so it is neither reported alive nor signalled, and neither is its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

__all__ = ["alive", "started", "terminate"]

# psutil derives a creation time from the boot time, which moves when the wall clock is stepped (NTP); a pid is
# only reused after it wrapped around, which takes far longer than this on any real machine.
_SAME_PROCESS_S = 1.0


def started(pid: int | None) -> float | None:
    """The creation time of process `pid` (epoch seconds, psutil), None when there is no such process."""
    if not pid:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError):
        return None


def _process(pid: int | None, created: float | None) -> psutil.Process | None:
    """The running (not zombie) process `pid`, when it is the one created at `created` (None: not checked)."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE and process.num_threads() <= 1:
            return None  # exited, not yet reaped by its parent
        if created is not None and abs(process.create_time() - created) > _SAME_PROCESS_S:
            return None  # the pid was reused: not the process that was started
    except (psutil.NoSuchProcess, ValueError):
        return None
    except psutil.AccessDenied:
        return psutil.Process(pid) if created is None else None
    return process


def alive(pid: int | None, created: float | None = None) -> bool:
    """Whether `pid` runs and, given its recorded creation time `created`, is still the process that was started.

    A zombie (exited, not yet reaped by its parent) does not run. A multi-threaded process (haproxy) whose main
    thread has exited shows as a zombie while its other threads still run and hold its sockets: that one still runs.
    """
    return _process(pid, created) is not None


def _send(process: psutil.Process, sig: signal.Signals, *, group: bool, verified: bool) -> None:
    """Signal the process, or its group when asked and it leads one; never a group of a process not verified."""
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess, PermissionError, psutil.AccessDenied):
        leads_group = group and os.getpgid(process.pid) == process.pid
        if leads_group:
            os.killpg(process.pid, sig)
        elif verified or not group:
            process.send_signal(sig)  # psutil refuses a pid reused since `process` was made


def terminate(pid: int | None, *, created: float | None = None, group: bool = False, timeout: float = 10.0) -> None:
    """SIGTERM `pid` (its process group when `group`), then SIGKILL after `timeout` seconds; idempotent.

    Args:
        pid: The process; None or 0 is nothing to do.
        created: Its creation time as `started(pid)` recorded it; when given, a process created at another time
            (the pid was reused) is left alone. Without it a group is signalled only when `pid` leads one.
        group: Signal the process group `pid` leads (model servers start in a session of their own).
        timeout: Seconds between SIGTERM and SIGKILL.
    """
    process = _process(pid, created)
    if process is None:
        return
    _send(process, signal.SIGTERM, group=group, verified=created is not None)
    deadline = time.monotonic() + timeout
    while alive(pid, created) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid, created):
        _send(process, signal.SIGKILL, group=group, verified=created is not None)
