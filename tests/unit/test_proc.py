"""Ending the serving plane's detached processes safely: a pid read back from a state file is checked first.

Real processes throughout: `sleep` children in sessions of their own, as the model servers and HAProxy are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from steps.core.proc import alive, started, terminate


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever still runs at the end is killed and reaped."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _spawn(processes: list[subprocess.Popen[bytes]], *argv: str, session: bool = True) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(list(argv or ("sleep", "60")), start_new_session=session)
    processes.append(process)
    return process


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def test_started_records_the_creation_time_and_alive_checks_it(spawned: list[subprocess.Popen[bytes]]) -> None:
    """GIVEN a running process and its creation time as recorded at start
    WHEN alive() is asked with that time, then with another one (what a reused pid looks like)
    THEN the first is alive and the second is not the process that was started."""
    process = _spawn(spawned)
    created = started(process.pid)

    assert created is not None and abs(created - time.time()) < 60
    assert alive(process.pid, created)
    assert not alive(process.pid, created - 3600)
    assert started(0) is None and not alive(None) and not alive(0)


def test_a_reused_pid_is_never_signalled(spawned: list[subprocess.Popen[bytes]]) -> None:
    """GIVEN a live process whose creation time differs from the recorded one (the recorded process exited and
    its pid was given to this one)
    WHEN terminate() is called with the pid and the recorded time, for the process and for its group
    THEN it stays alive: neither it nor its group was signalled."""
    process = _spawn(spawned)
    recorded = (started(process.pid) or 0) - 3600

    terminate(process.pid, created=recorded, timeout=0.5)
    terminate(process.pid, created=recorded, group=True, timeout=0.5)

    time.sleep(0.2)
    assert process.poll() is None


def test_the_process_that_was_started_is_terminated_with_its_group(spawned: list[subprocess.Popen[bytes]]) -> None:
    """GIVEN a session leader (as a model server is) with a child of its own in its process group
    WHEN terminate(group=True) is called with its recorded creation time
    THEN the leader and its child both end."""
    leader = _spawn(
        spawned,
        sys.executable,
        "-c",
        "import subprocess, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); time.sleep(60)",
    )
    leader_created = started(leader.pid)
    child_pid = 0
    deadline = time.monotonic() + 10
    while not child_pid and time.monotonic() < deadline:
        children = [c for c in _children(leader.pid) if c != leader.pid]
        child_pid = children[0] if children else 0
        time.sleep(0.05)
    assert child_pid and os.getpgid(child_pid) == leader.pid

    terminate(leader.pid, created=leader_created, group=True, timeout=5)

    assert leader.wait(timeout=5) is not None
    assert _gone(child_pid)


def test_without_a_recorded_time_a_group_is_signalled_only_when_the_pid_leads_one(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    """GIVEN a process in this test's own process group (not a leader) and no recorded creation time
    WHEN terminate(group=True) is called for it
    THEN nothing is signalled (killpg would hit a group it does not lead), and the test process lives on;
    GIVEN a session leader and no recorded time  THEN its group is terminated (state written before times were)."""
    member = _spawn(spawned, session=False)
    terminate(member.pid, group=True, timeout=0.5)
    time.sleep(0.2)
    assert member.poll() is None

    leader = _spawn(spawned)
    terminate(leader.pid, group=True, timeout=5)
    assert leader.wait(timeout=5) is not None


def test_terminate_escalates_to_sigkill_and_is_idempotent(spawned: list[subprocess.Popen[bytes]]) -> None:
    """GIVEN a process that ignores SIGTERM
    WHEN terminate() is called with a short timeout, then again after it ended
    THEN SIGKILL ends it, and the second call does nothing."""
    stubborn = _spawn(
        spawned,
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)",
    )
    created = started(stubborn.pid)
    time.sleep(0.5)  # let it install the handler

    terminate(stubborn.pid, created=created, timeout=0.3)

    assert stubborn.wait(timeout=5) == -9
    terminate(stubborn.pid, created=created, timeout=0.3)


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]
