"""The controller behaviour the pipelines ask Argo for: requests, deadlines, and retries of transient failures only.

The retry decision is checked with the project's local runner (real processes), which evaluates Argo's
retryStrategy (retryPolicy, expression over lastRetry.*); on a cluster the Argo controller does the same.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import TRANSIENT_EXIT_CODE
from workflows.pipelines.controls import CONTROLS
from workflows.runner import RunOptions, RunResult, run_workflow

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
PIPELINES = (
    "golden-delivery.workflowtemplate.yaml",
    "nightly-regression.cronworkflow.yaml",
    "rollback.workflowtemplate.yaml",
)


def _spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    return spec.get("workflowSpec", spec)


def _script_templates(name: str) -> dict[str, dict[str, Any]]:
    spec = _spec(yaml.safe_load((ARGO / name).read_text()))
    return {t["name"]: t for t in spec["templates"] if "script" in t}


@pytest.mark.parametrize("name", PIPELINES)
def test_every_step_requests_resources_and_has_a_deadline(name: str) -> None:
    """GIVEN a rendered pipeline WHEN its step templates are read THEN each requests CPU and memory and has an
    activeDeadlineSeconds, and the workflow itself has a deadline."""
    templates = _script_templates(name)
    assert templates
    for template in templates.values():
        requests = template["script"]["resources"]["requests"]
        assert requests["cpu"] and requests["memory"], template["name"]
        assert template["activeDeadlineSeconds"] == CONTROLS[template["name"]].deadline_s
    assert _spec(yaml.safe_load((ARGO / name).read_text()))["activeDeadlineSeconds"] > 0


def test_the_canary_alone_is_not_retried() -> None:
    """GIVEN the golden delivery WHEN its templates are read THEN every step but the canary (it moves live traffic)
    carries the transient retry, and the gate's retry cannot fire on its decision (exit 0/1)."""
    templates = _script_templates("golden-delivery.workflowtemplate.yaml")
    assert "retryStrategy" not in templates["canary"]
    retried = {name for name, t in templates.items() if "retryStrategy" in t}
    assert retried == set(templates) - {"canary"}
    assert str(TRANSIENT_EXIT_CODE) in templates["gate"]["retryStrategy"]["expression"]


def _run_with(tmp_path: Path, strategy: dict[str, Any], script: str) -> tuple[RunResult, int]:
    counter = tmp_path / "attempts"
    body = f"echo x >> {counter}; {script}"
    strategy = {**strategy, "backoff": {"duration": "0s"}}  # the rendered 10 s first wait, shortened for the test
    template = {"name": "main", "container": {"image": "alpine:3.20", "command": ["sh", "-c", body]}}
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "controls-"},
        "spec": {"entrypoint": "main", "templates": [{**template, "retryStrategy": strategy}]},
    }
    path = tmp_path / f"wf-{len(list(tmp_path.glob('wf-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run_workflow(str(path), RunOptions(runs_dir=tmp_path / "runs", echo=False), argo_dir=tmp_path / "none")
    return result, len(counter.read_text().splitlines())


def test_a_transient_exit_is_retried_and_a_decision_is_not(tmp_path: Path) -> None:
    """GIVEN the rendered register step's retryStrategy on a pod that exits 75 once, then 0
    WHEN run THEN it is retried and succeeds; the same strategy on a pod that exits 1 (a refusal) runs once."""
    strategy = _script_templates("golden-delivery.workflowtemplate.yaml")["register"]["retryStrategy"]
    flaky = f'[ "$(wc -l < {tmp_path / "attempts"})" -gt 1 ] || exit {TRANSIENT_EXIT_CODE}'
    result, tries = _run_with(tmp_path, strategy, flaky)
    assert result.phase == "Succeeded" and tries == 2

    (tmp_path / "attempts").unlink()
    result, tries = _run_with(tmp_path, strategy, "exit 1")
    assert result.phase == "Failed" and tries == 1


def test_a_step_whose_mlflow_stays_unreachable_exits_with_the_transient_code(tmp_path: Path) -> None:
    """GIVEN MLflow on a closed port and a 1 s service deadline WHEN a real step runs (list-champions)
    THEN it exits 75 (the code the retryStrategy retries) with one line naming MLflow, and no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "LLMRELEASE_SERVICE_DEADLINE_S": "1",
        "LLMRELEASE_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    }
    code = (
        "from steps.core.tracking import mlflow_client\n"
        "from steps.core.entry import run_step\n"
        "from steps.list_champions import Inputs, run\n"
        "run_step('list-champions', lambda: run(Inputs(model=''), mlflow_client()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == TRANSIENT_EXIT_CODE, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"list-champions: MLflow tracking server at http://127.0.0.1:{port} unreachable")


def test_deliveries_and_rollbacks_of_one_model_share_one_mutex() -> None:
    """GIVEN the rendered golden delivery and rollback WHEN their synchronization is read THEN everything after
    register runs in one template holding `llmrelease-model-<model>`, and a rollback of the model takes the same."""
    golden = _spec(yaml.safe_load((ARGO / "golden-delivery.workflowtemplate.yaml").read_text()))
    templates = {t["name"]: t for t in golden["templates"]}
    held = templates["release-model"]["synchronization"]["mutexes"]
    assert held == [{"name": "llmrelease-model-{{inputs.parameters.model-name}}"}]
    inside = {task["name"] for task in templates["release-model"]["dag"]["tasks"]}
    assert {"batch-eval", "safety", "gate", "deploy", "canary", "promote"} <= inside
    outside = [task["name"] for task in templates["deliver"]["dag"]["tasks"]]
    assert outside == ["onboard", "register", "release"]
    rollback = _spec(yaml.safe_load((ARGO / "rollback.workflowtemplate.yaml").read_text()))
    assert rollback["synchronization"]["mutexes"] == [{"name": "llmrelease-model-{{workflow.parameters.model}}"}]


def _model_locked(model: str) -> dict[str, Any]:
    """A workflow shaped like golden-delivery: a DAG template holding the model's mutex (from its input)."""
    release = {
        "name": "release-model",
        "inputs": {"parameters": [{"name": "model-name"}]},
        "synchronization": {"mutexes": [{"name": "llmrelease-model-{{inputs.parameters.model-name}}"}]},
        "dag": {"tasks": [{"name": "work", "template": "work"}]},
    }
    work = {
        "name": "work",
        "container": {"image": "alpine:3.20", "command": ["sh", "-c", "date +%s.%N; sleep 1.5; date +%s.%N"]},
    }
    main = {
        "name": "deliver",
        "dag": {
            "tasks": [
                {
                    "name": "release",
                    "template": "release-model",
                    "arguments": {"parameters": [{"name": "model-name", "value": model}]},
                }
            ]
        },
    }
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "deliver-"},
        "spec": {"entrypoint": "deliver", "templates": [main, release, work]},
    }


def _windows(runs: Path) -> list[tuple[float, float]]:
    spans = []
    for stdout in runs.glob("*/nodes/*/stdout"):
        start, end = (float(x) for x in stdout.read_text().split())
        spans.append((start, end))
    return sorted(spans)


@pytest.mark.parametrize(("models", "overlap"), [(("demo-qa", "demo-qa"), False), (("demo-qa", "other"), True)])
def test_two_deliveries_of_one_model_queue_on_its_mutex(tmp_path: Path, models: tuple[str, str], overlap: bool) -> None:
    """GIVEN two `llmrelease run` processes of a delivery-shaped workflow (mutex named from the model input)
    WHEN started together THEN for one model the second waits (Argo's message names the model's mutex) and their
    pods do not overlap; for two models they run alongside."""
    env = {**os.environ, "LLMRELEASE_HOME": str(tmp_path / "home")}
    procs = []
    for i, model in enumerate(models):
        path = tmp_path / f"wf-{i}.yaml"
        path.write_text(yaml.safe_dump(_model_locked(model)))
        cmd = [sys.executable, "-m", "workflows.cli.main", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
               "--argo-dir", str(tmp_path / "none"), "--isolation", "none"]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    messages: set[str] = set()
    while any(p.poll() is None for p in procs):
        for status in (tmp_path / "runs").glob("*/status.json"):
            try:
                nodes = json.loads(status.read_text())["status"].get("nodes", {}).values()
            except (ValueError, KeyError):
                continue
            messages |= {n.get("message", "") for n in nodes if n.get("phase") == "Pending" and n.get("message")}
        time.sleep(0.05)
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    (_, a1), (b0, _) = _windows(tmp_path / "runs")
    assert (b0 < a1) == overlap
    waited = "Waiting for local/Mutex/llmrelease-model-demo-qa lock. Lock status: 0/1"
    assert (waited in messages) == (not overlap), messages


def _env_pod(tmp_path: Path, env_from: list[dict[str, Any]], cluster: Path | None) -> dict[str, str]:
    """Run a pod with the given envFrom under the runner; the environment it saw."""
    template = {
        "name": "main",
        "container": {"image": "alpine:3.20", "command": ["sh", "-c", "env"], "envFrom": env_from},
    }
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "env-"},
        "spec": {"entrypoint": "main", "templates": [template]},
    }
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(doc))
    options = RunOptions(runs_dir=tmp_path / "runs", echo=False, cluster_config=cluster)
    result = run_workflow(str(path), options, argo_dir=tmp_path / "none")
    assert result.phase == "Succeeded", result.message
    [stdout] = (tmp_path / "runs").glob("*/nodes/*/stdout")
    return dict(line.split("=", 1) for line in stdout.read_text().splitlines() if "=" in line)


def test_steps_get_the_platform_configmap_and_only_their_secrets(tmp_path: Path) -> None:
    """GIVEN the rendered golden delivery and a cluster config holding `llmrelease-config` and `provider-api-keys`
    WHEN the onboard and gate templates' envFrom run under the runner THEN both see the ConfigMap's keys, only
    onboard sees the provider key; and with no cluster config at all the pods still run (every source optional)."""
    templates = _script_templates("golden-delivery.workflowtemplate.yaml")
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "llmrelease-config"},
         "data": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "provider-api-keys"},
         "stringData": {"OPENAI_API_KEY": "sk-test"}},
    ]  # fmt: skip
    (cluster / "objects.yaml").write_text(yaml.safe_dump_all(objects))
    seen = {}
    for name in ("onboard", "gate"):
        (tmp_path / name).mkdir()
        seen[name] = _env_pod(tmp_path / name, templates[name]["script"]["envFrom"], cluster)
    assert seen["onboard"]["MLFLOW_TRACKING_URI"] == seen["gate"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    assert seen["onboard"]["OPENAI_API_KEY"] == "sk-test" and "OPENAI_API_KEY" not in seen["gate"]
    (tmp_path / "bare").mkdir()
    assert "MLFLOW_TRACKING_URI" not in _env_pod(tmp_path / "bare", templates["onboard"]["script"]["envFrom"], None)
