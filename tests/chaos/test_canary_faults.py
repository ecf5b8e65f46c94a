"""Chaos: kill -9 a part of a release mid-canary, then assert the end state and count the users' failed requests.

Real processes only (see world.py). Each test prints one `CHAOS` line (fault, phase, outcome, figures) that
docs/reliability.md tabulates. The goal for every fault: all traffic back on the champion (or the release carried
on), no canary server or watchdog left running, lease released and version tagged, 0 failed requests after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from registry.tags import CANARY_TAG
from steps import canary
from steps.core.proc import alive
from steps.rollout.operations import current_lease
from steps.rollout.serving.guard import HANDOFF_FACTOR, read_heartbeat
from tests.chaos.conftest import DEADLINE_S
from tests.chaos.world import NAME, REPO, Users, World, fast_spec, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _report(fault: str, phase: str, outcome: str, figures: dict[str, int], **extra: object) -> None:
    fields = " ".join(f"{k}={v}" for k, v in {**figures, **extra}.items())
    print(f"\nCHAOS fault={fault!r} phase={phase!r} outcome={outcome!r} {fields}")


def _assert_back_on_champion(world: World, candidate_pid: int) -> None:
    """All traffic on v1, v2 out of the router and stopped, no canary role, lease released, v2 tagged aborted."""
    state = world.plane.state(NAME)
    assert world.weights() == {"v1": 100}
    assert state.canary is None and "2" not in state.servers and not alive(candidate_pid)
    assert current_lease(world.registry, NAME) is None
    assert world.client.get_model_version(NAME, "2").tags[CANARY_TAG].startswith("aborted: ")
    assert set(world.served_by(4)) == {"v1"}


def _watchdog_gone(world: World) -> bool:
    beat = read_heartbeat(world.plane.model_dir(NAME))
    return beat is None or not alive(beat.watchdog_pid, beat.watchdog_created)


def _child(world: World, steps: str, **extra_env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    argv = [sys.executable, "-m", "tests.chaos.canary_child", str(world.home), str(world.home / "c"), steps, "uid-2"]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("phase", ["5%", "25%", "50%", "100% (canary done, no promote)"])
def test_canary_step_killed_the_guard_puts_all_traffic_back_on_the_champion(world: World, phase: str) -> None:
    """GIVEN v2 in canary by a canary step in its own process (as its pod), users sending 5 requests/s
    WHEN that process is killed -9 at 5%, 25% or 50%, or it completed at 100% and no promote comes (the runner died)
    THEN within the heartbeat deadline the watchdog puts 100% back on v1, stops v2's server, releases the lease
    and tags v2 aborted; then it exits; no user request sent after the restore fails."""
    candidate_pid = world.plane.state(NAME).servers["2"].pid
    done = phase.startswith("100%")
    users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=26.0 if done else 22.0)
    weight = 100 if done else int(phase.rstrip("%"))
    child = _child(world, "5,100" if done else ",".join(str(w) for w in sorted({weight, 50, 100})))
    if done:
        output, _ = child.communicate(timeout=120)
        assert child.returncode == 0 and "canary: completed" in output, output
        assert world.weights() == {"v1": 0, "v2": 100}
    else:
        wait_for(lambda: world.weights().get("v2") == weight, 60, f"the canary at {phase}")
        child.kill()
        child.wait()
    killed_at = time.time()
    limit = DEADLINE_S * (HANDOFF_FACTOR if done else 1) + 10
    beat = wait_for(lambda: (b := read_heartbeat(world.plane.model_dir(NAME))) and b.registry and b, limit, "restore")
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")

    assert beat.restored_at is not None and beat.registry == "released", beat
    assert "heartbeat lapsed" in (beat.reason or "")
    _assert_back_on_champion(world, candidate_pid)
    figures = users.figures(beat.restored_at)
    restore_s = round(beat.restored_at - killed_at, 1)
    _report("kill -9 canary step (pod)", phase, "aborted cleanly", figures, restore_s=restore_s)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0


def _kill_when(world: World, weight: int, pid_of: object) -> threading.Thread:
    """In the background: once v2 serves `weight`%, kill -9 the process group `pid_of()` names."""

    def run() -> None:
        wait_for(lambda: world.weights().get("v2") == weight, 60, f"the canary at {weight}%")
        os.killpg(pid_of(), signal.SIGKILL)  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_candidate_server_killed_at_50_percent_aborts_and_no_request_fails_after(world: World) -> None:
    """GIVEN v2 in canary (steps 50 -> 100) with users sending 5 requests/s
    WHEN v2's model server is killed -9 at 50%
    THEN the analysis fails and the canary step aborts: all on v1, v2 stopped, lease released, the watchdog exits;
    no user request sent after the abort fails."""
    candidate_pid = world.plane.state(NAME).servers["2"].pid
    users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=14.0)
    killer = _kill_when(world, 50, lambda: candidate_pid)

    outputs = canary.run(
        canary.Inputs(spec=fast_spec([50, 100]), workflow_uid="uid-2", work_dir=world.home / "c"),
        world.registry,
        world.plane,
    )
    aborted_at = time.time()
    killer.join(timeout=5)

    assert outputs.outcome == "aborted" and "analysis Failed at 50%" in outputs.abort_reason
    _assert_back_on_champion(world, candidate_pid)
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")
    figures = users.figures(aborted_at)
    _report("kill -9 candidate server", "50%", "aborted cleanly", figures)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0


def test_router_killed_at_50_percent_is_restarted_on_its_port_with_the_champion(world: World) -> None:
    """GIVEN v2 in canary (steps 50 -> 100) with users sending 5 requests/s
    WHEN the HAProxy router is killed -9 at 50%
    THEN the canary step fails at its next weight change (it cannot reach the router), its guard lapses at once
    and the watchdog starts a router on the same port with v1 alone: users recover, v2 is stopped, the lease
    released; no user request sent after the restore fails."""
    candidate_pid = world.plane.state(NAME).servers["2"].pid
    router_pid = int((world.plane._router_dir(NAME) / "haproxy.pid").read_text().split()[0])
    port = world.plane.state(NAME).router_port
    users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=16.0)
    killer = _kill_when(world, 50, lambda: router_pid)

    with pytest.raises(Exception) as failed:  # noqa: PT011 -- whatever the step meets, the guard must act
        canary.run(
            canary.Inputs(spec=fast_spec([50, 100]), workflow_uid="uid-2", work_dir=world.home / "c"),
            world.registry,
            world.plane,
        )
    killer.join(timeout=5)
    beat = wait_for(lambda: (b := read_heartbeat(world.plane.model_dir(NAME))) and b.registry and b, 20, "restore")
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")

    assert beat.restored_at is not None and beat.registry == "released", beat
    assert "the canary step failed" in (beat.reason or ""), beat.reason
    assert world.plane.state(NAME).router_port == port
    _assert_back_on_champion(world, candidate_pid)
    figures = users.figures(beat.restored_at)
    _report("kill -9 router", "50%", "recovered", figures, step_error=type(failed.value).__name__, why=beat.reason)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0
