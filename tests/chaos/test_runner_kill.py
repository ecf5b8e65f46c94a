"""Chaos: kill -9 of the runner (`llmrelease run`) while its canary pod is at 25%.

The world of tests/chaos/world.py (v1 champion, v2 deployed, users through the router), served as the golden
delivery serves it under pod isolation: by the local profile's serving plane service (`served_world`), which owns
the servers, the router and the canary's watchdog. The canary step runs as a pod of the local runner: a
one-template Workflow of our own whose container runs the canary step as `canary_child` does (same spec, same
registry), on the plane `serving_plane` gives it: `RemoteServing`, since the pod's env sets LLMRELEASE_SERVING_URL
(a pod gets nothing from the machine: the registry, home, service URL and heartbeat deadline come through its env,
the test's folder through a hostPath volume). At 25% only the runner process is killed -9. Under `--isolation bwrap`
the pod dies with it (bubblewrap's `--die-with-parent`); under `--isolation none` the pod is a plain child process
and is left running as an orphan. Either way the watchdog, beside the service, outlives the pod.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from steps.core.images import STEPS_IMAGE
from steps.rollout.serving.guard import DEADLINE_ENV, HANDOFF_FACTOR, read_heartbeat
from steps.rollout.serving.remote import SERVING_URL_ENV
from tests.chaos.conftest import DEADLINE_S
from tests.chaos.test_canary_faults import _assert_back_on_champion, _report, _watchdog_gone
from tests.chaos.world import NAME, REPO, PlaneProcess, Users, World, fast_spec, restored_beat, wait_for
from workflows.runner.sandbox import bwrap_problem

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

LLMRELEASE = REPO / ".venv" / "bin" / "llmrelease"
STEPS = [25, 50, 100]

# The canary step as tests/chaos/canary_child.py runs it; the spec comes as JSON (the pod cannot import tests/).
CANARY = """# {marker}
from pathlib import Path
from registry.facade import ModelRegistry
from steps import canary
from steps.core.entry import run_step
from steps.release.spec import ReleaseSpec
from steps.rollout.serving.factory import serving_plane

spec = ReleaseSpec.model_validate_json(Path({spec!r}).read_text())
inputs = canary.Inputs(spec=spec, workflow_uid="uid-2", work_dir=Path({work!r}))
outputs = run_step("canary", lambda: canary.run(inputs, ModelRegistry.from_env(), serving_plane("", Path({home!r}))))
print(canary.describe(outputs), flush=True)
"""


def _workflow(world: World, url: str, root: Path, marker: str) -> Path:
    """A Workflow with one container template running the canary step (v2, steps 25 -> 50 -> 100) on the plane
    service at `url`."""
    spec = root / "spec.json"
    spec.write_text(fast_spec(STEPS).model_dump_json(by_alias=True))
    source = CANARY.format(marker=marker, spec=str(spec), work=str(world.home / "c"), home=str(world.home))
    env = {"MLFLOW_TRACKING_URI": world.uri, "LLMRELEASE_HOME": str(world.home), DEADLINE_ENV: str(DEADLINE_S)}
    env[SERVING_URL_ENV] = url  # as the local profile's ConfigMap sets it
    template = {
        "name": "canary",
        "container": {
            "image": STEPS_IMAGE,
            "command": ["python", "-c", source],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "volumeMounts": [{"name": "world", "mountPath": str(root)}],  # spec, MLflow store, home
        },
    }
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "runner-kill-"},
        "spec": {
            "entrypoint": "canary",
            "volumes": [{"name": "world", "hostPath": {"path": str(root), "type": "Directory"}}],
            "templates": [template],
        },
    }
    path = root / "runner-kill.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def _runner(path: Path, root: Path, isolation: str) -> subprocess.Popen[str]:
    argv = [str(LLMRELEASE), "run", str(path), "--isolation", isolation, "--runs-dir", str(root / "runs")]
    argv += ["--argo-dir", str(root / "argo")]
    log = (root / f"runner-{isolation}.log").open("w")
    return subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT, text=True)


def _pod_processes(marker: str, runner_pid: int) -> list[psutil.Process]:
    """Every process whose command line carries the pod's marker (the canary entry), the runner excepted."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if proc.pid != runner_pid and any(marker in part for part in cmdline):
            found.append(proc)
    return found


def _wait_for_25(world: World, runner: subprocess.Popen[str], marker: str, log: Path) -> None:
    """Wait until the runner's pod runs the canary and v2 serves 25% (the runner must still be running)."""

    def at_25() -> bool:
        if runner.poll() is not None:
            raise AssertionError(f"the runner exited ({runner.returncode}) before 25%: {log.read_text()[-2000:]}")
        return world.weights().get("v2") == 25

    wait_for(at_25, 120, "the canary at 25% in the runner's pod")
    assert _pod_processes(marker, runner.pid), "no process of the canary pod is running"


def _assert_children_of(service: PlaneProcess, world: World, candidate_pid: int) -> None:
    """The candidate's server and the canary's watchdog run beside the plane service (its children), not in the pod."""
    beat = read_heartbeat(world.plane.model_dir(NAME))
    assert beat is not None and beat.watchdog_pid is not None, "no heartbeat at 25%"
    for what, pid in (("the candidate's server", candidate_pid), ("the canary's watchdog", beat.watchdog_pid)):
        assert psutil.Process(pid).ppid() == service.process.pid, f"{what} is not a child of the plane service"


@pytest.fixture(params=["bwrap", "none"])
def isolation(request: pytest.FixtureRequest) -> str:
    """The runner's isolation; bwrap is skipped with the reason where bubblewrap cannot run."""
    if request.param == "bwrap" and (problem := bwrap_problem()):
        pytest.skip(f"bubblewrap cannot run here: {problem}")
    return str(request.param)


def test_runner_killed_at_25_percent_leaves_traffic_on_the_champion(
    served_world: tuple[World, PlaneProcess], tmp_path: Path, isolation: str
) -> None:
    """GIVEN v2 in canary, served by the plane service, driven by a pod of `llmrelease run --isolation <bwrap|none>`
    over LLMRELEASE_SERVING_URL, users sending 5 requests/s
    WHEN the runner process alone is killed -9 at 25%
    THEN under bwrap the pod's processes are gone at once and the watchdog (beside the service) puts 100% back on
    v1 within the heartbeat deadline; under none the orphan pod goes on to 100% and, no promote coming, the watchdog
    puts 100% back on v1 after the hand-over deadline; either way v2 is stopped, the lease released, v2 tagged
    aborted, the watchdog exits, and no user request sent after the restore fails."""
    world, service = served_world
    marker = f"chaos-runner-kill-{uuid.uuid4().hex[:12]}"
    candidate_pid = world.plane.state(NAME).servers["2"].pid
    runner = _runner(_workflow(world, service.url, tmp_path, marker), tmp_path, isolation)
    try:
        _wait_for_25(world, runner, marker, tmp_path / f"runner-{isolation}.log")
        _assert_children_of(service, world, candidate_pid)
        # users from 25% on: long enough to cover the restore (none: the orphan's 50%/100% steps, then the hand-over)
        duration_s = 20.0 if isolation == "bwrap" else 35.0
        users = Users(world.plane.router_url(world.plane.state(NAME)), duration_s=duration_s)
        runner.send_signal(signal.SIGKILL)  # the runner process alone, not its process group
        runner.wait(10)
        killed_at = time.time()
        if isolation == "bwrap":
            wait_for(lambda: not _pod_processes(marker, runner.pid), 2, "the pod's processes to die with the runner")
            pod_gone_s, orphan = round(time.time() - killed_at, 2), "none left"
            limit = DEADLINE_S + 10
        else:
            assert _pod_processes(marker, runner.pid), "under none the pod was expected to outlive the runner"
            wait_for(lambda: world.weights().get("v2") == 100, 60, "the orphan canary at 100%")
            wait_for(lambda: not _pod_processes(marker, runner.pid), 30, "the orphan canary to finish")
            pod_gone_s, orphan = round(time.time() - killed_at, 2), "ran on to 100%, completed"
            logs = "".join(p.read_text() for p in tmp_path.glob("runs/*/nodes/*/stdout"))
            assert "canary: completed" in logs, logs  # the orphan's own line, in the pod log the runner opened
            limit = DEADLINE_S * HANDOFF_FACTOR + 10
        beat = restored_beat(world, limit)
        wait_for(lambda: _watchdog_gone(world), 10, "the watchdog to exit")
    finally:
        for proc in _pod_processes(marker, runner.pid):
            proc.kill()
        if runner.poll() is None:
            runner.kill()

    assert beat.restored_at is not None and beat.registry == "released", beat
    assert "heartbeat lapsed" in (beat.reason or ""), beat.reason
    _assert_back_on_champion(world, candidate_pid)
    figures = users.figures(beat.restored_at)
    restore_s = round(beat.restored_at - killed_at, 1)
    after_pod_s = round(beat.restored_at - killed_at - pod_gone_s, 1)
    extra = {"pod_gone_s": pod_gone_s, "orphan": json.dumps(orphan), "restore_s": restore_s, "after_pod_s": after_pod_s}
    _report(f"kill -9 runner (--isolation {isolation})", "25%", "aborted cleanly", figures, **extra)
    assert figures["after_abort"] > 5 and figures["failed_after_abort"] == 0
