"""The promote step: the candidate, now serving 100% after its canary, becomes `champion`; `previous` stays hot.

On the cluster plane (the environment the rollout lease records sets `plane: kubernetes`) the Rollout must be
Healthy with the candidate stable, and its `scaleDownDelaySeconds` keeps the old version's pods up.
The aliases move through the registry facade, so the history records who promoted (the approver when there was
one, else the workflow), when, and the workflow uid. The old champion keeps its server for the spec's
`rollout.keep_previous_hot_s`, so `llmrelease rollback` moves traffic back to a warm server in under a second.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

from typing import Any, ClassVar

from hera.workflows import Artifact, script
from pydantic import BaseModel, ConfigDict

from registry.history import AliasMove
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE
from steps.release.source import SPEC_IN

__all__ = ["Inputs", "Outputs", "PromoteParams", "describe", "promote_step", "run"]


class Inputs(BaseModel):
    """What the promote step needs: the release (its model and how long `previous` stays hot), the workflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    release: str
    workflow_name: str
    workflow_uid: str
    approver: str = ""
    """Who promotes; empty: the approver recorded for this workflow, else the workflow itself."""


class Outputs(BaseModel):
    """The alias moves of the promotion and who they are recorded as made by."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    actor: str
    moves: list[AliasMove]


def _approver(registry: Any, client: Any, model: str, workflow_uid: str) -> str | None:
    """Who approved this workflow's rollout (the record-approval step's version tag), if anyone did."""
    from registry.tags import approvals_from_tags
    from steps.rollout.operations import current_lease

    lease = current_lease(registry, model)
    if lease is None:
        return None
    from steps.rollout.serving.base import model_version_of

    tags = dict(client.get_model_version(model, model_version_of(lease.candidate)).tags or {})
    mine = [a for a in approvals_from_tags(tags).values() if a.workflow_uid == workflow_uid]
    return mine[0].approver if mine else None


def run(inputs: Inputs, registry: Any, client: Any, plane: Any, prompts: Any = None) -> Outputs:
    """Make the candidate `champion` (the old one `previous`, kept hot) as the approver or the workflow.

    A release with a prompt promotes the prompt's `candidate` version too, after the model (the old champion
    prompt becomes `previous`); `prompts` is the prompt registry, from the environment when None.

    Raises:
        SpecError: The release spec is missing or invalid.
        ReleaseError: This workflow no longer holds the model's rollout lease, or the registry refused a move.
    """
    from steps.release.spec import load_spec
    from steps.rollout import cluster_release
    from steps.rollout.operations import promote
    from steps.rollout.serving.cluster import RolloutPlane

    spec = load_spec(inputs.release)
    model = spec.model.name
    actor = (
        inputs.approver.strip()
        or _approver(registry, client, model, inputs.workflow_uid)
        or f"{inputs.workflow_name}/{inputs.workflow_uid}"
    )
    who = {"model": model, "workflow_uid": inputs.workflow_uid, "actor": actor}
    reason = f"canary completed in {inputs.workflow_name}"
    if isinstance(plane, RolloutPlane):  # the Rollout keeps `previous` hot (scaleDownDelaySeconds)
        moves = cluster_release.promote(registry, plane, reason=reason, **who)
    else:
        moves = promote(registry, plane, reason=reason, keep_previous_hot_s=spec.rollout.keep_previous_hot_s, **who)
    if spec.prompt is not None:
        moves += _promote_prompt(prompts, spec.prompt.name, actor, inputs)
    return Outputs(model=model, actor=actor, moves=moves)


def _promote_prompt(prompts: Any, name: str, actor: str, inputs: Inputs) -> list[AliasMove]:
    """The prompt's `candidate` version becomes its `champion` (the old one `previous`), as for the model."""
    from registry.errors import RegistryError
    from registry.tags import CANDIDATE

    if prompts is None:
        from registry.prompts import PromptRegistry

        prompts = PromptRegistry.from_env()
    version = prompts.get_alias(name, CANDIDATE)
    if version is None:
        raise RegistryError(f"prompt {name!r} has no candidate version to promote: run the register step first")
    return list(
        prompts.promote(
            name,
            version,
            actor=actor,
            reason=f"canary completed in {inputs.workflow_name}",
            workflow_uid=inputs.workflow_uid,
        )
    )


def describe(outputs: Outputs) -> str:
    """The alias moves, one line each: `promote: demo-qa: champion 1 -> 2 (by alice)`."""
    return "\n".join(
        f"promote: {m.name}: {m.alias} {m.from_version or '-'} -> {m.to_version} (by {outputs.actor})"
        for m in outputs.moves
    )


class PromoteParams(StepParams):
    """Argo input parameters of the promote template."""

    step: ClassVar[str] = "promote"

    release: str
    workflow_name: str
    workflow_uid: str
    approver: str = ""


def _plane(registry: Any, release: str) -> Any:
    """The cluster plane when the environment the rollout lease records is on it, else this machine's plane."""
    from registry.settings import llmrelease_home
    from steps.release.spec import load_spec
    from steps.rollout.operations import current_lease
    from steps.rollout.serving.factory import rollout_plane, serving_plane

    lease = current_lease(registry, load_spec(release).model.name)
    return rollout_plane(lease.environment if lease else "") or serving_plane("", llmrelease_home())


def _run_here(inputs: Inputs) -> Outputs:
    """`run` with this environment's registry, MLflow client and plane (the deploy step's, read from the lease)."""
    from registry.facade import ModelRegistry
    from steps.core.tracking import mlflow_client

    registry = ModelRegistry.from_env()
    return run(inputs, registry, mlflow_client(), _plane(registry, inputs.release))


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="promote",
    inputs=[Artifact(name="spec", path=SPEC_IN)],  # the validated spec from onboard; `release` names it
)
def promote_step(params: PromoteParams) -> None:
    """Hera entry: promote (exit 1 with one line when this workflow no longer holds the rollout)."""
    inputs = Inputs(
        release=params.release,
        workflow_name=params.workflow_name,
        workflow_uid=params.workflow_uid,
        approver=params.approver,
    )
    outputs = run_step("promote", lambda: _run_here(inputs))
    print(describe(outputs))
