r"""The golden delivery pipeline, rendered as the `golden-delivery` WorkflowTemplate.

    onboard -> register -> batch-eval + safety (parallel) -> gate + deploy (parallel) -> latency -> [approval]
                                                             \-> reject                  \-> reject-latency
    -> canary
    -> promote      (approval: a suspend node in the spec's rollout.approval_required_in environments, stage and
                     prod by default; the approver and time go into the registry)
    onExit: finalize (abort a half-done rollout of a failed run; evidence)

Everything after register runs in one template, `release-model`, that holds the model's mutex
(`llmrelease-model-<model>`): a second delivery of the same model waits at it until the first has promoted or
failed, as does a rollback of that model; other models are not held up.

Its parameters carry descriptions, defaults and enums so a person can submit it from the Argo UI form. Steps
exchange small values as parameters and files as Argo artifacts (the onboarding record, the eval reports); the
weights travel by URI (MLflow artifact store or S3). The candidate is deployed (at weight 0, next to the hot
champion) while the gate decides. Deploying it during the evals was tried and is slower on a small machine: model
servers starting next to the eval workers slowed both (76 s against 71 s for a first delivery on 2 cores). A
failing gate or latency/cost check runs a reject step, which tags the version and fails the workflow with the
reasons; a failing canary aborts itself; in every failed case the exit handler makes sure no traffic stays split.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Artifact, Parameter, Steps, Task, WorkflowTemplate
from hera.workflows.models import Mutex, Synchronization

from steps.approval import approval_templates
from steps.batch_eval import batch_eval_step
from steps.canary import canary_step
from steps.core.artifacts import (
    CANARY_DIR,
    EVAL_DIR,
    FINAL_INPUTS,
    GATE_DIR,
    GLOBAL_REPORTS,
    LATENCY_DIR,
    ONBOARD_DIR,
)
from steps.deploy import deploy_step
from steps.finalize import finalize_step
from steps.gate import gate_step
from steps.latency import latency_step
from steps.onboard import onboard_step
from steps.promote import promote_step
from steps.register import register_step
from steps.reject import reject_step
from workflows.pipelines import as_task
from workflows.pipelines.controls import apply_controls

__all__ = ["build", "NAME"]

NAME = "golden-delivery"
MODEL_MUTEX = "llmrelease-model-{{inputs.parameters.model-name}}"
"""One release of a model at a time, from its evals to its promotion: a second delivery of the same model waits
(Argo's mutex; the rollback template takes the same one), deliveries of other models run alongside."""


def build() -> list[Any]:
    """The golden-delivery WorkflowTemplate."""
    with WorkflowTemplate(
        name=NAME,
        entrypoint="deliver",
        on_exit="exit-handler",
        labels={"app.kubernetes.io/part-of": "llmrelease"},
        annotations={"workflows.argoproj.io/description": "Onboard, register, evaluate and roll out a model release."},
        service_account_name="llmrelease-steps",
        active_deadline_seconds=24 * 3600,  # an approval left waiting a day fails the run; the exit handler cleans up
        arguments=[
            Parameter(
                name="release",
                value="releases/demo.yaml",
                description="Path of the release spec (releases/<name>.yaml) inside the steps image or repo.",
            ),
            Parameter(
                name="environment",
                value="dev",
                enum=["dev", "stage", "prod"],
                description="Target environment: selects the policy allow-lists and thresholds.",
            ),
            Parameter(
                name="git-commit", value="", description="Commit of the release spec; empty means the checkout's HEAD."
            ),
            Parameter(
                name="eval-shards",
                value="2",
                enum=["1", "2", "4", "8", "16"],
                description="How many Ray workers share the eval suites (one engine each).",
            ),
        ],
    ) as template:
        approval_template, record_approval = approval_templates()
        with DAG(
            name="release-model",
            inputs=[Parameter(name="model-name"), Parameter(name="version"), Parameter(name="approval-required")],
            synchronization=Synchronization(mutexes=[Mutex(name=MODEL_MUTEX)]),
        ) as release_model:
            evals = {
                kind: as_task(
                    batch_eval_step(
                        name=name,
                        arguments={
                            "release": "{{workflow.parameters.release}}",
                            "model_name": "{{inputs.parameters.model-name}}",
                            "version": "{{inputs.parameters.version}}",
                            "kind": kind,
                            "work_dir": EVAL_DIR,
                            "shards": "{{workflow.parameters.eval-shards}}",
                        },
                    )
                )
                for kind, name in (("quality", "batch-eval"), ("safety", "safety"))
            }
            gate = as_task(
                gate_step(
                    name="gate",
                    arguments=[
                        evals["quality"].get_artifact("report").with_name("quality-report"),
                        evals["safety"].get_artifact("report").with_name("safety-report"),
                        Parameter(name="release", value="{{workflow.parameters.release}}"),
                        Parameter(name="work_dir", value=GATE_DIR),
                        Parameter(name="environment", value="{{workflow.parameters.environment}}"),
                    ],
                )
            )
            reject = as_task(
                reject_step(
                    name="reject",
                    arguments={
                        "model_name": "{{inputs.parameters.model-name}}",
                        "version": "{{inputs.parameters.version}}",
                        "reasons": "{{tasks.gate.outputs.parameters.reasons}}",
                    },
                    when="'{{tasks.gate.outputs.parameters.decision}}' == 'fail'",
                )
            )
            deploy = as_task(
                deploy_step(
                    name="deploy",
                    arguments={
                        "release": "{{workflow.parameters.release}}",
                        "version": "{{inputs.parameters.version}}",
                        "workflow_uid": "{{workflow.uid}}",
                        "environment": "{{workflow.parameters.environment}}",
                    },
                )
            )
            latency = as_task(
                latency_step(
                    name="latency",
                    arguments={
                        "base_url": deploy.get_parameter("candidate-url"),
                        "model": deploy.get_parameter("served-model"),
                        "work_dir": LATENCY_DIR,
                        "release": "{{workflow.parameters.release}}",
                        "environment": "{{workflow.parameters.environment}}",
                        "requests": "24",
                        "rate": "8",
                        "duration_s": "20",
                    },
                    when="'{{tasks.gate.outputs.parameters.decision}}' == 'pass'",
                )
            )
            reject_latency = as_task(
                reject_step(
                    name="reject-latency",
                    arguments={
                        "model_name": "{{inputs.parameters.model-name}}",
                        "version": "{{inputs.parameters.version}}",
                        "reasons": latency.get_parameter("summary"),
                    },
                    when=f"'{latency.get_parameter('verdict').value}' == 'fail'",
                )
            )
            approval = Task(
                name="approval",
                template=approval_template,
                when=f"'{latency.get_parameter('verdict').value}' == 'pass' && "
                "'{{inputs.parameters.approval-required}}' == 'true'",
            )
            approved = as_task(
                record_approval(
                    name="record-approval",
                    arguments={
                        "model_name": "{{inputs.parameters.model-name}}",
                        "version": "{{inputs.parameters.version}}",
                        "environment": "{{workflow.parameters.environment}}",
                        "approver": approval.get_parameter("approver"),
                        "workflow_uid": "{{workflow.uid}}",
                    },
                )
            )
            canary = as_task(
                canary_step(
                    name="canary",
                    arguments={
                        "release": "{{workflow.parameters.release}}",
                        "workflow_uid": "{{workflow.uid}}",
                        "work_dir": CANARY_DIR,
                        "environment": "{{workflow.parameters.environment}}",
                    },
                    when=f"'{latency.get_parameter('verdict').value}' == 'pass'",
                )
            )
            promote = as_task(
                promote_step(
                    name="promote",
                    arguments={
                        "release": "{{workflow.parameters.release}}",
                        "workflow_name": "{{workflow.name}}",
                        "workflow_uid": "{{workflow.uid}}",
                    },
                )
            )
            for evaluation in evals.values():
                evaluation >> gate
            for evaluation in evals.values():
                evaluation >> deploy
            gate >> reject
            latency.depends = "gate.Succeeded && deploy.Succeeded"
            reject_latency.depends = "latency.Succeeded"
            approval.depends = "latency.Succeeded"
            approved.depends = "approval.Succeeded"
            canary.depends = "latency.Succeeded && (approval.Skipped || record-approval.Succeeded)"
            promote.depends = "canary.Succeeded"
        with DAG(name="deliver"):
            onboard = as_task(
                onboard_step(
                    name="onboard",
                    arguments={
                        "release": "{{workflow.parameters.release}}",
                        "environment": "{{workflow.parameters.environment}}",
                        "work_dir": ONBOARD_DIR,
                    },
                )
            )
            register = as_task(
                register_step(
                    name="register",
                    arguments=[
                        onboard.get_artifact("record"),
                        Parameter(name="workflow_name", value="{{workflow.name}}"),
                        Parameter(name="workflow_uid", value="{{workflow.uid}}"),
                        Parameter(name="git_commit", value="{{workflow.parameters.git-commit}}"),
                    ],
                )
            )
            release = Task(
                name="release",
                template=release_model,
                arguments={
                    "model-name": register.get_parameter("model-name"),
                    "version": register.get_parameter("version"),
                    "approval-required": onboard.get_parameter("approval-required"),
                },
            )
            onboard >> register
            register >> release
        with Steps(name="exit-handler"):
            finalize_step(
                name="finalize",
                arguments=[
                    *(
                        Artifact(name=name, from_=f"{{{{workflow.outputs.artifacts.{name}}}}}", optional=True)
                        for name in GLOBAL_REPORTS
                    ),
                    Parameter(name="release", value="{{workflow.parameters.release}}"),
                    Parameter(name="workflow_name", value="{{workflow.name}}"),
                    Parameter(name="workflow_uid", value="{{workflow.uid}}"),
                    Parameter(name="workflow_status", value="{{workflow.status}}"),
                    Parameter(name="reports_dir", value=FINAL_INPUTS),
                    Parameter(name="failures", value="{{workflow.failures}}"),
                    Parameter(name="git_commit", value="{{workflow.parameters.git-commit}}"),
                    Parameter(name="environment", value="{{workflow.parameters.environment}}"),
                    Parameter(name="started_at", value="{{workflow.creationTimestamp}}"),
                ],
            )
    return [apply_controls(template)]
