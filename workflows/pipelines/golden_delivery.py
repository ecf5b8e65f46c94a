"""The golden delivery pipeline: onboard -> register -> batch-eval + safety (parallel) -> gate -> [reject].

Rendered as the `golden-delivery` WorkflowTemplate. Its parameters carry descriptions, defaults and enums so a
person can submit it from the Argo UI form. Steps exchange small values as parameters and large things by path
or URI (the onboarding record and eval reports as files, the weights in the MLflow artifact store or S3).
A failing gate runs `reject`, which tags the version and fails the workflow with the gate's reasons.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate

from steps.batch_eval import batch_eval_step
from steps.gate import gate_step
from steps.onboard import onboard_step
from steps.register import register_step
from steps.reject import reject_step

__all__ = ["build", "NAME", "WORK_DIR"]

NAME = "golden-delivery"
WORK_DIR = "/tmp/llmrelease/{{workflow.name}}"


def _task(node: object) -> Task:
    """Hera's script call returns Step | Task; inside a DAG it is always a Task."""
    assert isinstance(node, Task), node
    return node


def build() -> list[Any]:
    """The golden-delivery WorkflowTemplate."""
    with WorkflowTemplate(
        name=NAME,
        entrypoint="deliver",
        labels={"app.kubernetes.io/part-of": "llmrelease"},
        annotations={"workflows.argoproj.io/description": "Onboard, register, evaluate and roll out a model release."},
        service_account_name="llmrelease-steps",
        arguments=[
            Parameter(name="release", value="releases/demo.yaml",
                      description="Path of the release spec (releases/<name>.yaml) inside the steps image or repo."),
            Parameter(name="environment", value="dev", enum=["dev", "stage", "prod"],
                      description="Target environment: selects the policy allow-lists and thresholds."),
            Parameter(name="git-commit", value="",
                      description="Commit of the release spec; empty means the checkout's HEAD."),
            Parameter(name="eval-shards", value="2", enum=["1", "2", "4", "8", "16"],
                      description="How many Ray workers share the eval suites (one engine each)."),
        ],
    ) as template:
        with DAG(name="deliver"):
            onboard = _task(onboard_step(
                name="onboard",
                arguments={"release": "{{workflow.parameters.release}}",
                           "environment": "{{workflow.parameters.environment}}",
                           "work_dir": f"{WORK_DIR}/onboard"},
            ))
            register = _task(register_step(
                name="register",
                arguments={"record_path": onboard.get_parameter("record-path"),
                           "workflow_name": "{{workflow.name}}",
                           "workflow_uid": "{{workflow.uid}}",
                           "git_commit": "{{workflow.parameters.git-commit}}"},
            ))
            evals = {
                kind: _task(batch_eval_step(
                    name=name,
                    arguments={"release": "{{workflow.parameters.release}}",
                               "model_name": register.get_parameter("model-name"),
                               "version": register.get_parameter("version"),
                               "kind": kind, "work_dir": f"{WORK_DIR}/{name}",
                               "shards": "{{workflow.parameters.eval-shards}}"},
                ))
                for kind, name in (("quality", "batch-eval"), ("safety", "safety"))
            }
            reports = ",".join(str(e.get_parameter("report-path").value) for e in evals.values())
            gate = _task(gate_step(
                name="gate",
                arguments={"report_path": reports, "release": "{{workflow.parameters.release}}",
                           "work_dir": f"{WORK_DIR}/gate"},
            ))
            reject = _task(reject_step(
                name="reject",
                arguments={"model_name": register.get_parameter("model-name"),
                           "version": register.get_parameter("version"),
                           "reasons": gate.get_parameter("reasons")},
                when=f"'{gate.get_parameter('decision').value}' == 'fail'",
            ))
            onboard >> register
            for evaluation in evals.values():
                register >> evaluation
                evaluation >> gate
            gate >> reject
    return [template]
