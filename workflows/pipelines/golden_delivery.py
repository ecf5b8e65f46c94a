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
champion) while the gate decides. Deploying it during the evals was tried twice and is slower on a small machine:
model servers starting next to the eval workers slowed both (76 s against 71 s for a first delivery on 2 cores;
again with warm eval workers: the candidate's delivery 67 s against 55 s, its evals 20 s instead of 10 s). A
failing gate or latency/cost check runs a reject step, which tags the version and fails the workflow with the
reasons; a failing canary aborts itself; in every failed case the exit handler makes sure no traffic stays split.

The release spec comes from git, never from the steps image: onboard gets the releases repository (`git-repo`) at
`git-commit` as an Argo `git` input artifact (a full clone: the commit may be behind the tip), reads `release`
(confined to `releases/`) in it, outputs the commit it checked out (`git-commit`, which register and the evidence
record) and the validated spec as the `spec` artifact that every later step reads. `git-repo` defaults to
`RELEASES_REPO`, which an installation
patches (a JSON 6902 patch on this WorkflowTemplate's parameter, or `-p git-repo=`); `llmrelease run` gives the
checkout it runs from, and the webhook the pushed repository's clone URL. The environment is the `environment`
parameter when given, else the spec's `environment` field, else dev (the webhook passes none).
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Artifact, GitArtifact, Parameter, Steps, Task, WorkflowTemplate
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
from steps.release.source import SPEC_IN
from workflows.pipelines import as_task
from workflows.pipelines.controls import apply_controls

__all__ = ["build", "NAME", "RELEASES_REPO"]

NAME = "golden-delivery"
RELEASES_REPO = "https://github.com/llmrelease/llmrelease.git"
"""The releases repository a run reads its spec from when not given one (`git-repo`): an installation patches it."""
MODEL_MUTEX = "llmrelease-model-{{inputs.parameters.model-name}}"
"""One release of a model at a time, from its evals to its promotion: a second delivery of the same model waits
(Argo's mutex; the rollback template takes the same one), deliveries of other models run alongside."""


_SPEC = Artifact(name="spec", from_="{{inputs.artifacts.spec}}")
"""The validated spec, as the release-model DAG hands it to each step (steps read it at `SPEC_IN`)."""
_ENVIRONMENT = "{{inputs.parameters.environment}}"


def _parameters() -> list[Parameter]:
    """The workflow's parameters: what the Argo UI form shows."""
    return [
        Parameter(
            name="release",
            value="releases/demo.yaml",
            description="Path of the release spec in the releases repository: releases/<name>.yaml.",
        ),
        Parameter(
            name="git-repo",
            value=RELEASES_REPO,
            description="The releases repository (a clone URL; locally also a path) the spec is read from.",
        ),
        Parameter(
            name="git-commit",
            value="",
            description="Commit (sha, tag or branch) of the releases repository; empty means its default branch head.",
        ),
        Parameter(
            name="environment",
            value="",
            enum=["", "dev", "stage", "prod"],
            description="Target environment (policy allow-lists and thresholds); empty means the spec's, else dev.",
        ),
        Parameter(
            name="eval-shards",
            value="2",
            enum=["1", "2", "4", "8", "16"],
            description="How many Ray workers share the eval suites (one engine each).",
        ),
    ]


def _with_spec(**params: str) -> list[Parameter | Artifact]:
    """Task arguments: the spec artifact, `release` naming where the step finds it, and `params`."""
    return [_SPEC, Parameter(name="release", value=SPEC_IN), *(Parameter(name=k, value=v) for k, v in params.items())]


def _release_model(template_name: str = "release-model") -> DAG:
    """Everything after register, under the model's mutex: evals, gate, deploy, latency, approval, canary, promote."""
    approval_template, record_approval = approval_templates()
    with DAG(
        name=template_name,
        inputs=[
            Parameter(name="model-name"),
            Parameter(name="version"),
            Parameter(name="approval-required"),
            Parameter(name="environment"),
            Artifact(name="spec"),
        ],
        synchronization=Synchronization(mutexes=[Mutex(name=MODEL_MUTEX)]),
    ) as release_model:
        evals = {
            kind: as_task(
                batch_eval_step(
                    name=name,
                    arguments=_with_spec(
                        model_name="{{inputs.parameters.model-name}}",
                        version="{{inputs.parameters.version}}",
                        kind=kind,
                        work_dir=EVAL_DIR,
                        shards="{{workflow.parameters.eval-shards}}",
                    ),
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
                    *_with_spec(work_dir=GATE_DIR, environment=_ENVIRONMENT),
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
                arguments=_with_spec(
                    version="{{inputs.parameters.version}}", workflow_uid="{{workflow.uid}}", environment=_ENVIRONMENT
                ),
            )
        )
        latency = as_task(
            latency_step(
                name="latency",
                arguments=_with_spec(
                    base_url=str(deploy.get_parameter("candidate-url").value),
                    model=str(deploy.get_parameter("served-model").value),
                    work_dir=LATENCY_DIR,
                    environment=_ENVIRONMENT,  # the load: the spec's gates.latency.load, else the policy's
                ),
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
                    "environment": _ENVIRONMENT,
                    "approver": approval.get_parameter("approver"),
                    "workflow_uid": "{{workflow.uid}}",
                },
            )
        )
        canary = as_task(
            canary_step(
                name="canary",
                arguments=_with_spec(workflow_uid="{{workflow.uid}}", work_dir=CANARY_DIR, environment=_ENVIRONMENT),
                when=f"'{latency.get_parameter('verdict').value}' == 'pass'",
            )
        )
        promote = as_task(
            promote_step(
                name="promote",
                arguments=_with_spec(workflow_name="{{workflow.name}}", workflow_uid="{{workflow.uid}}"),
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
    return release_model


def _deliver(release_model: DAG) -> None:
    """The entrypoint: onboard the spec from git at the commit, register, then the release under the mutex."""
    with DAG(name="deliver"):
        onboard = as_task(
            onboard_step(
                name="onboard",
                arguments=[
                    GitArtifact(
                        name="release-repo",
                        repo="{{workflow.parameters.git-repo}}",
                        revision="{{workflow.parameters.git-commit}}",
                    ),  # no depth: a shallow clone cannot check out a commit behind the branch tip
                    Parameter(name="release", value="{{workflow.parameters.release}}"),
                    Parameter(name="environment", value="{{workflow.parameters.environment}}"),
                    Parameter(name="work_dir", value=ONBOARD_DIR),
                    Parameter(name="git_repo", value="{{workflow.parameters.git-repo}}"),
                    Parameter(name="git_commit", value="{{workflow.parameters.git-commit}}"),
                ],
            )
        )
        register = as_task(
            register_step(
                name="register",
                arguments=[
                    onboard.get_artifact("record"),
                    Parameter(name="workflow_name", value="{{workflow.name}}"),
                    Parameter(name="workflow_uid", value="{{workflow.uid}}"),
                    Parameter(name="git_commit", value=str(onboard.get_parameter("git-commit").value)),
                    Parameter(name="git_repo", value="{{workflow.parameters.git-repo}}"),
                ],
            )
        )
        release = Task(
            name="release",
            template=release_model,
            arguments=[
                Parameter(name="model-name", value=str(register.get_parameter("model-name").value)),
                Parameter(name="version", value=str(register.get_parameter("version").value)),
                Parameter(name="approval-required", value=str(onboard.get_parameter("approval-required").value)),
                Parameter(name="environment", value=str(onboard.get_parameter("environment").value)),
                onboard.get_artifact("spec"),
            ],
        )
        onboard >> register
        register >> release


def _exit_handler() -> None:
    """onExit: finalize, with whichever reports, spec and spec source the run produced."""
    optional = (*GLOBAL_REPORTS, "release-spec", "spec-source")
    with Steps(name="exit-handler"):
        finalize_step(
            name="finalize",
            arguments=[
                *(
                    Artifact(name=name, from_=f"{{{{workflow.outputs.artifacts.{name}}}}}", optional=True)
                    for name in optional
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
        arguments=_parameters(),
    ) as template:
        _deliver(_release_model())
        _exit_handler()
    return [apply_controls(template)]
