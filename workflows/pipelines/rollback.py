"""The `rollback` WorkflowTemplate: the pre-approved, one-command way back.

`argo submit --from workflowtemplate/rollback -p model=NAME -p actor=YOU`, or locally `llmrelease rollback NAME
--actor YOU` (or `llmrelease run rollback -p model=NAME -p actor=YOU`). All traffic and the `champion` alias go
back to `previous`; it refuses when there is nothing to roll back to.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import Parameter, Steps, WorkflowTemplate
from hera.workflows.models import Mutex, Synchronization

from steps.rollback import rollback_step
from workflows.pipelines.controls import apply_controls

__all__ = ["build", "NAME"]

NAME = "rollback"
MODEL_MUTEX = "llmrelease-model-{{workflow.parameters.model}}"


def build() -> list[Any]:
    """The rollback WorkflowTemplate."""
    with WorkflowTemplate(
        name=NAME,
        entrypoint="rollback-model",
        labels={"app.kubernetes.io/part-of": "llmrelease"},
        annotations={"workflows.argoproj.io/description": "Put all traffic and the champion alias back on previous."},
        service_account_name="llmrelease-steps",
        active_deadline_seconds=30 * 60,
        # one rollout change per model at a time: a second rollback of the model waits for the first (Argo's mutex)
        synchronization=Synchronization(mutexes=[Mutex(name=MODEL_MUTEX)]),
        arguments=[
            Parameter(name="model", description="Registered model name to roll back, e.g. demo-qa."),
            Parameter(name="actor", description="Who rolls back (recorded in the registry history)."),
            Parameter(name="reason", value="rollback", description="Why (recorded in the registry history)."),
            Parameter(
                name="environment",
                value="",
                description="Whose policy picks the plane (kubernetes: undo the model's Rollout); empty: local.",
            ),
        ],
    ) as template:
        with Steps(name="rollback-model"):
            rollback_step(
                name="rollback",
                arguments={
                    "model": "{{workflow.parameters.model}}",
                    "actor": "{{workflow.parameters.actor}}",
                    "reason": "{{workflow.parameters.reason}}",
                    "workflow_uid": "{{workflow.uid}}",
                    "environment": "{{workflow.parameters.environment}}",
                },
            )
    return [apply_controls(template)]
