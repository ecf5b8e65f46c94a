"""Pods of several containers under the local runner: sidecars, daemon templates, containerSet; lock waits stopped.

Our own workflows (never copies of Argo's files); every container is a real process (servers are Python's
http.server on a free port), under `--isolation none` and, where bubblewrap can run, `--isolation bwrap`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.runner_support import BWRAP_PROBLEM, ISOLATIONS, LLMRELEASE, sh, write
from workflows.runner import RunOptions, RunResult, run_workflow

PROBLEM = BWRAP_PROBLEM

PODS = """
metadata: {generateName: containers-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: svc, template: svc}
        - - name: client
            template: client
            arguments: {parameters: [{name: ip, value: "{{steps.svc.ip}}"}]}
          - {name: paired, template: paired}
          - {name: set, template: set}
    - name: svc
      daemon: true
      container:
        image: python:3.11
        command: [python3, -m, http.server, "PORT1", --bind, 127.0.0.1]
        readinessProbe: {httpGet: {path: /, port: PORT1}, initialDelaySeconds: 0}
    - name: client
      inputs: {parameters: [{name: ip}]}
      container:
        image: alpine
        command: [sh, -c, "curl -sf http://{{inputs.parameters.ip}}:PORT1/ >/dev/null && echo up"]
    - name: paired
      container:
        image: alpine
        command: [sh, -c, "until curl -sf http://127.0.0.1:PORT2/ >/dev/null; do sleep 0.1; done; cat /shared/note"]
        volumeMounts: [{name: shared, mountPath: /shared}]
      volumes: [{name: shared, emptyDir: {}}]
      initContainers:
        - {name: note, image: alpine, command: [sh, -c, "echo from-init > /shared/note"], mirrorVolumeMounts: true}
      sidecars:
        - {name: web, image: python:3.11, command: [python3, -m, http.server, "PORT2", --bind, 127.0.0.1]}
    - name: set
      volumes: [{name: ws, emptyDir: {}}]
      containerSet:
        volumeMounts: [{name: ws, mountPath: /ws}]
        containers:
          - {name: a, image: alpine, command: [sh, -c, "echo a > /ws/a"]}
          - {name: b, image: alpine, command: [sh, -c, "echo b > /ws/b"]}
          - {name: main, image: alpine, command: [sh, -c, "cat /ws/a /ws/b | tr -d '\\\\n'"], dependencies: [a, b]}
      outputs: {parameters: [{name: both, valueFrom: {path: /ws/b}}]}
"""

BROKEN = """
metadata: {generateName: broken-}
spec:
  entrypoint: main
  templates:
    - name: main
      dag:
        tasks:
          - {name: sidecar-missing, template: sidecar-missing}
          - {name: set-fails, template: set-fails}
          - {name: daemon-dies, template: daemon-dies}
    - name: sidecar-missing
      container: {image: alpine, command: [sh, -c, "echo main ran"]}
      sidecars: [{name: web, image: alpine, command: [no-such-server-binary]}]
    - name: set-fails
      containerSet:
        containers:
          - {name: a, image: alpine, command: [sh, -c, "exit 3"]}
          - {name: main, image: alpine, command: [sh, -c, "echo never"], dependencies: [a]}
    - name: daemon-dies
      daemon: true
      container:
        image: alpine
        command: [sh, -c, "exit 0"]
        readinessProbe: {tcpSocket: {port: PORT1}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(tmp_path: Path, text: str, isolation: str) -> RunResult:
    text = text.replace("PORT1", str(_port())).replace("PORT2", str(_port()))
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", **yaml.safe_load(textwrap.dedent(text))}
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(yaml.safe_dump(doc))
    options = RunOptions(runs_dir=tmp_path / "runs", echo=False, isolation=isolation)
    return run_workflow(str(workflow), options, argo_dir=tmp_path / "argo")


def _nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_daemon_sidecar_and_container_set(tmp_path: Path, isolation: str) -> None:
    """GIVEN a daemon server, a pod with a sidecar server and an init container, and a containerSet sharing a
    volume WHEN run THEN the client reaches the daemon at `{{steps.svc.ip}}`, the main container reaches its
    sidecar at 127.0.0.1, the set's `main` runs after `a` and `b` and gives the outputs, and the daemon is
    killed (Succeeded) when its steps end, with no server left listening."""
    result = _run(tmp_path, PODS, isolation)
    nodes = _nodes(result)
    assert result.phase == "Succeeded", result.tree
    assert nodes["client"]["outputs"]["result"] == "up"
    assert nodes["paired"]["outputs"]["result"] == "from-init"
    assert nodes["set"]["outputs"]["result"] == "ab"
    assert nodes["set"]["outputs"]["parameters"] == [{"name": "both", "value": "b"}]
    assert {nodes[n]["type"] for n in ("a", "b", "main")} == {"Container"}
    assert nodes["main"]["id"] in nodes["a"]["children"] and nodes["main"]["id"] in nodes["b"]["children"]
    assert nodes["svc"]["phase"] == "Succeeded" and "daemoned" not in nodes["svc"]
    assert nodes["svc"]["boundaryID"] == nodes[result.name]["id"]
    sidecar = next((tmp_path / "runs" / result.name / "nodes").glob("*/sidecars/web/stderr"))
    assert "GET / " in sidecar.read_text()  # the sidecar served the main container


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_sidecar_that_cannot_start_a_failing_set_container_and_a_dying_daemon(tmp_path: Path, isolation: str) -> None:
    """GIVEN a sidecar whose program does not exist, a containerSet whose first container fails, and a daemon
    that exits before it is ready WHEN run THEN each pod is Failed with one line naming what failed, the set's
    dependent container never runs (Error, the emissary's code 64), and the workflow is Failed."""
    result = _run(tmp_path, BROKEN, isolation)
    nodes = _nodes(result)
    assert result.phase == "Failed"
    side = nodes["sidecar-missing"]
    assert side["phase"] == "Failed" and side["message"].startswith("web: ")
    assert "no-such-server-binary" in side["message"] and "\n" not in side["message"]
    assert nodes["set-fails"]["phase"] == "Failed"
    assert nodes["set-fails"]["message"] == "a: Error (exit code 3)"
    assert nodes["main"]["phase"] == "Error"
    assert nodes["main"]["message"] == 'main: Error (exit code 64): dependency "a" exited with non-zero code: 3'
    assert nodes["daemon-dies"]["phase"] == "Failed"
    assert nodes["daemon-dies"]["message"] == "daemon exited before its scope ended"


@pytest.mark.parametrize(("level", "strategy"), [("template", "Stop"), ("workflow", "Terminate")])
def test_stop_or_terminate_ends_a_workflow_waiting_on_a_lock(tmp_path: Path, level: str, strategy: str) -> None:
    """GIVEN one run holding a mutex and a second run waiting on it (a node Pending at template level, the
    workflow Pending at workflow level) WHEN the second is stopped/terminated THEN it ends at once, Failed
    "Stopped with strategy '...'" (its waiting node too), while the first still holds the lock."""
    holder = {"entrypoint": "main", "templates": [sh("main", "sleep 30", synchronization={"mutex": {"name": "m"}})]}
    if level == "workflow":
        waiter = {"entrypoint": "main", "synchronization": {"mutex": {"name": "m"}}, "templates": [sh("main", "true")]}
    else:
        waiter = {"entrypoint": "main", "templates": [sh("main", "true", synchronization={"mutex": {"name": "m"}})]}
    env = {**os.environ, "LLMRELEASE_HOME": str(tmp_path / "home")}
    runs = tmp_path / "runs"
    cmd = [*LLMRELEASE, "run", "--runs-dir", str(runs), "--argo-dir", str(tmp_path / "x"), "--isolation", "none"]
    first = subprocess.Popen([*cmd, str(write(tmp_path, holder, "holder"))], env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: any(runs.glob("holder-*/nodes/*/stdout")))  # its pod runs: it holds the mutex
        second = subprocess.Popen([*cmd, str(write(tmp_path, waiter, "waiter"))], env=env, stdout=subprocess.PIPE)
        _wait_for(lambda: "Waiting for local/Mutex/m lock" in json.dumps(_status(runs, "waiter-")))
        name = _status(runs, "waiter-")["metadata"]["name"]
        asked = time.monotonic()
        subprocess.run([*LLMRELEASE, strategy.lower(), name, "--runs-dir", str(runs)], env=env, check=False)
        second.communicate(timeout=30)
        assert time.monotonic() - asked < 10  # not after the holder's 30 s
        status = _status(runs, "waiter-")["status"]
        assert status["phase"] == "Failed"
        assert status["message"] == f"Stopped with strategy '{strategy}'"
        if level == "template":
            node = next(n for n in status["nodes"].values() if n["type"] == "Pod")
            assert (node["phase"], node["message"]) == ("Failed", "Stopped with strategy 'Stop'")
        assert first.poll() is None  # the holder still runs with its lock
    finally:
        first.kill()
        first.wait()


def _status(runs: Path, prefix: str) -> dict[str, Any]:
    for path in runs.glob(f"{prefix}*/status.json"):
        try:
            return dict(json.loads(path.read_text()))
        except ValueError:
            return {}
    return {}


def _wait_for(check: Any, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.05)
