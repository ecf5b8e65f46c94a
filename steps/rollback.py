"""The rollback step (and what `llmrelease rollback NAME` runs): all traffic and `champion` back on `previous`.

One command, pre-approved: it needs no approval because it only returns to a version that already served
production. Traffic moves first (to a hot `previous` in well under a second; a cold one is started and must
answer a real completion before it takes traffic), then the registry: `champion` -> previous, the `previous`
alias is removed (a second rollback is refused, not flipped back), the rolled-back version is tagged
`llmrelease.rolled_back` with who and why, and any canary in flight is dropped with its lease.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys

from hera.workflows import Input, script

from registry.errors import ReleaseError
from steps.core.images import STEPS_IMAGE

__all__ = ["RollbackParams", "rollback_step", "run"]


class RollbackParams(Input):
    """Argo input parameters of the rollback template."""

    model: str
    actor: str
    reason: str = "rollback"
    workflow_uid: str = ""


def run(model: str, *, actor: str, reason: str, workflow_uid: str = "") -> dict[str, object]:
    """Roll `model` back on this machine's serving plane and in the registry (see the module docstring)."""
    from registry.errors import SpecError
    from registry.settings import llmrelease_home
    from steps.rollout.operations import rollback
    from steps.rollout.serving.factory import serving_plane

    if not actor.strip():
        raise SpecError("rollback actor is empty: say who rolls back (--actor <you>), it goes into the history")
    plane = serving_plane("", llmrelease_home())
    return rollback(plane, model, actor=actor, reason=reason, workflow_uid=workflow_uid)


@script(constructor="runner", image=STEPS_IMAGE, name="rollback")
def rollback_step(params: RollbackParams) -> None:
    """Hera entry: roll back; exit 1 with one line when there is nothing to roll back to."""
    try:
        result = run(params.model, actor=params.actor, reason=params.reason, workflow_uid=params.workflow_uid)
    except ReleaseError as e:
        print(f"rollback: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"rollback: {params.model}: champion {result['from']} -> {result['to']}; all traffic on "
          f"{result['to']} after {result['switched_s']:.3f}s")
