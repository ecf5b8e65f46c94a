"""Chaos, continued: the watchdog killed, a rollback, the champion killed and MLflow stopped, all mid-canary.

Same world and rules as test_canary_faults.py: real processes only, one `CHAOS` line per test for
docs/reliability.md, the end state asserted (router weights, plane roles, processes, lease, aliases and tags).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from registry.tags import CANARY_TAG, CHAMPION, PREVIOUS, ROLLED_BACK_TAG
from steps import canary
from steps.core.proc import alive
from steps.rollout.operations import current_lease, rollback
from steps.rollout.serving.guard import Heartbeat, read_heartbeat
from tests.chaos.conftest import DEADLINE_S
from tests.chaos.test_canary_faults import _assert_back_on_champion, _child, _kill_when, _report, _watchdog_gone
from tests.chaos.world import NAME, Users, World, fast_spec, wait_for
from tests.integration.test_register_server import BIN, _free_port, _start, _stop
from tests.tiny_models import register_local_version

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _restored(world: World, limit: float) -> Heartbeat:
    def check() -> Heartbeat | None:
        beat = read_heartbeat(world.plane.model_dir(NAME))
        return beat if beat is not None and beat.registry else None

    return wait_for(check, limit, "the watchdog to restore the champion")


def test_watchdog_killed_is_started_again_at_the_next_renewal_and_still_aborts(world: World) -> None:
    """GIVEN v2 in canary (5 -> 25 -> 50 -> 100) by a canary step in its own process, users sending 5 requests/s
    WHEN the watchdog is killed -9 at 5%, and then the canary step too
    THEN the step starts a new watchdog at its next renewal (within one analysis tick), and that one puts all
    traffic back on v1 once the step is killed; no user request sent after the restore fails."""
    candidate_pid = world.plane.state(NAME).servers["2"].pid
    users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=16.0)
    child = _child(world, "5,25,50,100")
    wait_for(lambda: world.weights().get("v2") == 5, 60, "the canary at 5%")
    first = read_heartbeat(world.plane.model_dir(NAME))
    assert first is not None and first.watchdog_pid is not None
    first_pid = first.watchdog_pid
    os.kill(first_pid, signal.SIGKILL)
    killed_at = time.time()

    def restarted() -> Heartbeat | None:
        beat = read_heartbeat(world.plane.model_dir(NAME))
        if beat is None or beat.watchdog_pid in (None, first_pid):
            return None
        return beat if alive(beat.watchdog_pid, beat.watchdog_created) else None

    second: Heartbeat = wait_for(restarted, 10, "a new watchdog")
    restart_s = round(time.time() - killed_at, 1)
    phase = f"{world.weights().get('v2')}%"
    child.kill()
    child.wait()
    step_killed_at = time.time()
    beat = _restored(world, DEADLINE_S + 10)
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")

    assert beat.watchdog_pid == second.watchdog_pid and beat.registry == "released", beat
    assert beat.restored_at is not None and "heartbeat lapsed" in (beat.reason or ""), beat
    _assert_back_on_champion(world, candidate_pid)
    figures = users.figures(beat.restored_at)
    restore_s = round(beat.restored_at - step_killed_at, 1)
    outcome = "aborted cleanly (new watchdog)"
    _report("kill -9 watchdog, then the step", phase, outcome, figures, restart_s=restart_s, restore_s=restore_s)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0


def test_rollback_during_a_canary_serves_previous_and_the_canary_step_stops(world: World, tiny_model: Path) -> None:
    """GIVEN v3 the `previous` version (v1 champion), v2 in canary by a canary step in its own process, users
    WHEN `llmrelease rollback` runs at 5% (steps.rollout.operations.rollback, as the CLI calls it)
    THEN all traffic is on v3, which is champion, v1 tagged rolled back, no `previous`, lease released, v1 and v2
    stopped; the canary step stops (lease gone) without touching the router, the watchdog exits, no traceback;
    no user request sent after the rollback returned fails."""
    weights = world.home.parent / "weights-v3"
    shutil.copytree(tiny_model, weights)
    register_local_version(world.client, NAME, weights)
    world.registry.move_alias(NAME, PREVIOUS, "3", actor="seed", reason="seed")
    pids = {v: s.pid for v, s in world.plane.state(NAME).servers.items()}
    users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=22.0)
    child = _child(world, "5,25,50,100")
    wait_for(lambda: world.weights().get("v2") == 5, 60, "the canary at 5%")
    result = rollback(world.plane, NAME, actor="chaos", reason="chaos: rollback mid-canary", home=world.home)
    rolled_back_at = time.time()
    output, _ = child.communicate(timeout=60)
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")

    assert result["from"] == "1" and result["to"] == "3", result
    assert "Traceback" not in output and ("rollout lease" in output or "aborted" in output), output
    state = world.plane.state(NAME)
    assert world.weights() == {"v3": 100} and state.champion == "3" and state.canary is None
    assert set(state.servers) == {"3"} and not any(alive(pid) for pid in pids.values())
    assert current_lease(world.registry, NAME) is None
    assert world.registry.get_alias(NAME, CHAMPION) == "3" and world.registry.get_alias(NAME, PREVIOUS) is None
    assert ROLLED_BACK_TAG in world.client.get_model_version(NAME, "1").tags
    assert set(world.served_by(4)) == {"v3"}
    figures = users.figures(rolled_back_at)
    _report("rollback", "5%", "recovered (on previous)", figures, switched_s=round(result["switched_s"], 1),
            step_exit=child.returncode, step_said=output.strip().splitlines()[-1][:160])  # fmt: skip
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0


def test_mlflow_stopped_mid_canary_the_step_fails_and_the_watchdog_restores(world: World, tmp_path: Path) -> None:
    """GIVEN v2 in canary (5 -> 50 -> 100) by a canary step whose registry is a real `mlflow server`, users
    WHEN the MLflow server is stopped at 5%
    THEN the step fails at its next lease check within the service deadline, in one line and no traceback; its
    heartbeat lapses at once and the watchdog puts all traffic back on v1 and stops v2; the lease stays held and
    v2 untagged (MLflow is down: the exit handler releases them later); no user request sent after it fails."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", world.uri,
        "--artifacts-destination", str(tmp_path / "served"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    server = _start(command, f"{uri}/health", tmp_path / "mlflow-server.log")
    try:
        candidate_pid = world.plane.state(NAME).servers["2"].pid
        users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=18.0)
        deadline = "3"
        child = _child(world, "5,50,100", MLFLOW_TRACKING_URI=uri, LLMRELEASE_SERVICE_DEADLINE_S=deadline)
        wait_for(lambda: world.weights().get("v2") == 5, 90, "the canary at 5%")
    finally:
        _stop(server)
    stopped_at = time.time()
    output, _ = child.communicate(timeout=60)
    failed_s = round(time.time() - stopped_at, 1)
    beat = _restored(world, 20)
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")

    assert child.returncode != 0 and "Traceback" not in output, output
    assert f"MLflow tracking server at {uri} unreachable" in output, output
    assert failed_s < float(deadline) + 15, failed_s
    assert beat.restored_at is not None and beat.registry != "released", beat
    assert "the canary step failed" in (beat.reason or ""), beat.reason
    state = world.plane.state(NAME)
    assert world.weights() == {"v1": 100} and state.canary is None and "2" not in state.servers
    assert not alive(candidate_pid) and set(world.served_by(4)) == {"v1"}
    lease = current_lease(world.registry, NAME)  # read straight from the sqlite store
    assert lease is not None and lease.workflow_uid == "uid-2"
    assert CANARY_TAG not in world.client.get_model_version(NAME, "2").tags
    figures = users.figures(beat.restored_at)
    restore_s = round(beat.restored_at - stopped_at, 1)
    _report("MLflow stopped", "5%", "aborted cleanly (lease left to the exit handler)", figures,
            step_failed_s=failed_s, restore_s=restore_s, registry=beat.registry)  # fmt: skip
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0


def test_champion_server_killed_at_50_percent_aborts_and_restarts_the_champion(world: World) -> None:
    """GIVEN v2 in canary (50 -> 100), users sending 5 requests/s
    WHEN v1's (the champion's) model server is killed -9 at 50%
    THEN the analysis has no champion sample (Inconclusive) and, the champion's process being gone, the step does
    not pause for a human: it aborts at once, the abort starts v1 again and puts all traffic on it, stops v2 and
    releases the lease; no user request sent after the abort fails."""
    champion_pid, candidate_pid = (world.plane.state(NAME).servers[v].pid for v in ("1", "2"))
    users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=24.0)
    killer = _kill_when(world, 50, lambda: champion_pid)
    spec = fast_spec([50, 100])
    analysis = spec.rollout.analysis.model_copy(update={"pause_timeout_s": 60.0})  # a hang fails, never waits 1 h
    spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"analysis": analysis})})
    started = time.monotonic()

    outputs = canary.run(
        canary.Inputs(spec=spec, workflow_uid="uid-2", work_dir=world.home / "c"), world.registry, world.plane
    )
    aborted_at = time.time()
    killer.join(timeout=5)

    assert outputs.outcome == "aborted" and "champion's server (version 1) is gone" in outputs.abort_reason
    assert time.monotonic() - started < 50, "the step waited for a human instead of aborting"
    assert not alive(champion_pid) and world.plane.state(NAME).servers["1"].pid != champion_pid
    _assert_back_on_champion(world, candidate_pid)
    wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")
    figures = users.figures(aborted_at)
    _report("kill -9 champion server", "50%", "aborted cleanly (champion restarted)", figures)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0
