"""Argo's variables catalog under the local runner: node context (`steps.name`, `tasks.name`), the workflow's
runtime and identity globals, and an input artifact forwarded with `from: "{{inputs.artifacts.NAME}}"`.

Our own workflow; every leaf is a real subprocess whose output the tests read back.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tests.integration.runner_support import run_text
from workflows.runner import RunResult

WORKFLOW = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  generateName: vars-
  annotations: {workflows.argoproj.io/scheduled-time: "2026-04-29T00:00:00Z"}
spec:
  entrypoint: main
  priority: 5
  arguments:
    artifacts: [{name: seed, raw: {data: seed-content}}]
  templates:
    - name: main
      inputs: {artifacts: [{name: seed}]}
      steps:
        - - name: first
            template: say
            arguments:
              parameters: [{name: caller, value: "main sees steps.name=[{{steps.name}}]"}]
              artifacts: [{name: seed, from: "{{inputs.artifacts.seed}}"}]
          - name: looped
            template: say
            withItems: [x]
            arguments: {parameters: [{name: caller, value: "item {{item}}"}]}
        - - name: graph
            template: graph
    - name: graph
      dag:
        tasks:
          - name: t
            template: say
            arguments: {parameters: [{name: caller, value: "graph sees steps.name=[{{steps.name}}]"}]}
    - name: say
      inputs:
        parameters: [{name: caller}]
        artifacts: [{name: seed, path: /tmp/seed, optional: true}]
      script:
        image: busybox
        command: [sh]
        source: |
          echo "caller={{inputs.parameters.caller}}"
          echo "node={{node.name}} status={{workflow.status}} duration={{workflow.duration}}"
          echo "priority={{workflow.priority}} scheduled={{workflow.scheduledTime}}"
          echo "created={{workflow.creationTimestamp.RFC3339}} year={{workflow.creationTimestamp.Y}}"
          echo "epoch={{workflow.creationTimestamp.s}}"
          cat /tmp/seed 2>/dev/null || echo no-seed
"""

# `say` prints its own `{{steps.name}}` (only steps call it); DAG task t calls `say-task`, which prints `{{tasks.name}}`
NAMES = (
    WORKFLOW.replace('echo "caller=', 'echo "own=[{{steps.name}}]"\n          echo "caller=').replace(
        'template: say\n            arguments: {parameters: [{name: caller, value: "graph',
        'template: say-task\n            arguments: {parameters: [{name: caller, value: "graph',
    )
    + """
    - name: say-task
      inputs: {parameters: [{name: caller}]}
      container: {image: busybox, command: [echo, "own=[{{tasks.name}}] {{inputs.parameters.caller}}"]}
"""
)


def _run(tmp_path: Path, text: str) -> RunResult:
    return run_text(tmp_path, text)


def _stdout(result: RunResult, display: str) -> str:
    nodes: dict[str, Any] = result.status["status"]["nodes"]
    node = next(n for n in nodes.values() if n["displayName"] == display)
    return (result.run_dir / "nodes" / node["id"] / "stdout").read_text()


def test_steps_name_is_the_calling_step_and_empty_at_the_entrypoint(tmp_path: Path) -> None:
    """GIVEN leaves reached from steps, a loop and a DAG, WHEN they print `{{steps.name}}`, THEN each sees its step.

    The entrypoint is called as a step without a name (operator.go), so `{{steps.name}}` is "" in its body; a DAG
    called from step `graph` sees `graph`.
    """
    result = _run(tmp_path, NAMES)
    assert result.phase == "Succeeded", result.message
    first = _stdout(result, "first")
    assert "own=[first]" in first and "caller=main sees steps.name=[]" in first
    assert "own=[looped(0:x)]" in _stdout(result, "looped(0:x)")
    assert _stdout(result, "t").endswith("graph sees steps.name=[graph]\n")


def test_tasks_name_is_the_calling_task(tmp_path: Path) -> None:
    """GIVEN a template called from DAG task `t`, WHEN it prints `{{tasks.name}}`, THEN it is `t`."""
    result = _run(tmp_path, NAMES)
    assert result.phase == "Succeeded", result.message
    assert _stdout(result, "t").strip() == "own=[t] graph sees steps.name=[graph]"


def test_workflow_runtime_and_identity_globals(tmp_path: Path) -> None:
    """GIVEN priority, the scheduled-time annotation, WHEN a pod prints the globals, THEN they are Argo's values."""
    result = _run(tmp_path, WORKFLOW)
    assert result.phase == "Succeeded", result.message
    out = _stdout(result, "first")
    assert "status=Running" in out and "priority=5 scheduled=2026-04-29T00:00:00Z" in out
    duration = re.search(r"duration=(\S+)", out)
    assert duration and re.fullmatch(r"\d+\.\d{6}", duration[1]) and float(duration[1]) > 0
    created = re.search(r"created=(\S+) year=(\d{4})", out)
    epoch = re.search(r"epoch=(\d+)", out)
    assert created and epoch and created[1][:4] == created[2]
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch[1]))) == created[1]


def test_an_input_artifact_is_forwarded_with_from(tmp_path: Path) -> None:
    """GIVEN main's input artifact (a raw workflow argument), WHEN a step passes it on with `from:`, THEN it arrives."""
    result = _run(tmp_path, WORKFLOW)
    assert result.phase == "Succeeded", result.message
    assert _stdout(result, "first").rstrip().endswith("seed-content")
    assert _stdout(result, "looped(0:x)").rstrip().endswith("no-seed")
