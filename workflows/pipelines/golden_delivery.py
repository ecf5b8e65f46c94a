"""The golden delivery pipeline: onboard -> register -> batch-eval + safety (parallel) -> gate -> [reject].

Rendered as the `golden-delivery` WorkflowTemplate. Its parameters carry descriptions, defaults and enums so a
person can submit it from the Argo UI form. Steps exchange small values as parameters and files as Argo
artifacts (the onboarding record, the eval reports); the weights travel by URI (MLflow artifact store or S3).
A failing gate runs `reject`, which tags the version and fails the workflow with the gate's reasons.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate

from steps.artifacts import EVAL_DIR, GATE_DIR, ONBOARD_DIR, QUALITY_REPORT_IN, RECORD_IN, SAFETY_REPORT_IN
from steps.batch_eval import batch_eval_step
from steps.gate import gate_step
from steps.onboard import onboard_step
from steps.register import register_step
from steps.reject import reject_step

__all__ = ["build", "NAME"]

NAME = "golden-delivery"


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
                           "work_dir": ONBOARD_DIR},
            ))
            register = _task(register_step(
                name="register",
                arguments=[onboard.get_artifact("record"),
                           Parameter(name="record_path", value=RECORD_IN),
                           Parameter(name="workflow_name", value="{{workflow.name}}"),
                           Parameter(name="workflow_uid", value="{{workflow.uid}}"),
                           Parameter(name="git_commit", value="{{workflow.parameters.git-commit}}")],
            ))
            evals = {
                kind: _task(batch_eval_step(
                    name=name,
                    arguments={"release": "{{workflow.parameters.release}}",
                               "model_name": register.get_parameter("model-name"),
                               "version": register.get_parameter("version"),
                               "kind": kind, "work_dir": EVAL_DIR,
                               "shards": "{{workflow.parameters.eval-shards}}"},
                ))
                for kind, name in (("quality", "batch-eval"), ("safety", "safety"))
            }
            gate = _task(gate_step(
                name="gate",
                arguments=[evals["quality"].get_artifact("report").with_name("quality-report"),
                           evals["safety"].get_artifact("report").with_name("safety-report"),
                           Parameter(name="report_path", value=f"{QUALITY_REPORT_IN},{SAFETY_REPORT_IN}"),
                           Parameter(name="release", value="{{workflow.parameters.release}}"),
                           Parameter(name="work_dir", value=GATE_DIR)],
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
