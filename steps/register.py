"""The register step: put an onboarded model into the MLflow registry, once per weights digest.

Reads the onboarding record the onboard step wrote, registers it through `registry.ModelRegistry` (idempotent:
a re-run with the same weights returns the existing version) and points the `candidate` alias at it. The version's
source is the weights' digest-addressed location in the weights store (the record's `weights_uri`, checked to hold
a manifest of the record's digest and every file): nothing is read from the onboard pod's disk or uploaded again.
Publishes the model name, the version and whether it is new, as Argo output parameters.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

from hera.workflows import Artifact, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.errors import SpecError
from steps.core.artifacts import RECORD_IN
from steps.core.entry import StepParams, in_pod, pod_env, run_step
from steps.core.git import resolve_git_commit
from steps.core.images import STEPS_IMAGE

if TYPE_CHECKING:
    from registry.facade import RegisteredVersion

__all__ = [
    "Inputs",
    "Outputs",
    "Registrar",
    "RegisterParams",
    "RegisterResult",
    "describe",
    "register_step",
    "run",
]


class Inputs(BaseModel):
    """What the register step needs: the onboarding record and who is registering it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_path: Path
    workflow_name: str = ""
    workflow_uid: str = ""
    git_commit: str = ""


class Outputs(BaseModel):
    """What the register step publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    digest: str
    created: bool


class Registrar(Protocol):
    """The registry operation the step needs (`registry.ModelRegistry` provides it)."""

    def register(  # noqa: D102
        self, record: dict[str, Any], *, workflow_name: str, workflow_uid: str, git_commit: str
    ) -> "RegisteredVersion": ...


def run(inputs: Inputs, registry: Registrar) -> Outputs:
    """Register the model described by the record at `inputs.record_path`.

    Args:
        inputs: The step's inputs; `git_commit` is passed on as given.
        registry: The model registry to register into.

    Returns:
        The registered name, version and digest, and whether the version is new.

    Raises:
        SpecError: The record file is missing or not a JSON object.
        ReleaseError: Registration failed (see `ModelRegistry.register`).
    """
    record = _read_record(inputs.record_path)
    registered = registry.register(
        record,
        workflow_name=inputs.workflow_name,
        workflow_uid=inputs.workflow_uid,
        git_commit=inputs.git_commit,
    )
    return Outputs(
        name=registered.name, version=registered.version, digest=registered.digest, created=registered.created
    )


def describe(outputs: Outputs) -> str:
    """The one human line the step prints, e.g. `registered demo-qa version 3 (sha256:ab12..., new)`."""
    how = "new" if outputs.created else "already registered, reused"
    return f"registered {outputs.name} version {outputs.version} ({outputs.digest[:19]}..., {how})"


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SpecError(f"onboarding record {path} not found: run the onboard step first and pass its `record`") from e
    except (OSError, ValueError) as e:
        raise SpecError(f"onboarding record {path} is not readable JSON ({e}): re-run the onboard step") from e
    if not isinstance(data, dict):
        raise SpecError(f"onboarding record {path} is not a JSON object: re-run the onboard step")
    return data


class RegisterParams(StepParams):
    """Argo inputs of the register template: the onboarding record (an artifact) and who registers it."""

    step: ClassVar[str] = "register"

    record: Annotated[Path, Artifact(name="record", path=RECORD_IN)]
    workflow_name: str = ""
    workflow_uid: str = ""
    git_commit: str = ""


class RegisterResult(Output):
    """Argo output parameters of the register template."""

    model_name: Annotated[str, Parameter(name="model-name")]
    version: Annotated[str, Parameter(name="version")]
    created: Annotated[bool, Parameter(name="created")]


def _run_here(inputs: Inputs) -> Outputs:
    """`run` on the registry of this environment (MLFLOW_TRACKING_URI, or the local sqlite store)."""
    from registry.facade import ModelRegistry

    _read_record(inputs.record_path)  # fail on a bad record before the registry's store is created
    return run(inputs, ModelRegistry.from_env())


@script(constructor="runner", image=STEPS_IMAGE, name="register", env=pod_env())
def register_step(params: RegisterParams) -> RegisterResult:
    """Register the onboarded model in MLflow (MLFLOW_TRACKING_URI, or the local sqlite store)."""
    inputs = Inputs(
        record_path=in_pod(params.record),
        workflow_name=params.workflow_name,
        workflow_uid=params.workflow_uid,
        git_commit=resolve_git_commit(params.git_commit),
    )
    outputs = run_step("register", lambda: _run_here(inputs))
    print(describe(outputs))
    return RegisterResult(model_name=outputs.name, version=outputs.version, created=outputs.created)
