"""Process helpers for the detached processes the local serving plane keeps (model servers, HAProxy)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["alive", "terminate"]


def alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1] != "Z"
    return True


def terminate(pid: int | None, *, group: bool = False, timeout: float = 10.0) -> None:
    """SIGTERM `pid` (its process group when `group`), then SIGKILL after `timeout` seconds; idempotent."""
    if not pid or not alive(pid):
        return
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if alive(pid):
            kill(pid, signal.SIGKILL)
