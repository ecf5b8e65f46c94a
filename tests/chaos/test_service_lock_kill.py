"""Chaos: kill -9 of a canary step while it holds the serving plane service's lock of the model.

The world served by the local profile's plane service (`served_world`). A step process drives the canary as the
canary step does through `RemoteServing` (guard started, then the plane lock taken to set 75/25) and is killed -9
inside the lock, before it could release it: the service holds the lock for the dead step's lease (600 s by
default), and the watchdog needs that lock to restore the champion. The service ends a lease its canary step left
behind once the step's guard tripped and the lease sat idle for the heartbeat deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from steps.rollout.serving.remote import RemoteServing
from tests.chaos.conftest import DEADLINE_S
from tests.chaos.test_canary_faults import _assert_back_on_champion, _report, _watchdog_gone
from tests.chaos.world import NAME, REPO, PlaneProcess, Users, World, restored_beat, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# The canary step's calls, up to its first weight change, frozen inside the lock (as a step killed right there).
STEP = """
import sys, time
from steps.rollout.serving.remote import RemoteServing
url, model, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3])
plane = RemoteServing(url)
plane.canary_guard(model, "uid-2", "2", deadline).start()
with plane.locked(model) as state:
    plane.router(state).set_weights({"v1": 75, "v2": 25})
    print("holding the lock at 25%", flush=True)
    time.sleep(3600)
"""


def test_step_killed_holding_the_plane_lock_the_watchdog_still_restores_within_the_deadline(
    served_world: tuple[World, PlaneProcess],
) -> None:
    """GIVEN v2 at 25% set by a step process through the plane service, which still holds the model's lock
    WHEN that process is killed -9 inside the lock (its lease on the service is 600 s)
    THEN the service ends the dead step's lease once its guard tripped, and the watchdog puts 100% back on v1 within
    twice the heartbeat deadline: v2 stopped, lease released, v2 tagged aborted, the lock free again, and no user
    request sent after the restore fails."""
    world, service = served_world
    candidate_pid = world.plane.state(NAME).servers["2"].pid
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMRELEASE_SERVING_LEASE_S": "600"}
    argv = [sys.executable, "-c", STEP, service.url, NAME, str(DEADLINE_S)]
    step = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert step.stdout is not None
        line = step.stdout.readline()
        assert "holding the lock" in line, line + step.stdout.read()
        assert world.weights() == {"v1": 75, "v2": 25}
        users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=16.0)
    finally:
        step.kill()
        step.wait(10)
    killed_at = time.time()
    beat = restored_beat(world, 2 * DEADLINE_S + 10)
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")

    assert beat.restored_at is not None and beat.registry == "released", beat
    assert "heartbeat lapsed" in (beat.reason or ""), beat.reason
    _assert_back_on_champion(world, candidate_pid)
    t0 = time.monotonic()
    with RemoteServing(service.url).locked(NAME):
        pass
    assert time.monotonic() - t0 < 5, "the model's lock on the service is still held"
    figures = users.figures(beat.restored_at)
    restore_s = round(beat.restored_at - killed_at, 1)
    fault = "kill -9 canary step holding the plane service's lock"
    _report(fault, "25%", "aborted cleanly", figures, restore_s=restore_s)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0
