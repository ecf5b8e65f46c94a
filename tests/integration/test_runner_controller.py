"""Controller semantics of the local runner: synchronization, retryStrategy, deadlines, suspend and resume.

Small workflows of our own; every pod is a real subprocess and locks are real file locks between processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import WorkflowError
from tests.integration.runner_support import LLMRELEASE, nodes, run, sh, write
from workflows.runner import RunResult, continue_workflow

# ---- synchronization ------------------------------------------------------------------------------------------


def test_workflow_mutex_makes_a_second_process_wait(tmp_path: Path) -> None:
    """GIVEN two `llmrelease run` processes of a workflow with a workflow-level mutex WHEN started together THEN
    one waits Pending with Argo's message while the other runs, and their pod time windows do not overlap."""
    spec = {
        "entrypoint": "main",
        "synchronization": {"mutex": {"name": "deploy"}},
        "templates": [sh("main", "date +%s.%N; sleep 1.5; date +%s.%N")],
    }
    path = write(tmp_path, spec, "locked")
    env = {**os.environ, "LLMRELEASE_HOME": str(tmp_path / "home")}
    cmd = [*LLMRELEASE, "run", str(path), "--runs-dir", str(tmp_path / "runs"), "--argo-dir", str(tmp_path / "x")]
    cmd += ["--isolation", "none"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    seen_waiting = ""
    while any(p.poll() is None for p in procs) and not seen_waiting:
        for status in (tmp_path / "runs").glob("*/status.json"):
            try:
                doc = json.loads(status.read_text())["status"]
            except (ValueError, KeyError):
                continue
            if doc["phase"] == "Pending" and doc["message"]:
                seen_waiting = doc["message"]
        time.sleep(0.05)
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert seen_waiting == "Waiting for local/Mutex/deploy lock. Lock status: 0/1"
    windows = []
    for stdout in (tmp_path / "runs").glob("*/nodes/*/stdout"):
        start, end = (float(x) for x in stdout.read_text().split())
        windows.append((start, end))
    (a0, a1), (b0, b1) = sorted(windows)
    assert a1 <= b0, windows


def test_template_semaphore_limits_parallel_pods_from_a_configmap(tmp_path: Path) -> None:
    """GIVEN a semaphore of limit 2 (ConfigMap) on a template run 4 times in parallel WHEN run THEN at most two
    pods overlap at any moment."""
    config = tmp_path / "cluster"
    config.mkdir()
    (config / "cm.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limits"}, "data": {"w": "2"}})
    )
    work = sh("work", "date +%s.%N; sleep 0.6; date +%s.%N")
    work["synchronization"] = {"semaphore": {"configMapKeyRef": {"name": "limits", "key": "w"}}}
    spec = {
        "entrypoint": "main",
        "templates": [
            {"name": "main", "steps": [[{"name": "w", "template": "work", "withItems": [1, 2, 3, 4]}]]},
            work,
        ],
    }
    result = run(write(tmp_path, spec), tmp_path, cluster_config=config)
    assert result.phase == "Succeeded", result.tree
    windows = [tuple(float(x) for x in p.read_text().split()) for p in result.run_dir.glob("nodes/*/stdout")]
    assert len(windows) == 4
    most = max(sum(1 for s, e in windows if s <= t < e) for t, _ in windows)
    assert most == 2


def test_semaphore_without_its_configmap_key_is_an_error(tmp_path: Path) -> None:
    """GIVEN a semaphore whose ConfigMap is missing WHEN run THEN the node ends in Error naming it."""
    work = sh("main", "true", synchronization={"semaphore": {"configMapKeyRef": {"name": "nope", "key": "k"}}})
    result = run(write(tmp_path, {"entrypoint": "main", "templates": [work]}), tmp_path)
    assert result.phase == "Error"
    assert 'configmap "nope" not found' in result.message


# ---- retryStrategy --------------------------------------------------------------------------------------------


def _retry_wf(tmp_path: Path, strategy: dict[str, Any], script: str) -> RunResult:
    counter = tmp_path / "attempts"
    body = f"echo x >> {counter}; n=$(wc -l < {counter}); {script}"
    spec = {"entrypoint": "main", "templates": [sh("main", body, retryStrategy=strategy)]}
    return run(write(tmp_path, spec), tmp_path)


def attempts(tmp_path: Path) -> int:
    return len((tmp_path / "attempts").read_text().splitlines())


def test_retry_limit_then_no_more_retries_left(tmp_path: Path) -> None:
    """GIVEN a pod that always fails, limit 2 WHEN run THEN 3 attempts and Argo's 'No more retries left'."""
    result = _retry_wf(tmp_path, {"limit": 2}, "exit 3")
    assert attempts(tmp_path) == 3
    assert result.phase == "Failed"
    assert result.message == "No more retries left"


def test_retry_succeeds_on_a_later_attempt_with_backoff(tmp_path: Path) -> None:
    """GIVEN a pod failing twice, backoff 0.2s factor 2 WHEN run THEN the third attempt succeeds after >= 0.6s."""
    started = time.monotonic()
    result = _retry_wf(tmp_path, {"limit": 4, "backoff": {"duration": "0.2s", "factor": 2}}, '[ "$n" -ge 3 ]')
    assert result.phase == "Succeeded"
    assert attempts(tmp_path) == 3
    assert time.monotonic() - started >= 0.6


def test_retry_policy_on_error_does_not_retry_a_failure(tmp_path: Path) -> None:
    """GIVEN retryPolicy OnError WHEN the pod Fails (exit 1) THEN no retry; Always THEN retried to the limit."""
    result = _retry_wf(tmp_path, {"limit": 3, "retryPolicy": "OnError"}, "exit 1")
    assert attempts(tmp_path) == 1 and result.phase == "Failed"
    (tmp_path / "attempts").unlink()
    _retry_wf(tmp_path, {"limit": 2, "retryPolicy": "Always"}, "exit 1")
    assert attempts(tmp_path) == 3


def test_retry_expression_on_last_exit_code(tmp_path: Path) -> None:
    """GIVEN expression `asInt(lastRetry.exitCode) == 2` WHEN the 2nd attempt exits 5 THEN retries stop there."""
    strategy = {"limit": 5, "expression": "asInt(lastRetry.exitCode) == 2 and lastRetry.status == 'Failed'"}
    result = _retry_wf(tmp_path, strategy, '[ "$n" -ge 2 ] && exit 5; exit 2')
    assert attempts(tmp_path) == 2
    assert result.message == "retryStrategy.expression evaluated to false"


def test_retry_expression_the_runner_cannot_evaluate_is_refused(tmp_path: Path) -> None:
    """GIVEN an expr-lang list membership WHEN it must be evaluated THEN the node errors naming the construct."""
    result = _retry_wf(tmp_path, {"limit": 2, "expression": "lastRetry.exitCode in ['1']"}, "exit 1")
    assert result.phase == "Error"
    assert "cannot evaluate" in result.message


def test_backoff_max_duration_stops_retries(tmp_path: Path) -> None:
    """GIVEN backoff 1s with maxDuration 1.5s WHEN the pod keeps failing THEN Argo's max-duration message."""
    strategy = {"limit": 10, "backoff": {"duration": "1s", "factor": 2, "maxDuration": "1.5s"}}
    result = _retry_wf(tmp_path, strategy, "exit 1")
    assert attempts(tmp_path) == 2
    assert result.message == "Backoff would exceed max duration limit"


# ---- deadlines ------------------------------------------------------------------------------------------------


def test_template_timeout_and_workflow_deadline(tmp_path: Path) -> None:
    """GIVEN a template `timeout: 1s` on a 30 s sleep, then a workflow deadline of 2 s WHEN run THEN the pod
    fails with Kubernetes' deadline message and the step after the deadline never starts."""
    spec = {
        "entrypoint": "main",
        "activeDeadlineSeconds": 2,
        "templates": [
            {
                "name": "main",
                "steps": [
                    [{"name": "slow", "template": "slow", "continueOn": {"failed": True}}],
                    [{"name": "slower", "template": "slower", "continueOn": {"failed": True}}],
                    [{"name": "late", "template": "late"}],
                ],
            },
            sh("slow", "sleep 30", timeout="1s"),
            sh("slower", "sleep 30"),
            sh("late", "true"),
        ],
    }
    started = time.monotonic()
    result = run(write(tmp_path, spec), tmp_path)
    assert time.monotonic() - started < 10
    by_name = nodes(result)
    assert by_name["slow"]["message"].startswith("Pod was active on the node longer than the specified deadline")
    assert by_name["slower"]["phase"] == "Failed"
    assert by_name["late"]["message"] == "Step exceeded its deadline"
    assert result.phase == "Failed"


def test_an_error_node_makes_the_workflow_error(tmp_path: Path) -> None:
    """GIVEN an output that is never written (Argo: Error) WHEN run THEN the workflow phase is Error, not Failed."""
    tmpl = sh("main", "true", outputs={"parameters": [{"name": "x", "valueFrom": {"path": "/tmp/never"}}]})
    result = run(write(tmp_path, {"entrypoint": "main", "templates": [tmpl]}), tmp_path)
    assert result.phase == "Error"


# ---- suspend and resume ---------------------------------------------------------------------------------------


def _approval(tmp_path: Path) -> Path:
    log = tmp_path / "ran.log"
    spec = {
        "entrypoint": "main",
        "onExit": "bye",
        "templates": [
            {
                "name": "main",
                "dag": {
                    "tasks": [
                        {
                            "name": "build",
                            "template": "log",
                            "arguments": {"parameters": [{"name": "w", "value": "b"}]},
                        },
                        {"name": "approve", "template": "approve", "depends": "build"},
                        {
                            "name": "ship",
                            "template": "log",
                            "depends": "approve",
                            "arguments": {
                                "parameters": [{"name": "w", "value": "{{tasks.approve.outputs.parameters.who}}"}]
                            },
                        },
                    ]
                },
            },
            {
                "name": "approve",
                "suspend": {},
                "outputs": {"parameters": [{"name": "who", "valueFrom": {"supplied": {}}}]},
            },
            sh("log", f"echo {{{{inputs.parameters.w}}}} >> {log}", inputs={"parameters": [{"name": "w"}]}),
            sh("bye", f"echo exit-{{{{workflow.status}}}} >> {log}"),
        ],
    }
    return write(tmp_path, spec, "approval")


def test_suspended_workflow_resumes_from_saved_state(tmp_path: Path) -> None:
    """GIVEN a DAG suspended at approval WHEN resumed with --supply who=alice THEN build is not re-run, ship gets
    alice, the exit handler runs once, and the workflow Succeeds."""
    first = run(_approval(tmp_path), tmp_path)
    assert first.phase == "Running"
    assert (tmp_path / "ran.log").read_text() == "b\n"
    saved = json.loads((first.run_dir / "status.json").read_text())["status"]
    assert saved["phase"] == "Running"
    cli = [*LLMRELEASE, "resume", first.name, "--node", "approve", "--supply", "who=alice"]
    done = subprocess.run([*cli, "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ran.log").read_text() == "b\nalice\nexit-Succeeded\n"
    status = json.loads((first.run_dir / "status.json").read_text())
    assert status["status"]["phase"] == "Succeeded"
    ids = [n["id"] for n in status["status"]["nodes"].values()]
    assert len(ids) == len(set(ids))


def test_stop_runs_exit_handlers_and_terminate_does_not(tmp_path: Path) -> None:
    """GIVEN two suspended workflows WHEN one is stopped and one terminated THEN both are Failed with Argo's
    'Stopped with strategy' message; only the stopped one ran its exit handler."""
    path = _approval(tmp_path)
    stopped, terminated = run(path, tmp_path), run(path, tmp_path)
    (tmp_path / "ran.log").write_text("")
    result = continue_workflow(stopped.name, tmp_path / "runs", shutdown="Stop", echo=False)
    assert (result.phase, result.message) == ("Failed", "Stopped with strategy 'Stop'")
    assert (tmp_path / "ran.log").read_text() == "exit-Failed\n"
    result = continue_workflow(terminated.name, tmp_path / "runs", shutdown="Terminate", echo=False)
    assert (result.phase, result.message) == ("Failed", "Stopped with strategy 'Terminate'")
    assert (tmp_path / "ran.log").read_text() == "exit-Failed\n"
    with pytest.raises(WorkflowError, match="has ended"):
        continue_workflow(terminated.name, tmp_path / "runs", echo=False)


def test_list_and_get_show_a_suspended_workflow(tmp_path: Path) -> None:
    """GIVEN a suspended workflow WHEN `llmrelease list` and `get` THEN it is Running, its tree shows approve."""
    first = run(_approval(tmp_path), tmp_path)
    runs = ["--runs-dir", str(tmp_path / "runs")]
    listing = subprocess.run([*LLMRELEASE, "list", *runs], capture_output=True, text=True, check=True).stdout
    assert first.name in listing and "Running" in listing
    got = subprocess.run([*LLMRELEASE, "get", first.name, *runs], capture_output=True, text=True, check=True).stdout
    assert "approve" in got and "Running" in got
    as_json = subprocess.run([*LLMRELEASE, "get", first.name, "--json", *runs], capture_output=True, check=True)
    assert json.loads(as_json.stdout)["status"]["phase"] == "Running"
