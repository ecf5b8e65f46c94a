"""A pod's container as a process group of this machine: start it, wait for it, kill it as the kubelet does.

Each container runs in its own process group (bubblewrap's sandbox included), so a deadline, a stop/terminate or
the end of a daemon's scope kills all of it: SIGTERM, then SIGKILL after a grace period. Its exit wakes the wait
at once (a pidfd); every `POLL_S` the deadline, the kill request and a daemon's readiness are checked.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["POLL_S", "exit_status", "kill_group", "sleep_until", "start", "wait"]

POLL_S = 0.1  # how often a running pod's deadline and the workflow's stop/terminate request are checked
_GRACE_S = 5.0  # SIGTERM -> SIGKILL (Kubernetes' terminationGracePeriodSeconds, shortened for a local run)


def start(argv: Sequence[str], env: Mapping[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in a process group of its own, its stdout and stderr in `logs`/stdout and `logs`/stderr.

    Raises:
        OSError: The program cannot be started (not found, not executable).
    """
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        return subprocess.Popen(list(argv), stdout=out, stderr=err, env=dict(env), process_group=0)


def wait(
    proc: subprocess.Popen[bytes],
    deadline_s: float | None,
    stopped: Callable[[], str],
    ready: Callable[[], bool] | None = None,
) -> str:
    """Wait for the process; "" when it ended by itself, else why its process group was killed.

    `stopped()` says why it must be killed now ("" if not). `ready`, for a daemon, is polled until it first says
    True (its readiness probe); it is not called again after that.
    """
    until = None if deadline_s is None else time.monotonic() + deadline_s
    pidfd = _pidfd(proc.pid)
    why = ""
    try:
        while proc.poll() is None and not why:
            left = POLL_S if until is None else max(0.0, min(POLL_S, until - time.monotonic()))
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=left)
            if proc.poll() is not None:
                break
            if until is not None and time.monotonic() >= until:
                why = f"Pod was active on the node longer than the specified deadline ({deadline_s:.0f}s)"
            else:
                why = stopped()
            if not why and ready is not None and ready():
                ready = None
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if proc.poll() is None:
            kill_group(proc)
    return why


def exit_status(proc: subprocess.Popen[bytes]) -> int:
    """The container's exit code as Kubernetes reports it: 128 + N for a process ended by signal N."""
    code = proc.returncode if proc.returncode is not None else proc.wait()
    return 128 - code if code < 0 else code


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux 5.3+), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL what is left of it after the grace period; reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    until = time.monotonic() + _GRACE_S
    while _group_alive(proc):
        if time.monotonic() >= until:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap the leader once it exits, or its zombie keeps the group alive
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sleep_until(deadline: float) -> None:
    """Sleep until a time.monotonic() deadline."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
