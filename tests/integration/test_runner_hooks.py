"""Exit hooks on steps and tasks (`hooks.exit`, `onExit`) under the local runner, as Argo's runOnExitNode runs them.

Our own workflow; every node is a real subprocess whose output the tests read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry.errors import WorkflowError
from tests.integration.runner_support import run_text
from workflows.runner import RunResult

WORKFLOW = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: hooks-}
spec:
  entrypoint: main
  arguments: {parameters: [{name: note, value: from-the-workflow}]}
  templates:
    - name: main
      steps:
        - - name: failing
            template: produce
            arguments: {parameters: [{name: code, value: "3"}]}
            continueOn: {failed: true}
            hooks:
              exit:
                template: report
                arguments: {parameters: [{name: note, value: "got {{steps.failing.outputs.result}}"}]}
          - name: skipped
            template: produce
            when: "1 == 2"
            arguments: {parameters: [{name: code, value: "0"}]}
            onExit: report
        - - name: graph
            template: graph
    - name: graph
      dag:
        tasks:
          - name: t
            template: produce
            arguments: {parameters: [{name: code, value: "0"}]}
            hooks: {exit: {template: broken}}
          - {name: after, template: report, depends: t, arguments: {parameters: [{name: note, value: after}]}}
    - name: produce
      inputs: {parameters: [{name: code}]}
      outputs: {parameters: [{name: out, valueFrom: {path: /tmp/out}}]}
      container:
        image: busybox
        command: [sh, -c, "echo produced | tee /tmp/out; exit {{inputs.parameters.code}}"]
    - name: report
      inputs: {parameters: [{name: note}]}
      container: {image: busybox, command: [echo, "note={{inputs.parameters.note}}"]}
    - name: broken
      inputs: {parameters: [{name: note, default: unset}]}
      container: {image: busybox, command: [sh, -c, "echo broken {{inputs.parameters.note}}; exit 1"]}
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One run of WORKFLOW."""
    return run_text(tmp_path_factory.mktemp("hooks"), WORKFLOW)


def _nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    return {n["name"].removeprefix(result.name + "."): n for n in result.status["status"]["nodes"].values()}


def _stdout(result: RunResult, node: dict[str, Any]) -> str:
    return (result.run_dir / "nodes" / node["id"] / "stdout").read_text().strip()


def test_a_steps_exit_hook_runs_after_it_fails_and_sees_its_outputs(result: RunResult) -> None:
    """GIVEN a failing step with hooks.exit, WHEN it ends, THEN `<step>.onExit` runs with the step's result."""
    nodes = _nodes(result)
    hook = nodes["[0].failing.onExit"]
    assert nodes["[0].failing"]["phase"] == "Failed" and hook["phase"] == "Succeeded"
    assert hook["id"] in nodes["[0].failing"]["children"]
    assert _stdout(result, hook) == "note=got produced"


def test_a_skipped_step_runs_no_exit_hook(result: RunResult) -> None:
    """GIVEN a skipped step with onExit, WHEN the workflow ends, THEN no hook ran (Argo: only Completed nodes)."""
    nodes = _nodes(result)
    assert nodes["[0].skipped"]["phase"] == "Skipped" and "[0].skipped.onExit" not in nodes


def test_a_tasks_failing_hook_leaves_its_phase_and_takes_the_workflow_arguments(result: RunResult) -> None:
    """GIVEN a DAG task whose exit hook has no arguments and fails, THEN the hook got the workflow's arguments,
    the task stays Succeeded, its dependents run, and the workflow Succeeded."""
    nodes = _nodes(result)
    hook = nodes["[1].graph.t.onExit"]
    assert hook["phase"] == "Failed" and _stdout(result, hook) == "broken from-the-workflow"
    assert nodes["[1].graph.t"]["phase"] == "Succeeded" and nodes["[1].graph.after"]["phase"] == "Succeeded"
    assert result.phase == "Succeeded", result.message


def test_hooks_the_runner_cannot_run_are_refused(tmp_path: Path) -> None:
    """GIVEN a step with a `running` hook, WHEN run, THEN it is refused up front, naming the hook."""
    text = WORKFLOW.replace("hooks: {exit: {template: broken}}", "hooks: {running: {template: broken}}")
    with pytest.raises(WorkflowError, match="template graph: task t: hooks.running"):
        run_text(tmp_path, text)
