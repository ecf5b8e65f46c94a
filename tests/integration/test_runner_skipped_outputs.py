"""Outputs of steps and tasks that never ran (Skipped by `when`, Omitted by `depends`), as Argo v3.7.16+ resolves them.

Argo #16223 (cherry-picked into v3.7.16 as #16315): a reference to such a node's output parameter is the output's
`valueFrom.default`; without one the output is absent, and an argument that is only that reference is left out so
the consuming input's `default` applies; any other use fails the node. Our own workflows; every leaf a real process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.runner_support import nodes, run_text

PRODUCE = """
    - name: produce
      outputs:
        parameters: [{name: msg, valueFrom: {path: /tmp/msg, DEFAULT}}]
      container: {image: alpine:3.20, command: [sh, -c, 'echo ran > /tmp/msg']}
    - name: consume
      inputs: {parameters: [{name: in, INPUT_DEFAULT}]}
      container: {image: alpine:3.20, command: [echo, "got [{{inputs.parameters.in}}]"]}
"""

DAG = """
kind: Workflow
metadata: {generateName: skipped-dag-}
spec:
  entrypoint: main
  templates:
    - name: main
      dag:
        tasks:
          - {name: gate, template: consume, arguments: {parameters: [{name: in, value: x}]}}
          - {name: producer, template: produce, depends: gate.Failed}
          - name: consumer
            template: consume
            depends: producer.Succeeded || producer.Omitted
            arguments: {parameters: [{name: in, value: "ARG"}]}
"""

STEPS = """
kind: Workflow
metadata: {generateName: skipped-steps-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: producer, template: produce, when: "1 == 2"}
        - - name: consumer
            template: consume
            arguments: {parameters: [{name: in, value: "ARG"}]}
"""


def _workflow(shape: str, ref: str, output_default: str | None, input_default: str | None) -> str:
    arg = "{{%s.producer.outputs.parameters.msg}}" % ("tasks" if shape == DAG else "steps")
    produce = PRODUCE.replace(", DEFAULT", f", default: {output_default}" if output_default is not None else "")
    produce = produce.replace(", INPUT_DEFAULT", f", default: {input_default}" if input_default is not None else "")
    return shape.replace("ARG", ref.replace("REF", arg)) + produce


@pytest.mark.parametrize("shape", [DAG, STEPS], ids=["dag-omitted", "steps-skipped"])
@pytest.mark.parametrize(
    ("ref", "output_default", "input_default", "got"),
    [
        ("REF", "from-producer", None, "got [from-producer]"),
        ("REF", "from-producer", "from-input", "got [from-producer]"),
        ("REF", None, "from-input", "got [from-input]"),
        ("pre-REF", "from-producer", None, "got [pre-from-producer]"),
    ],
    ids=["output-default", "output-default-wins", "input-default", "default-in-text"],
)
def test_a_node_that_never_ran_gives_its_declared_defaults(
    tmp_path: Path, shape: str, ref: str, output_default: str | None, input_default: str | None, got: str
) -> None:
    """GIVEN a producer that never runs, its output with or without `valueFrom.default`, and a consumer input
    with or without `default` WHEN run THEN Succeeded, the consumer got the producer's default, else its own."""
    result = run_text(tmp_path, _workflow(shape, ref, output_default, input_default))
    assert result.phase == "Succeeded", result.tree
    assert nodes(result)["producer"]["phase"] in ("Skipped", "Omitted")
    assert nodes(result)["consumer"]["outputs"]["result"] == got


@pytest.mark.parametrize("shape", [DAG, STEPS], ids=["dag-omitted", "steps-skipped"])
@pytest.mark.parametrize(
    ("ref", "input_default", "says"),
    [
        ("REF", None, "input parameter 'in' has no value"),
        ("pre-REF", "from-input", "is the output of a skipped or omitted node with no default"),
    ],
    ids=["no-default-anywhere", "absent-inside-text"],
)
def test_an_absent_output_used_without_a_fallback_fails_the_consumer(
    tmp_path: Path, shape: str, ref: str, input_default: str | None, says: str
) -> None:
    """GIVEN a producer that never runs and whose output has no default WHEN the consumer has no input default,
    or uses the reference inside other text THEN the consumer is Error with one line saying why (not "")."""
    result = run_text(tmp_path, _workflow(shape, ref, None, input_default))
    assert result.phase in ("Failed", "Error"), result.tree
    consumer = nodes(result)["consumer"]
    assert consumer["phase"] == "Error" and says in consumer["message"], consumer
    assert "\n" not in consumer["message"]
