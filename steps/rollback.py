"""The rollback step (and what `llmrelease rollback NAME` runs): all traffic and `champion` back on `previous`.

One command, pre-approved: it needs no approval because it only returns to a version that already served
production. Traffic moves first (to a hot `previous` in well under a second; a cold one is started and must
answer a real completion before it takes traffic), then the registry: `champion` -> previous, the `previous`
alias is removed (a second rollback is refused, not flipped back), the rolled-back version is tagged
`llmrelease.rolled_back` with who and why, and any canary in flight is dropped with its lease. In an environment
whose policy sets `plane: kubernetes` the model's Argo Rollouts `Rollout` is undone (`steps.rollout.cluster_release`).
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
    environment: str = ""
    """Whose policy picks the plane: on `plane: kubernetes`, the model's Rollout is undone; "" is this machine."""


class Outputs(BaseModel):
    """Where `champion` (and all traffic) went, and how long the traffic switch took."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    from_version: str
    to_version: str
    switched_s: float


def run(inputs: Inputs, plane: Any, registry: Any = None) -> Outputs:
    """Roll the model back on `plane` and in the registry (see the module docstring).

    On the cluster plane (`plane` a `RolloutPlane`): `steps.rollout.cluster_release.rollback` undoes the model's
    Rollout, waits until it is Healthy on `previous`, then moves the aliases. `registry`: None reads the environment.

    Raises:
        SpecError: The actor is empty.
        ReleaseError: There is no `previous` to roll back to, or its server does not come up.
    """
    from steps.rollout.operations import rollback
    from steps.rollout.serving.cluster import RolloutPlane

    if not inputs.actor.strip():
        raise SpecError("rollback actor is empty: say who rolls back (--actor <you>), it goes into the history")
    actor, reason, uid = inputs.actor, inputs.reason, inputs.workflow_uid
    if isinstance(plane, RolloutPlane):
        from registry.facade import ModelRegistry
        from steps.rollout import cluster_release

        registry = registry or ModelRegistry.from_env()
        result = cluster_release.rollback(registry, plane, inputs.model, actor=actor, reason=reason, workflow_uid=uid)
    else:
        factory = (lambda: registry) if registry is not None else None
        result = rollback(plane, inputs.model, actor=actor, reason=reason, workflow_uid=uid, registry_factory=factory)
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
    environment: str = ""


def _run_here(inputs: Inputs) -> Outputs:
    """`run` on the environment's cluster plane when its policy says so, else on this machine's serving plane."""
    from registry.settings import llmrelease_home
    from steps.rollout.serving.factory import rollout_plane, serving_plane

    return run(inputs, rollout_plane(inputs.environment) or serving_plane("", llmrelease_home()))


@script(constructor="runner", image=STEPS_IMAGE, name="rollback")
def rollback_step(params: RollbackParams) -> None:
    """Hera entry: roll back; exit 1 with one line when there is nothing to roll back to."""
    inputs = Inputs.model_validate(params.model_dump())
    outputs = run_step("rollback", lambda: _run_here(inputs))
    print(describe(outputs))
