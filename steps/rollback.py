"""The rollback step (and what `llmrelease rollback NAME` runs): all traffic and `champion` back on `previous`.

One command, pre-approved: it needs no approval because it only returns to a version that already served
production. Traffic moves first (to a hot `previous` in well under a second; a cold one is started and must
answer a real completion before it takes traffic), then the registry: `champion` -> previous, the `previous`
alias is removed (a second rollback is refused, not flipped back), the rolled-back version is tagged
`llmrelease.rolled_back` with who and why, and any canary in flight is dropped with its lease.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

from typing import Any, ClassVar

from hera.workflows import script
from pydantic import BaseModel, ConfigDict

from registry.errors import SpecError
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE

__all__ = ["Inputs", "Outputs", "RollbackParams", "describe", "rollback_step", "run"]


class Inputs(BaseModel):
    """Which model to roll back, who does it and why (recorded in the registry history)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    actor: str
    reason: str = "rollback"
    workflow_uid: str = ""


class Outputs(BaseModel):
    """Where `champion` (and all traffic) went, and how long the traffic switch took."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    from_version: str
    to_version: str
    switched_s: float


def run(inputs: Inputs, plane: Any) -> Outputs:
    """Roll the model back on `plane` and in the registry (see the module docstring).

    Raises:
        SpecError: The actor is empty.
        ReleaseError: There is no `previous` to roll back to, or its server does not come up.
    """
    from steps.rollout.operations import rollback

    if not inputs.actor.strip():
        raise SpecError("rollback actor is empty: say who rolls back (--actor <you>), it goes into the history")
    result = rollback(plane, inputs.model, actor=inputs.actor, reason=inputs.reason, workflow_uid=inputs.workflow_uid)
    return Outputs(
        model=inputs.model,
        from_version=str(result["from"]),
        to_version=str(result["to"]),
        switched_s=float(result["switched_s"]),
    )


def describe(outputs: Outputs) -> str:
    """The one human line, e.g. `rollback: demo-qa: champion 2 -> 1; all traffic on 1 after 0.012s`."""
    return (
        f"rollback: {outputs.model}: champion {outputs.from_version} -> {outputs.to_version}; all traffic on "
        f"{outputs.to_version} after {outputs.switched_s:.3f}s"
    )


class RollbackParams(StepParams):
    """Argo input parameters of the rollback template."""

    step: ClassVar[str] = "rollback"

    model: str
    actor: str
    reason: str = "rollback"
    workflow_uid: str = ""


def _run_here(inputs: Inputs) -> Outputs:
    """`run` on this machine's serving plane."""
    from registry.settings import llmrelease_home
    from steps.rollout.serving.factory import serving_plane

    return run(inputs, serving_plane("", llmrelease_home()))


@script(constructor="runner", image=STEPS_IMAGE, name="rollback")
def rollback_step(params: RollbackParams) -> None:
    """Hera entry: roll back; exit 1 with one line when there is nothing to roll back to."""
    inputs = Inputs(model=params.model, actor=params.actor, reason=params.reason, workflow_uid=params.workflow_uid)
    outputs = run_step("rollback", lambda: _run_here(inputs))
    print(describe(outputs))
