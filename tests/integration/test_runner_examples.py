"""The local runner on small workflows of the shapes Argo's examples cover, each with the phase Argo would end in.

Our own YAML (never copies of Argo's files), written for these tests; every leaf is a real subprocess. The full
set of Argo's own examples runs in benchmarks/argo_examples.py (see docs/runner.md).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflows.runner import RunOptions, RunResult, run_workflow

ARGUMENTS = """
kind: Workflow
metadata: {generateName: greet-}
spec:
  entrypoint: greet
  arguments:
    parameters: [{name: who, value: world}, {name: mood, valueFrom: {configMapKeyRef: {name: moods, key: today}}}]
  templates:
    - name: greet
      inputs:
        parameters: [{name: who}, {name: mood}]
      outputs:
        parameters: [{name: said, valueFrom: {path: /tmp/said}}]
      container:
        image: busybox
        command: [sh, -c, 'echo "{{inputs.parameters.mood}} {{inputs.parameters.who}}" > /tmp/said']
"""

STEPS_AND_LOOPS = """
kind: Workflow
metadata: {generateName: loops-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: list, template: emit-list}
        - - name: items
            template: echo
            withItems: [a, b]
            arguments: {parameters: [{name: x, value: "{{item}}"}]}
          - name: params
            template: echo
            withParam: "{{steps.list.outputs.result}}"
            arguments: {parameters: [{name: x, value: "{{item.n}}"}]}
          - name: seq
            template: echo
            withSequence: {start: "1", end: "3", format: "n%02d"}
            arguments: {parameters: [{name: x, value: "{{item}}"}]}
    - name: emit-list
      script:
        image: python:3.11-alpine
        command: [python]
        source: |
          import json
          print(json.dumps([{"n": 1}, {"n": 2}]))
    - name: echo
      inputs: {parameters: [{name: x}]}
      container: {image: busybox, command: [echo, "{{inputs.parameters.x}}"]}
"""

DIAMOND = """
kind: Workflow
metadata: {generateName: diamond-}
spec:
  entrypoint: main
  templates:
    - name: main
      dag:
        tasks:
          - {name: A, template: say, arguments: {parameters: [{name: m, value: A}]}}
          - name: B
            depends: A
            template: say
            arguments: {parameters: [{name: m, value: "{{tasks.A.outputs.result}}B"}]}
          - name: C
            depends: A
            template: say
            arguments: {parameters: [{name: m, value: "{{tasks.A.outputs.result}}C"}]}
          - name: D
            depends: B && C
            template: say
            arguments: {parameters: [{name: m, value: "{{tasks.B.outputs.result}}+{{tasks.C.outputs.result}}"}]}
    - name: say
      inputs: {parameters: [{name: m}]}
      container: {image: busybox, command: [echo, "{{inputs.parameters.m}}"]}
"""

CONDITIONALS = """
kind: Workflow
metadata: {generateName: when-}
spec:
  entrypoint: main
  arguments: {parameters: [{name: n, value: "7"}]}
  templates:
    - name: main
      inputs: {parameters: [{name: n}]}
      steps:
        - - {name: big, template: say, when: "{{inputs.parameters.n}} > 5"}
          - {name: small, template: say, when: "{{inputs.parameters.n}} <= 5"}
    - name: say
      container: {image: busybox, command: [echo, ran]}
"""

RETRY = """
kind: Workflow
metadata: {generateName: retry-}
spec:
  entrypoint: flaky
  templates:
    - name: flaky
      retryStrategy: {limit: "3", retryPolicy: OnFailure}
      script:
        image: bash
        command: [bash]
        source: |
          echo "attempt {{retries}}"
          [ "{{retries}}" -ge 2 ]
"""

EXIT_HANDLER = """
kind: Workflow
metadata: {generateName: exit-}
spec:
  entrypoint: fail
  onExit: report
  arguments: {parameters: [{name: channel, value: ops}]}
  templates:
    - name: fail
      container: {image: busybox, command: [sh, -c, "exit 3"]}
    - name: report
      inputs: {parameters: [{name: channel}]}
      container: {image: busybox, command: [echo, "{{inputs.parameters.channel}}: {{workflow.status}}"]}
"""

SUSPEND = """
kind: Workflow
metadata: {generateName: pause-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: wait, template: wait}
        - - {name: after, template: done}
    - name: wait
      suspend: {duration: "1s"}
    - name: done
      container: {image: busybox, command: [echo, done]}
"""

OUTPUTS = """
kind: Workflow
metadata: {generateName: outputs-}
spec:
  entrypoint: main
  templates:
    - name: main
      outputs:
        parameters: [{name: final, valueFrom: {parameter: "{{tasks.consume.outputs.result}}"}}]
      dag:
        tasks:
          - {name: produce, template: produce}
          - name: consume
            depends: produce
            template: consume
            arguments: {parameters: [{name: v, value: "{{tasks.produce.outputs.parameters.v}}"}]}
    - name: produce
      outputs:
        parameters: [{name: v, globalName: shared, valueFrom: {path: /tmp/v.txt}}]
      container: {image: busybox, command: [sh, -c, "echo -n 42 > {{outputs.parameters.v.path}}"]}
    - name: consume
      inputs: {parameters: [{name: v}]}
      container:
        image: busybox
        command: [sh, -c, "echo $(({{inputs.parameters.v}} + 1)) {{workflow.outputs.parameters.shared}}"]
"""

SCRIPTS = """
kind: Workflow
metadata: {generateName: scripts-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: py, template: py}
        - - name: sh
            template: sh
            arguments: {parameters: [{name: n, value: "{{steps.py.outputs.result}}"}]}
    - name: py
      script:
        image: python:3.11-alpine
        command: [python]
        source: |
          print(sum(range(5)))
    - name: sh
      inputs: {parameters: [{name: n}]}
      script:
        image: debian:bookworm-slim
        command: [bash]
        source: |
          echo "$(( {{inputs.parameters.n}} * 2 ))"
"""

TEMPLATE_REF = """
kind: WorkflowTemplate
metadata: {name: library}
spec:
  templates:
    - name: pipeline
      inputs: {parameters: [{name: m}]}
      dag:
        tasks:
          - {name: first, template: shout, arguments: {parameters: [{name: m, value: "{{inputs.parameters.m}}"}]}}
          - name: second
            depends: first
            inline:
              container: {image: busybox, command: [echo, inline]}
    - name: shout
      inputs: {parameters: [{name: m}]}
      container: {image: busybox, command: [echo, "{{inputs.parameters.m}}!"]}
---
kind: Workflow
metadata: {generateName: uses-library-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - name: call
            templateRef: {name: library, template: pipeline}
            arguments: {parameters: [{name: m, value: hey}]}
"""


def _run(tmp_path: Path, text: str, **options: Any) -> RunResult:
    """Write the workflow (WorkflowTemplates into the argo dir) and ConfigMap `moods`, then run it."""
    argo_dir, config = tmp_path / "argo", tmp_path / "cluster"
    argo_dir.mkdir(exist_ok=True)
    config.mkdir(exist_ok=True)
    (config / "moods.yaml").write_text("kind: ConfigMap\nmetadata: {name: moods}\ndata: {today: hello}\n")
    docs = [{"apiVersion": "argoproj.io/v1alpha1", **d} for d in yaml.safe_load_all(textwrap.dedent(text))]
    (argo_dir / "library.yaml").write_text(yaml.safe_dump_all([d for d in docs if d["kind"] == "WorkflowTemplate"]))
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(yaml.safe_dump(next(d for d in docs if d["kind"] == "Workflow")))
    opts = RunOptions(runs_dir=tmp_path / "runs", echo=False, cluster_config=config, **options)
    return run_workflow(str(workflow), opts, argo_dir=argo_dir)


def _nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


def _result(result: RunResult, name: str) -> str | None:
    return _nodes(result)[name].get("outputs", {}).get("result")


def _params(node: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in node.get("outputs", {}).get("parameters", [])}


@pytest.mark.parametrize(("given", "said"), [({}, "hello world"), ({"who": "team"}, "hello team")])
def test_workflow_arguments_reach_the_entrypoint_inputs(tmp_path: Path, given: dict[str, str], said: str) -> None:
    """GIVEN spec.arguments (a value and a configMapKeyRef) and an entrypoint declaring them as inputs
    WHEN run with and without -p THEN Succeeded and the entrypoint received the (overridden) values."""
    result = _run(tmp_path, ARGUMENTS, parameters=given)
    assert result.phase == "Succeeded", result.message
    assert _params(_nodes(result)[result.name]) == {"said": said}


def test_steps_with_every_loop_kind(tmp_path: Path) -> None:
    """GIVEN withItems, withParam over a script's JSON result and a formatted withSequence WHEN run
    THEN Succeeded with one child per item, labelled as Argo does."""
    result = _run(tmp_path, STEPS_AND_LOOPS)
    assert result.phase == "Succeeded", result.message
    names = _nodes(result).keys()
    assert {"items(0:a)", "items(1:b)", 'params(0:{"n": 1})', 'params(1:{"n": 2})'} <= names
    assert {_result(result, f"seq({i}:n0{i + 1})") for i in range(3)} == {"n01", "n02", "n03"}


def test_dag_diamond_passes_results(tmp_path: Path) -> None:
    """GIVEN a diamond A -> (B, C) -> D WHEN run THEN Succeeded and D joined B's and C's results."""
    result = _run(tmp_path, DIAMOND)
    assert result.phase == "Succeeded", result.message
    assert _result(result, "D") == "AB+AC"


def test_when_runs_one_branch(tmp_path: Path) -> None:
    """GIVEN `when` on the workflow argument passed to the entrypoint WHEN run THEN one step ran, one Skipped."""
    result = _run(tmp_path, CONDITIONALS)
    assert result.phase == "Succeeded", result.message
    assert (_nodes(result)["big"]["phase"], _nodes(result)["small"]["phase"]) == ("Succeeded", "Skipped")


def test_retry_until_success(tmp_path: Path) -> None:
    """GIVEN a bash script failing until its third attempt and limit 3 WHEN run THEN Succeeded after 3 attempts."""
    result = _run(tmp_path, RETRY)
    assert result.phase == "Succeeded", result.message
    attempts = [n for name, n in _nodes(result).items() if name.startswith(f"{result.name}(")]
    assert sorted(n["phase"] for n in attempts) == ["Failed", "Failed", "Succeeded"]


def test_exit_handler_sees_the_failure(tmp_path: Path) -> None:
    """GIVEN an entrypoint that exits 3 and an onExit taking the workflow argument WHEN run
    THEN the workflow is Failed, and the handler ran with the argument and workflow.status."""
    result = _run(tmp_path, EXIT_HANDLER)
    assert result.phase == "Failed"
    assert _result(result, f"{result.name}.onExit") == "ops: Failed"


def test_suspend_with_duration_resumes_by_itself(tmp_path: Path) -> None:
    """GIVEN a suspend of 1s between two steps WHEN run THEN Succeeded, the next step starting after the pause."""
    result = _run(tmp_path, SUSPEND)
    assert result.phase == "Succeeded", result.message
    assert _nodes(result)["after"]["phase"] == "Succeeded"
    assert _nodes(result)["wait"]["phase"] == "Succeeded"


def test_output_parameters_path_placeholder_global_and_dag_outputs(tmp_path: Path) -> None:
    """GIVEN an output read from `{{outputs.parameters.v.path}}`, exported with globalName, and a DAG output
    WHEN run THEN Succeeded and the values flow to the consumer and the DAG's own outputs."""
    result = _run(tmp_path, OUTPUTS)
    assert result.phase == "Succeeded", result.message
    assert _result(result, "consume") == "43 42"
    assert _params(_nodes(result)[result.name]) == {"final": "43 42"}


def test_python_and_bash_scripts(tmp_path: Path) -> None:
    """GIVEN a python script whose result feeds a bash script WHEN run THEN Succeeded with 10 then 20."""
    result = _run(tmp_path, SCRIPTS)
    assert result.phase == "Succeeded", result.message
    assert (_result(result, "py"), _result(result, "sh")) == ("10", "20")


def test_template_ref_resolves_names_in_its_own_workflow_template(tmp_path: Path) -> None:
    """GIVEN a templateRef'd DAG calling `shout`, which only its WorkflowTemplate defines, and an inline task
    WHEN run THEN Succeeded: names resolve in the referenced template's context, the inline template runs."""
    result = _run(tmp_path, TEMPLATE_REF)
    assert result.phase == "Succeeded", result.message
    assert (_result(result, "first"), _result(result, "second")) == ("hey!", "inline")


def test_a_missing_template_in_that_context_is_named(tmp_path: Path) -> None:
    """GIVEN the referenced DAG calling a template only the *workflow* defines WHEN run THEN it errors, naming
    the WorkflowTemplate it looked in (Argo does not fall back to the workflow's templates)."""
    text = TEMPLATE_REF.replace("template: shout, arguments", "template: local, arguments") + textwrap.indent(
        "- name: local\n  container: {image: busybox, command: [echo, local]}\n", "    "
    )
    result = _run(tmp_path, text)
    assert result.phase == "Failed"
    assert "template 'local' does not exist in WorkflowTemplate library" in _nodes(result)["first"]["message"]
