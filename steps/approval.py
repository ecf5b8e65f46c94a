"""Human approval: a suspend node a person resumes with their name, and a step that records the approval.

`approval_templates()` gives the two Hera pieces a pipeline drops into its DAG:

* `approval`, a suspend template with one output parameter, `approver`, supplied by the person who resumes it
  (Argo UI: the Resume dialog asks for it; CLI: `argo node set WF --output-parameter approver=alice
  --node-field-selector displayName=approval` then `argo resume WF`; locally: `llmrelease run golden-delivery
  --resume approval --supply approval.approver=alice`);
* `record-approval` (this module's `record_approval`), which refuses an empty approver and records who approved,
  when, for which environment and from which workflow, as the registry version tag
  `llmrelease.approval.<environment>` (JSON), so auditors find it on the version itself.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from hera.workflows import Output, Parameter, Suspend, script
from hera.workflows.models import SuppliedValueFrom, ValueFrom
from pydantic import BaseModel, ConfigDict

from registry.client import VersionTagger
from registry.errors import SpecError
from registry.names import check_name, is_name
from registry.tags import Approval, approval_tag
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE

__all__ = [
    "ApprovalParams",
    "ApprovalResult",
    "Inputs",
    "Outputs",
    "approval_templates",
    "describe",
    "record_approval_step",
    "run",
]


class Inputs(BaseModel):
    """What the record-approval step reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    environment: str
    approver: str
    workflow_uid: str = ""


class Outputs(BaseModel):
    """The approval recorded on the version (as its tag `llmrelease.approval.<environment>`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    approval: Approval


def _check(inputs: Inputs) -> None:
    if not inputs.approver.strip():
        raise SpecError(
            "approver is empty: resume the approval node with your name "
            "(Argo UI: fill in `approver`; locally: --supply approval.approver=<your name>)"
        )
    if not is_name(inputs.environment):
        raise SpecError(
            f"environment {inputs.environment!r} is not a lowercase name (a-z, 0-9, -): pass dev, stage or prod"
        )
    for field in ("model_name", "version"):
        if not getattr(inputs, field).strip():
            raise SpecError(f"{field} is empty: pass the register step's {field.replace('_', '-')} output")
    check_name(inputs.model_name, "model-name")


def run(inputs: Inputs, registry: VersionTagger, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Outputs:
    """Validate the approval and tag the version with it.

    Raises:
        SpecError: The approver is empty or whitespace, the environment is not a lowercase name, the model
            name or version is empty, or the model name is not a DNS-1123 label (registry/names.py).
        RegistryError: The version does not exist, or the registry refused the tag.
    """
    _check(inputs)
    approval = Approval(
        approver=inputs.approver.strip(),
        approved_at=clock(),
        environment=inputs.environment,
        workflow_uid=inputs.workflow_uid,
    )
    registry.tag_version(
        inputs.model_name, inputs.version, approval_tag(inputs.environment), approval.model_dump_json()
    )
    return Outputs(model_name=inputs.model_name, version=inputs.version, approval=approval)


def describe(outputs: Outputs) -> str:
    """The one human line, e.g. `demo-qa version 3 approved for prod by alice at ...: tag llmrelease.approval.prod`."""
    approval = outputs.approval
    return (
        f"{outputs.model_name} version {outputs.version} approved for {approval.environment} by "
        f"{approval.approver} at {approval.approved_at.isoformat()}: tag {approval_tag(approval.environment)}"
    )


class ApprovalParams(StepParams):
    """Argo input parameters of the record-approval template."""

    step: ClassVar[str] = "record-approval"

    model_name: str
    version: str
    environment: str
    approver: str
    workflow_uid: str = ""


class ApprovalResult(Output):
    """Argo output parameters of the record-approval template."""

    approver: Annotated[str, Parameter(name="approver")]
    approved_at: Annotated[str, Parameter(name="approved-at")]


@script(constructor="runner", image=STEPS_IMAGE, name="record-approval")
def record_approval_step(params: ApprovalParams) -> ApprovalResult:
    """Record who approved the release of this version to this environment (a registry version tag)."""
    from registry import ModelRegistry

    inputs = Inputs(
        model_name=params.model_name,
        version=params.version,
        environment=params.environment,
        approver=params.approver,
        workflow_uid=params.workflow_uid,
    )
    outputs = run_step("record-approval", lambda: run(inputs, ModelRegistry.from_env()))
    print(describe(outputs))
    approval = outputs.approval
    return ApprovalResult(approver=approval.approver, approved_at=approval.approved_at.isoformat())


def approval_templates() -> tuple[Suspend, Any]:
    """The suspend template `approval` and the `record_approval_step`, to use inside a WorkflowTemplate context.

    Call it inside `with WorkflowTemplate(...)` (the suspend template registers itself there), then, in the DAG,
    `Task(name="approval", template=suspend)` and `record(name="record-approval", arguments={...,
    "approver": approval_task.get_parameter("approver")})`.
    """
    suspend = Suspend(
        name="approval",
        inputs=[Parameter(name="approver", default="", description="Your name: who approves this release.")],
        outputs=[
            Parameter(
                name="approver",
                value_from=ValueFrom(supplied=SuppliedValueFrom()),
                description="Who approved (supplied on resume).",
            )
        ],
    )
    return suspend, record_approval_step
