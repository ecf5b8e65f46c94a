"""The reject step: runs when the gate says fail; tags the MLflow version `rejected` and fails the workflow.

The workflow ends Failed with the gate's reasons as this node's message, so `argo get` (or the local runner's
tree) shows why without reading logs, and the registry keeps the reasons on the version for auditors.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys
from typing import ClassVar

from hera.workflows import script
from pydantic import BaseModel, ConfigDict

from registry.client import VersionTagger
from registry.tags import GATE_TAG, REJECTED_TAG
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE

__all__ = ["Inputs", "Outputs", "RejectParams", "describe", "reject_step", "run"]

_MLFLOW_TAG_LIMIT = 5000


class Inputs(BaseModel):
    """The rejected version and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    reasons: str


class Outputs(BaseModel):
    """The version tagged rejected, and why (the outcome of this step is a failed workflow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    reasons: str


def run(inputs: Inputs, registry: VersionTagger) -> Outputs:
    """Tag the version rejected (with the reasons) and its gate verdict fail."""
    registry.tag_version(inputs.model_name, inputs.version, REJECTED_TAG, inputs.reasons[:_MLFLOW_TAG_LIMIT])
    registry.tag_version(inputs.model_name, inputs.version, GATE_TAG, "fail")
    return Outputs(model_name=inputs.model_name, version=inputs.version, reasons=inputs.reasons)


def describe(outputs: Outputs) -> str:
    """The message the workflow fails with: `gate rejected <model> version <v>: <reasons>`."""
    return f"gate rejected {outputs.model_name} version {outputs.version}: {outputs.reasons}"


class RejectParams(StepParams):
    """Argo input parameters of the reject template."""

    step: ClassVar[str] = "reject"

    model_name: str
    version: str
    reasons: str


@script(constructor="runner", image=STEPS_IMAGE, name="reject")
def reject_step(params: RejectParams) -> None:
    """Hera entry: tag the version rejected, print the reasons, exit 1 so the workflow fails with them."""
    from registry import ModelRegistry

    inputs = Inputs(model_name=params.model_name, version=params.version, reasons=params.reasons)
    outputs = run_step("reject", lambda: run(inputs, ModelRegistry.from_env()))
    print(describe(outputs), file=sys.stderr)  # the node's message: the workflow fails with the reasons
    raise SystemExit(1)
