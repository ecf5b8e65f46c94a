"""The promote step: the candidate, now serving 100% after its canary, becomes `champion`; `previous` stays hot.

The aliases move through the registry facade, so the history records who promoted (the approver when there was
one, else the workflow), when, and the workflow uid. The old champion keeps its server for the spec's
`rollout.keep_previous_hot_s`, so `llmrelease rollback` moves traffic back to a warm server in under a second.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys
from typing import Any

from hera.workflows import Input, script

from registry.errors import ReleaseError
from steps.core.images import STEPS_IMAGE

__all__ = ["PromoteParams", "promote_step"]


class PromoteParams(Input):
    """Argo input parameters of the promote template."""

    release: str
    workflow_name: str
    workflow_uid: str
    approver: str = ""


def _approver(registry: Any, model: str, workflow_uid: str) -> str | None:
    """Who approved this workflow's rollout (the record-approval step's version tag), if anyone did."""
    from registry.facade import ModelRegistry
    from registry.tags import approvals_from_tags
    from steps.core.tracking import mlflow_client
    from steps.rollout.operations import current_lease

    lease = current_lease(ModelRegistry.from_env(), model)
    if lease is None:
        return None
    tags = dict(mlflow_client().get_model_version(model, lease.candidate).tags or {})
    mine = [a for a in approvals_from_tags(tags).values() if a.workflow_uid == workflow_uid]
    return mine[0].approver if mine else None


@script(constructor="runner", image=STEPS_IMAGE, name="promote")
def promote_step(params: PromoteParams) -> None:
    """Hera entry: promote (exit 1 with one line when this workflow no longer holds the rollout)."""
    from registry.facade import ModelRegistry
    from registry.settings import llmrelease_home
    from steps.release.spec import load_spec
    from steps.rollout.operations import promote
    from steps.rollout.serving.factory import serving_plane

    try:
        spec = load_spec(params.release)
        registry = ModelRegistry.from_env()
        actor = params.approver.strip() or _approver(registry, spec.model.name, params.workflow_uid) or (
            f"{params.workflow_name}/{params.workflow_uid}")
        moves = promote(
            registry, serving_plane("", llmrelease_home()), model=spec.model.name,
            workflow_uid=params.workflow_uid, actor=actor, reason=f"canary completed in {params.workflow_name}",
            keep_previous_hot_s=spec.rollout.keep_previous_hot_s,
        )
    except ReleaseError as e:
        print(f"promote: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for move in moves:
        print(f"promote: {move.name}: {move.alias} {move.from_version or '-'} -> {move.to_version} (by {actor})")
