"""The reject step: runs when the gate says fail; tags the MLflow version `rejected` and fails the workflow.

The workflow ends Failed with the gate's reasons as this node's message, so `argo get` (or the local runner's
tree) shows why without reading logs, and the registry keeps the reasons on the version for auditors.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys

from hera.workflows import Input, script
from pydantic import BaseModel, ConfigDict

from registry.client import VersionTagger
from registry.errors import ReleaseError
from registry.tags import GATE_TAG, REJECTED_TAG
from steps.core.images import STEPS_IMAGE

__all__ = ["Inputs", "run", "reject_step"]

_MLFLOW_TAG_LIMIT = 5000


class Inputs(BaseModel):
    """The rejected version and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    reasons: str


def run(inputs: Inputs, registry: VersionTagger) -> str:
    """Tag the version rejected with the reasons; returns the message the workflow fails with."""
    registry.tag_version(inputs.model_name, inputs.version, REJECTED_TAG, inputs.reasons[:_MLFLOW_TAG_LIMIT])
    registry.tag_version(inputs.model_name, inputs.version, GATE_TAG, "fail")
    return f"gate rejected {inputs.model_name} version {inputs.version}: {inputs.reasons}"


class RejectParams(Input):
    """Argo input parameters of the reject template."""

    model_name: str
    version: str
    reasons: str


@script(constructor="runner", image=STEPS_IMAGE, name="reject")
def reject_step(params: RejectParams) -> None:
    """Hera entry: tag the version rejected, print the reasons, exit 1 so the workflow fails with them."""
    from registry import ModelRegistry

    try:
        message = run(Inputs(**params.model_dump()), ModelRegistry.from_env())
    except ReleaseError as e:
        print(f"reject: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(message, file=sys.stderr)
    raise SystemExit(1)
