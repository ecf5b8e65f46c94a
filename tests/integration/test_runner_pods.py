"""Pods the way Argo runs them: podSpecPatch applied, memoize, a suspended workflow's lock, stop/terminate kills.

Small workflows of our own; every pod is a real process, locks are real file locks, and stop/terminate act on a
real `llmrelease run` process whose pods are found (and found gone) in /proc.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runner_support import LLMRELEASE, nodes, run, sh, write
from workflows.runner import continue_workflow


def bwrap_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    return subprocess.run(["bwrap", "--bind", "/", "/", "true"], capture_output=True, check=False).returncode == 0


ISOLATIONS = ["none", pytest.param("bwrap", marks=pytest.mark.skipif(not bwrap_works(), reason="bwrap unusable"))]


# ---- podSpecPatch ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_pod_spec_patch_sets_env_and_records_resources(tmp_path: Path, isolation: str) -> None:
    """GIVEN a workflow podSpecPatch (JSON) and a template podSpecPatch (YAML naming an input) WHEN run THEN the
    process sees the patched env (merged by name), and the node records the patched resources and nodeSelector."""
    leaf = sh("show", 'echo "$COLOR $SIZE $KEEP"', inputs={"parameters": [{"name": "size"}]})
    leaf["container"]["env"] = [{"name": "COLOR", "value": "red"}, {"name": "KEEP", "value": "kept"}]
    leaf["container"]["resources"] = {"requests": {"cpu": "100m"}}
    leaf["podSpecPatch"] = (
        "containers:\n- name: main\n  env:\n  - {name: SIZE, value: '{{inputs.parameters.size}}'}\n"
        "  resources:\n    limits: {memory: '{{inputs.parameters.size}}'}\n"
    )
    spec = {
        "entrypoint": "main",
        "podSpecPatch": json.dumps(
            {"containers": [{"name": "main", "env": [{"name": "COLOR", "value": "blue"}]}], "nodeSelector": {"a": "b"}}
        ),
        "templates": [
            {
                "name": "main",
                "steps": [
                    [
                        {
                            "name": "s",
                            "template": "show",
                            "arguments": {"parameters": [{"name": "size", "value": "64Mi"}]},
                        }
                    ]
                ],
            },
            leaf,
        ],
    }
    result = run(write(tmp_path, spec), tmp_path, isolation=isolation)
    assert result.phase == "Succeeded", result.tree
    node = nodes(result)["s"]
    assert node["outputs"]["result"] == "blue 64Mi kept"
    recorded = node["recordedSchedulingFields"]
    assert recorded["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}
    assert recorded["nodeSelector"] == {"a": "b"}
    timings = (result.run_dir / "nodes" / node["id"] / "timings").read_text()  # where a slow pod spends its time
    assert re.fullmatch(r"inputs \d+\.\d\ds process \d+\.\d\ds outputs \d+\.\d\ds\n", timings), timings


def test_pod_spec_patch_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    """GIVEN a podSpecPatch that is a list WHEN run THEN the pod is an Error naming podSpecPatch."""
    spec = {"entrypoint": "p", "templates": [sh("p", "true", podSpecPatch="[1, 2]")]}
    result = run(write(tmp_path, spec), tmp_path)
    assert result.phase == "Error"
    assert "podSpecPatch must be a PodSpec mapping" in nodes(result)[result.name]["message"]


# ---- memoize --------------------------------------------------------------------------------------------------


def memo_spec(counter: Path, max_age: str | None) -> dict[str, Any]:
    memoize: dict[str, Any] = {"key": "roll-{{inputs.parameters.n}}", "cache": {"configMap": {"name": "rolls"}}}
    if max_age:
        memoize["maxAge"] = max_age
    roll = sh(
        "roll",
        f"echo run >> {counter}; cat /proc/sys/kernel/random/uuid | tee /tmp/out",
        inputs={"parameters": [{"name": "n"}]},
        outputs={"parameters": [{"name": "value", "valueFrom": {"path": "/tmp/out"}}]},
        memoize=memoize,
    )
    use = sh("use", "echo got {{inputs.parameters.v}}", inputs={"parameters": [{"name": "v"}]})
    steps = [
        [{"name": "roll", "template": "roll", "arguments": {"parameters": [{"name": "n", "value": "1"}]}}],
        [
            {
                "name": "use",
                "template": "use",
                "arguments": {"parameters": [{"name": "v", "value": "{{steps.roll.outputs.parameters.value}}"}]},
            }
        ],
    ]
    return {"entrypoint": "main", "templates": [{"name": "main", "steps": steps}, roll, use]}


def test_memoize_hit_skips_the_pod_and_reuses_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a memoized template WHEN two workflows run it with the same key THEN the second is a cache hit:
    no pod (the counter stays at 1), the same outputs reach the next step, memoizationStatus as Argo shows it,
    and the cache is a ConfigMap of Argo's shape under the runner's home."""
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    counter = tmp_path / "counter"
    path = write(tmp_path, memo_spec(counter, None))
    first, second = run(path, tmp_path), run(path, tmp_path)
    assert first.phase == second.phase == "Succeeded", second.tree
    roll1, roll2 = nodes(first)["roll"], nodes(second)["roll"]
    assert roll1["memoizationStatus"] == {"hit": False, "key": "roll-1", "cacheName": "rolls"}
    assert roll2["memoizationStatus"] == {"hit": True, "key": "roll-1", "cacheName": "rolls"}
    assert roll2["phase"] == "Succeeded" and roll2["outputs"] == roll1["outputs"]
    value = roll1["outputs"]["parameters"][0]["value"]
    assert nodes(second)["use"]["outputs"]["result"] == f"got {value}"
    assert counter.read_text().splitlines() == ["run"]
    assert not (second.run_dir / "nodes" / roll2["id"]).exists()  # no pod folder: the pod never ran
    config_map = json.loads((tmp_path / "home" / "memoize" / "local" / "rolls.json").read_text())
    assert config_map["metadata"]["labels"] == {"workflows.argoproj.io/configmap-type": "Cache"}
    entry = json.loads(config_map["data"]["roll-1"])
    assert entry["nodeID"] == roll1["id"] and entry["outputs"] == roll1["outputs"]


def test_memoize_max_age_expires_an_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a memoized template with maxAge 3s WHEN run again within it, then after it THEN hit, then miss
    (the pod runs again and its new outputs replace the entry). Entries are stamped to the second, as Argo's."""
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    counter = tmp_path / "counter"
    path = write(tmp_path, memo_spec(counter, "3s"))
    first, again = run(path, tmp_path), run(path, tmp_path)
    entry = json.loads(json.loads((tmp_path / "home/memoize/local/rolls.json").read_text())["data"]["roll-1"])
    created = calendar.timegm(time.strptime(entry["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    time.sleep(max(0.0, created + 4.0 - time.time()))
    late = run(path, tmp_path)
    assert [nodes(r)["roll"]["memoizationStatus"]["hit"] for r in (first, again, late)] == [False, True, False]
    assert counter.read_text().splitlines() == ["run", "run"]
    assert nodes(late)["roll"]["outputs"] != nodes(first)["roll"]["outputs"]


def test_memoize_invalid_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a memoize key with a space WHEN run THEN the node is an Error with Argo's "invalid cache key"."""
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    bad = {"key": "not a key", "cache": {"configMap": {"name": "c"}}}
    result = run(write(tmp_path, {"entrypoint": "p", "templates": [sh("p", "true", memoize=bad)]}), tmp_path)
    assert result.phase == "Error"
    assert nodes(result)[result.name]["message"].startswith("invalid cache key: not a key")


# ---- a suspended workflow keeps its workflow-level lock -------------------------------------------------------


def test_suspended_workflow_holds_its_mutex_until_terminated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN workflow A with a mutex, suspended (no process runs it) WHEN workflow B needing the mutex starts in
    another process THEN B waits Pending with Argo's message; once A is terminated B runs to Succeeded."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLMRELEASE_HOME", str(home))
    lock = {"mutex": {"name": "prod"}}
    a_spec = {"entrypoint": "wait", "synchronization": lock, "templates": [{"name": "wait", "suspend": {}}]}
    a = run(write(tmp_path, a_spec, "a"), tmp_path)
    assert a.phase == "Running"
    b_spec = {"entrypoint": "go", "synchronization": lock, "templates": [sh("go", "date +%s.%N")]}
    cmd = [
        *LLMRELEASE,
        "run",
        str(write(tmp_path, b_spec, "b")),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--isolation",
        "none",
    ]
    proc = subprocess.Popen([*cmd, "--argo-dir", str(tmp_path / "x")], env=dict(os.environ), stdout=subprocess.PIPE)
    try:
        b_status = wait_for(lambda: pending_message(tmp_path / "runs", "b-"), 60)
        assert b_status == "Waiting for local/Mutex/prod lock. Lock status: 0/1"
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting: the lock is A's although no process runs A
        ended_at = time.time()
        assert continue_workflow(a.name, tmp_path / "runs", shutdown="Terminate", echo=False).phase == "Failed"
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    (stdout,) = [p for p in (tmp_path / "runs").glob("b-*/nodes/*/stdout")]
    assert float(stdout.read_text()) >= ended_at
    assert not list((home / "locks").rglob("*.parked"))


def test_resumed_workflow_takes_back_its_own_parked_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a suspended workflow holding a semaphore of limit 1 WHEN resumed THEN it runs on (its own lock) and
    at its end the lock is free for the next workflow."""
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    lock = {"mutex": {"name": "m"}}
    spec = {
        "entrypoint": "main",
        "synchronization": lock,
        "templates": [
            {"name": "main", "steps": [[{"name": "approve", "template": "wait"}], [{"name": "go", "template": "go"}]]},
            {"name": "wait", "suspend": {}},
            sh("go", "echo went"),
        ],
    }
    path = write(tmp_path, spec)
    first = run(path, tmp_path)
    assert first.phase == "Running"
    assert continue_workflow(first.name, tmp_path / "runs", echo=False).phase == "Succeeded"
    assert run(path, tmp_path, resume=frozenset({"approve"})).phase == "Succeeded"  # the lock is free again


# ---- stop / terminate a workflow that a live `llmrelease run` is running --------------------------------------


def pending_message(runs: Path, prefix: str) -> str:
    for status in runs.glob(f"{prefix}*/status.json"):
        try:
            doc = json.loads(status.read_text())["status"]
        except (OSError, ValueError, KeyError):
            continue
        if doc["phase"] == "Pending" and doc["message"]:
            return str(doc["message"])
    return ""


def wait_for(probe: Any, timeout: float) -> Any:
    until = time.time() + timeout
    while time.time() < until:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing after {timeout}s")


def pids_running(token: str) -> list[int]:
    """Processes whose command line holds `token` (pods' processes, whatever pid namespace they are in)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and "sleep" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def long_workflow(token: str) -> dict[str, Any]:
    """Two parallel pods that would sleep for minutes (`token` marks them), then a step, and an exit handler."""
    sleeper = sh("sleeper", f"sleep {token} & sleep {token}; true", inputs={"parameters": [{"name": "i"}]})
    main = [
        [
            {
                "name": "sleep",
                "template": "sleeper",
                "withItems": ["a", "b"],
                "arguments": {"parameters": [{"name": "i", "value": "{{item}}"}]},
            }
        ],
        [{"name": "after", "template": "said", "arguments": {"parameters": [{"name": "v", "value": "after"}]}}],
    ]
    said = sh("said", "echo {{inputs.parameters.v}}", inputs={"parameters": [{"name": "v"}]})
    return {
        "entrypoint": "main",
        "onExit": "bye",
        "templates": [
            {"name": "main", "steps": main},
            sleeper,
            said,
            {
                "name": "bye",
                "steps": [
                    [{"name": "bye", "template": "said", "arguments": {"parameters": [{"name": "v", "value": "bye"}]}}]
                ],
            },
        ],
    }


@pytest.mark.parametrize(
    ("strategy", "isolation"),
    [
        ("Terminate", "none"),
        ("Stop", "none"),
        pytest.param("Terminate", "bwrap", marks=(pytest.mark.skipif(not bwrap_works(), reason="bwrap unusable"))),
    ],
)
def test_stop_or_terminate_kills_the_running_pods_of_a_live_run(tmp_path: Path, strategy: str, isolation: str) -> None:
    """GIVEN `llmrelease run` running two pods that sleep for minutes WHEN `llmrelease stop|terminate NAME` THEN
    every pod process is gone within seconds, the pods and the workflow are Failed with Argo's message, the next
    step never starts, and the exit handler runs for Stop only."""
    token = f"{600 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    path = write(tmp_path, long_workflow(token))
    runs = tmp_path / "runs"
    base = ["--runs-dir", str(runs)]
    cmd = [*LLMRELEASE, "run", str(path), *base, "--argo-dir", str(tmp_path / "x"), "--isolation", isolation]
    env = {**os.environ, "LLMRELEASE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(pids_running(token)) >= 4, 60)  # two pods, two sleeps each
        (run_dir,) = runs.iterdir()
        asked = subprocess.run(
            [*LLMRELEASE, strategy.lower(), run_dir.name, *base], env=env, capture_output=True, text=True, check=False
        )
        assert asked.returncode == 0, asked.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        left = pids_running(token)
        for pid in left:  # a failed test leaves no pod behind
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert left == []
    status = json.loads((run_dir / "status.json").read_text())["status"]
    message = f"Stopped with strategy '{strategy}'"
    assert (status["phase"], status["message"]) == ("Failed", message)
    by_name = {n["displayName"]: n for n in status["nodes"].values()}
    for item in ("sleep(0:a)", "sleep(1:b)"):
        assert (by_name[item]["phase"], by_name[item]["message"]) == ("Failed", message)
    assert "after" not in by_name
    assert ("bye" in by_name) is (strategy == "Stop")
    if strategy == "Stop":
        assert by_name["bye"]["phase"] == "Succeeded"
