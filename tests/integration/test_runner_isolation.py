"""`llmrelease run --isolation bwrap`: each pod in bubblewrap, seeing its image's files and Argo's environment only.

Real bubblewrap, real subprocesses, our own small workflows. Skipped with the reason where bwrap cannot run.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from steps.core.images import STEPS_IMAGE
from workflows.runner import RunOptions, RunResult, run_workflow
from workflows.runner.images import PROJECT
from workflows.runner.sandbox import bwrap_problem

PROBLEM = bwrap_problem()
needs_bwrap = pytest.mark.skipif(PROBLEM is not None, reason=f"bubblewrap cannot run here: {PROBLEM}")


def workflow(*templates: dict[str, Any], entry: dict[str, Any] | None = None) -> dict[str, Any]:
    main = entry or {"name": "main", "steps": [[{"name": t["name"], "template": t["name"]}] for t in templates]}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "iso-"},
        "spec": {"entrypoint": "main", "templates": [main, *templates]},
    }


def sh(name: str, script: str, image: str = "alpine:3.23", **extra: Any) -> dict[str, Any]:
    return {"name": name, "container": {"image": image, "command": ["sh", "-c", script], **extra.pop("c", {})}, **extra}


def run(doc: dict[str, Any], tmp_path: Path, **options: Any) -> RunResult:
    path = tmp_path / f"wf-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    opts = RunOptions(runs_dir=tmp_path / "runs", echo=False, **{"isolation": "bwrap", **options})
    return run_workflow(str(path), opts, argo_dir=tmp_path / "no-argo")


def nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


def result_of(result: RunResult, name: str) -> str:
    return str(nodes(result)[name]["outputs"]["result"])


@needs_bwrap
def test_a_pod_sees_neither_the_checkout_nor_another_pods_tmp(tmp_path: Path) -> None:
    """GIVEN two pods in sequence and two in parallel WHEN each writes /tmp/shared.txt and looks around
    THEN the checkout's README.md is hidden, the next pod finds no /tmp/shared.txt, and parallel pods read back
    their own file."""
    write = sh("write", f"echo write > /tmp/shared.txt; test -e {PROJECT}/README.md && echo seen || echo hidden")
    look = sh("look", "cat /tmp/shared.txt 2>/dev/null || echo absent")
    mine = [sh(f"p{i}", f"echo p{i} > /tmp/shared.txt; sleep 0.3; cat /tmp/shared.txt") for i in range(2)]
    entry = {
        "name": "main",
        "steps": [
            [{"name": "write", "template": "write"}],
            [{"name": "look", "template": "look"}],
            [{"name": "p0", "template": "p0"}, {"name": "p1", "template": "p1"}],
        ],
    }
    result = run(workflow(write, look, *mine, entry=entry), tmp_path)
    assert result.phase == "Succeeded", result.message
    assert result_of(result, "write") == "hidden"
    assert (PROJECT / "README.md").is_file()  # it is there on the host: the pod could not see it
    assert result_of(result, "look") == "absent"
    assert [result_of(result, f"p{i}") for i in range(2)] == ["p0", "p1"]


@needs_bwrap
def test_writes_outside_declared_outputs_leave_nothing_on_the_host(tmp_path: Path) -> None:
    """GIVEN a pod declaring one output artifact (/result.txt) that also writes to /, /tmp, the checkout and the
    test's own folder WHEN it runs THEN only the artifact comes back; the next pod gets it at its input path."""
    tag = uuid.uuid4().hex[:8]
    strays = [
        Path(f"/stray-{tag}.txt"),
        Path(f"/tmp/stray-{tag}.txt"),
        PROJECT / f"stray-{tag}.txt",
        tmp_path / f"stray-{tag}.txt",
    ]
    writes = "; ".join(f"echo x > {p} 2>/dev/null" for p in strays)
    make = sh(
        "make",
        f"echo made-{tag} > /result.txt; {writes}; true",
        outputs={"artifacts": [{"name": "r", "path": "/result.txt"}]},
    )
    use = sh("use", "cat /data/in.txt", inputs={"artifacts": [{"name": "r", "path": "/data/in.txt"}]})
    entry = {
        "name": "main",
        "dag": {
            "tasks": [
                {"name": "make", "template": "make"},
                {
                    "name": "use",
                    "template": "use",
                    "depends": "make",
                    "arguments": {"artifacts": [{"name": "r", "from": "{{tasks.make.outputs.artifacts.r}}"}]},
                },
            ]
        },
    }
    result = run(workflow(make, use, entry=entry), tmp_path)
    assert result.phase == "Succeeded", result.message
    assert result_of(result, "use") == f"made-{tag}"
    assert [p for p in strays if p.exists()] == []
    assert list((result.run_dir / "nodes").glob("*/pod")) == []


@needs_bwrap
def test_a_runner_killed_mid_pod_leaves_no_pod_process(tmp_path: Path) -> None:
    """GIVEN `llmrelease run --isolation bwrap` running a long pod WHEN the runner is SIGKILLed THEN no process
    of that pod is left (bwrap --die-with-parent, its own pid namespace)."""
    marker = f"h8marker{uuid.uuid4().hex[:8]}"
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(workflow(sh("long", f"sleep 600; echo {marker}"))))
    cmd = [
        sys.executable,
        "-m",
        "workflows.cli.main",
        "run",
        str(path),
        "--isolation",
        "bwrap",
        "--argo-dir",
        str(tmp_path),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    runner = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pod_processes() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in proc.info["cmdline"] or []) and proc.pid != runner.pid:
                found.append(proc)
        return found

    try:
        deadline = time.monotonic() + 60
        while not [p for p in pod_processes() if (p.info["cmdline"] or [""])[0] == "sh"]:
            assert time.monotonic() < deadline and runner.poll() is None, "the pod never started"
            time.sleep(0.1)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        deadline = time.monotonic() + 10
        while pod_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pod_processes() == []
    finally:
        for proc in pod_processes():
            proc.kill()
        runner.kill()


@needs_bwrap
def test_a_pod_sees_only_the_environment_argo_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a host variable set in the runner's own environment WHEN a pod prints its environment THEN the host
    variable is absent and the template's env, the Downward API fields and Argo's variables are there."""
    monkeypatch.setenv("H8_HOST_ONLY", "leaked")
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "PHRASE", "value": "$(GREETING) world"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    result = run(workflow(sh("show", "env", c={"env": env})), tmp_path)
    assert result.phase == "Succeeded", result.message
    node = nodes(result)["show"]
    seen = dict(line.split("=", 1) for line in result_of(result, "show").splitlines() if "=" in line)
    assert "H8_HOST_ONLY" not in seen
    assert seen["GREETING"] == "hello" and seen["PHRASE"] == "hello world"
    assert seen["POD"] == seen["HOSTNAME"] == seen["ARGO_NODE_ID"] == node["id"]
    assert seen["NS"] == "local" and seen["IP"] == "127.0.0.1"
    assert seen["ARGO_WORKFLOW_NAME"] == result.name and seen["ARGO_CONTAINER_NAME"] == "main"
    assert seen["PATH"].startswith("/usr/local/sbin")
    assert set(seen) - {"GREETING", "PHRASE", "POD", "NS", "IP", "HOSTNAME", "HOME", "PATH", "PWD", "SHLVL"} == {
        "ARGO_CONTAINER_NAME",
        "ARGO_TEMPLATE",
        "ARGO_NODE_ID",
        "ARGO_INCLUDE_SCRIPT_OUTPUT",
        "ARGO_DEADLINE",
        "ARGO_WORKFLOW_NAME",
    }


def _cluster(folder: Path) -> Path:
    folder.mkdir()
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app-config"},
            "data": {"mode": "fast", "level": "3"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "app-secret"},
            "data": {"token": base64.b64encode(b"s3cr3t").decode()},
            "stringData": {"user": "alice"},
        },
    ]
    (folder / "cluster.yaml").write_text(yaml.safe_dump_all(docs))
    return folder


@needs_bwrap
def test_config_maps_and_secrets_reach_the_pod_as_kubernetes_gives_them(tmp_path: Path) -> None:
    """GIVEN a ConfigMap and a Secret in the cluster config WHEN a pod asks for keys and whole objects THEN it gets
    their values (envFrom with a prefix; an optional missing key is simply absent)."""
    env = [
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "mode"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "token"}}},
        {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "nope", "optional": True}}},
    ]
    env_from = [
        {"configMapRef": {"name": "app-config"}, "prefix": "CM_"},
        {"secretRef": {"name": "app-secret"}},
        {"configMapRef": {"name": "not-there", "optional": True}},
    ]
    result = run(
        workflow(sh("show", "env", c={"env": env, "envFrom": env_from})),
        tmp_path,
        cluster_config=_cluster(tmp_path / "cluster"),
    )
    assert result.phase == "Succeeded", result.message
    seen = dict(line.split("=", 1) for line in result_of(result, "show").splitlines() if "=" in line)
    assert (seen["MODE"], seen["TOKEN"], seen["CM_mode"], seen["CM_level"]) == ("fast", "s3cr3t", "fast", "3")
    assert (seen["token"], seen["user"]) == ("s3cr3t", "alice")
    assert "MAYBE" not in seen


@needs_bwrap
@pytest.mark.parametrize(
    ("env", "env_from", "named"),
    [
        ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent-cm", "key": "k"}}}], [], "absent-cm"),
        ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "absent-key"}}}], [], "absent-key"),
        ([], [{"secretRef": {"name": "absent-secret"}}], "absent-secret"),
    ],
)
def test_a_missing_config_fails_the_pod_with_create_container_config_error(
    tmp_path: Path, env: list[Any], env_from: list[Any], named: str
) -> None:
    """GIVEN a pod naming a ConfigMap, Secret or key the cluster config lacks WHEN it runs THEN the pod ends in
    Error with Kubernetes' CreateContainerConfigError, naming what is missing, and its command never ran."""
    result = run(
        workflow(sh("show", "echo ran", c={"env": env, "envFrom": env_from})),
        tmp_path,
        cluster_config=_cluster(tmp_path / "cluster"),
    )
    node = nodes(result)["show"]
    assert (result.phase, node["phase"]) == ("Failed", "Error")
    assert "CreateContainerConfigError" in node["message"] and named in node["message"]
    assert "\n" not in node["message"]
    assert not (result.run_dir / "nodes" / node["id"] / "stdout").exists()


@needs_bwrap
def test_the_steps_image_root_is_what_its_dockerfile_copies(tmp_path: Path) -> None:
    """GIVEN a Python pod of the steps image WHEN it looks at /app and imports the project THEN /app holds
    releases/ policy/ suites/ but not examples/ tests/ .llmrelease/, and steps.release.spec imports from the
    image's packages, not the checkout."""
    readme = str(PROJECT / "README.md")
    source = (
        "import os, steps.release.spec as spec\n"
        "print(sorted(os.listdir('.')))\n"
        f"print(os.getcwd(), spec.__file__, os.path.exists({readme!r}))\n"
    )
    template = {"name": "look", "script": {"image": STEPS_IMAGE, "command": ["python"], "source": source}}
    result = run(workflow(template), tmp_path)
    assert result.phase == "Succeeded", result.message
    listing, where = result_of(result, "look").splitlines()
    assert {"releases", "policy", "suites"} <= set(eval(listing))  # noqa: S307 - our own pod's repr of a list
    assert not {"examples", "tests", ".llmrelease", "benchmarks"} & set(eval(listing))  # noqa: S307
    cwd, spec_file, readme = where.split()
    assert cwd == "/app" and spec_file.startswith("/opt/llmrelease/steps/release/") and readme == "False"


@pytest.mark.parametrize("isolation", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_a_script_run_by_sh_dash_c_is_executable(tmp_path: Path, isolation: str) -> None:
    """GIVEN a script template with `command: [sh, -c]` (Argo's scripts-bash example) WHEN it runs THEN sh can
    execute the staged script (Argo writes it 0755), not exit 126."""
    template = {"name": "gen", "script": {"image": "alpine:3.23", "command": ["sh", "-c"], "source": "echo 7\n"}}
    result = run(workflow(template), tmp_path, isolation=isolation)
    assert result.phase == "Succeeded", result.message
    assert result_of(result, "gen") == "7"


def _cli_run(tmp_path: Path, template: dict[str, Any], *args: str, **run: Any) -> subprocess.CompletedProcess[str]:
    """`llmrelease run` (the CLI, from the checkout) on a workflow of `template`, with `args`."""
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(workflow(template)))
    argv = [sys.executable, "-m", "workflows.cli.main", "run", str(path), *args]
    argv += ["--argo-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    return subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, check=False, **run)


@pytest.mark.parametrize("given", [["--isolation", "bwrap"], []], ids=["explicit", "default"])
def test_bwrap_missing_is_one_line_with_the_install_hint(tmp_path: Path, given: list[str]) -> None:
    """GIVEN a machine where bwrap is not on PATH WHEN `llmrelease run` (bwrap is its default) THEN exit 2 and one
    line saying how to install bubblewrap or run with --isolation none."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    done = _cli_run(tmp_path, sh("a", "true"), *given, env={**os.environ, "PATH": str(empty)}, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install bubblewrap" in lines[0] and "--isolation none" in lines[0]


@needs_bwrap
def test_llmrelease_run_isolates_pods_by_default(tmp_path: Path) -> None:
    """GIVEN a pod that looks for the checkout's pyproject.toml and writes /escape.txt WHEN `llmrelease run` is
    given no --isolation THEN the pod runs in bubblewrap: the checkout is not there and nothing lands on the host."""
    probe = f"test -e {PROJECT}/pyproject.toml && echo seen || echo hidden; echo x > /escape.txt; echo ok"
    done = _cli_run(tmp_path, sh("a", probe), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    node = next(n for n in json.loads(done.stdout)["status"]["nodes"].values() if n.get("type") == "Pod")
    assert node["outputs"]["result"] == "hidden\nok"
    assert not Path("/escape.txt").exists()
