"""The register step: put an onboarded model into the MLflow registry, once per weights digest.

Reads the onboarding record the onboard step wrote, registers it through `registry.ModelRegistry` (idempotent:
a re-run with the same weights returns the existing version) and points the `candidate` alias at it. The version's
source is the weights' digest-addressed location in the weights store (the record's `weights_uri`, checked to hold
a manifest of the record's digest and every file): nothing is read from the onboard pod's disk or uploaded again.
Publishes the model name, the version and whether it is new, as Argo output parameters.

A record with a prompt: the prompt is registered in the Prompt Registry once per content digest and its
`candidate` alias moved (`registry.prompts.PromptRegistry.register`). A prompt-only record (`champion_version`)
registers no model version and moves no model alias: the version published is the champion's. The registered
model is tagged `llmrelease.prompt` with the prompt's name: the serving plane applies that prompt's versions to the
model's served versions (`steps.rollout.operations`).

Where the spec came from is recorded on a new version: the commit (`llmrelease.git_commit`, the one onboard checked
out), the path (the onboarding run's `spec_path` parameter) and the releases repository (`llmrelease.spec.repository`,
the `git_repo` parameter, by default the workflow's `git-repo`), so the nightly regression fetches the released spec.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

from hera.workflows import Artifact, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.errors import SpecError
from registry.tags import MODEL_PROMPT_TAG, SPEC_REPOSITORY_TAG
from steps.core.artifacts import RECORD_IN
from steps.core.entry import StepParams, in_pod, pod_env, run_step
from steps.core.git import resolve_git_commit
from steps.core.images import STEPS_IMAGE

if TYPE_CHECKING:
    from registry.facade import RegisteredVersion
    from registry.prompt_content import PromptContent
    from registry.prompts import RegisteredPrompt

__all__ = [
    "Inputs",
    "Outputs",
    "PromptRegistrar",
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
    git_repo: str = ""
    """The releases repository the spec was read from (tagged on a new version; "" tags nothing)."""


class Outputs(BaseModel):
    """What the register step publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    digest: str
    created: bool
    prompt_name: str = ""
    """The release's prompt, when it carries one: its registry name, version, digest and whether it is new."""
    prompt_version: str = ""
    prompt_digest: str = ""
    prompt_created: bool = False


class PromptRegistrar(Protocol):
    """The prompt registry operation the step needs (`registry.prompts.PromptRegistry` provides it)."""

    def register(  # noqa: D102
        self,
        content: "PromptContent",
        *,
        model_name: str,
        workflow_name: str,
        workflow_uid: str,
        git_commit: str,
        environment: str = "",
    ) -> "RegisteredPrompt": ...


class Registrar(Protocol):
    """The registry operation the step needs (`registry.ModelRegistry` provides it)."""

    def register(  # noqa: D102
        self, record: dict[str, Any], *, workflow_name: str, workflow_uid: str, git_commit: str
    ) -> "RegisteredVersion": ...

    def tag_version(self, name: str, version: str, key: str, value: str) -> None:  # noqa: D102
        ...

    def get_alias(self, name: str, alias: str) -> str | None: ...  # noqa: D102

    def set_model_tag(self, name: str, key: str, value: str) -> None: ...  # noqa: D102


def run(inputs: Inputs, registry: Registrar, prompts: "PromptRegistrar | None" = None) -> Outputs:
    """Register the model described by the record at `inputs.record_path`, and its prompt when it has one.

    A prompt-only record (`champion_version`: `model.source: champion`) registers no model version and moves no
    model alias: its version is the champion's, still checked to be the champion. The prompt (validated at
    onboarding) is registered once per content digest and the prompt's `candidate` alias moved to it.

    Args:
        inputs: The step's inputs; `git_commit` is passed on as given.
        registry: The model registry to register into.
        prompts: The prompt registry (`registry.prompts.PromptRegistry`); from the environment when None and the
            record carries a prompt.

    Returns:
        The registered name, version and digest, and whether the version is new.

    Raises:
        SpecError: The record file is missing or not a JSON object.
        ReleaseError: Registration failed (see `ModelRegistry.register`).
    """
    record = _read_record(inputs.record_path)
    kept = _champion_kept(record, registry)  # a prompt-only release: no model version, no model alias moved
    registered = kept or registry.register(
        record,
        workflow_name=inputs.workflow_name,
        workflow_uid=inputs.workflow_uid,
        git_commit=inputs.git_commit,
    )
    if registered.created and inputs.git_repo:  # a reused version keeps the source it was first registered from
        registry.tag_version(registered.name, registered.version, SPEC_REPOSITORY_TAG, inputs.git_repo)
    prompt = _register_prompt(record, inputs, prompts)
    if prompt is not None:  # the serving plane applies this prompt to the model's served versions from now on
        registry.set_model_tag(registered.name, MODEL_PROMPT_TAG, prompt.name)
    return Outputs(
        name=registered.name,
        version=registered.version,
        digest=registered.digest,
        created=registered.created,
        **_prompt_fields(prompt),
    )


def _champion_kept(record: dict[str, Any], registry: Registrar) -> "RegisteredVersion | None":
    """A prompt-only record's champion version, unchanged; None for a record with weights of its own.

    Raises:
        RegistryError: The champion moved since onboarding (the prompt was validated against other weights).
    """
    from registry.errors import RegistryError
    from registry.facade import RegisteredVersion
    from registry.record import parse_record
    from registry.tags import CHAMPION

    kept = record.get("champion_version")
    if not kept:
        return None
    rec = parse_record(record)
    now = registry.get_alias(rec.name, CHAMPION)
    if now != str(kept):
        raise RegistryError(
            f"{rec.name}: the champion is version {now} now, not {kept} as at onboarding: re-run the release so "
            "the prompt is checked against the champion's weights"
        )
    return RegisteredVersion(
        name=rec.name, version=str(kept), digest=rec.digest, created=False, run_id=None, source=str(rec.weights_uri)
    )


def _register_prompt(
    record: dict[str, Any], inputs: Inputs, prompts: "PromptRegistrar | None"
) -> "RegisteredPrompt | None":
    """Register the record's prompt (idempotent by digest) and move its `candidate` alias; None without one."""
    from registry.errors import IntegrityError
    from registry.prompt_content import PromptContent

    raw = record.get("prompt")
    if not raw:
        return None
    content = PromptContent.model_validate(raw.get("content"))
    if content.digest != raw.get("digest"):
        raise IntegrityError(
            f"onboarding record of {record.get('name')!r}: prompt {content.name!r} hashes to {content.digest[:19]}... "
            f"but the record says {str(raw.get('digest'))[:19]}...: re-run the onboard step"
        )
    if prompts is None:
        from registry.prompts import PromptRegistry

        prompts = PromptRegistry.from_env()
    return prompts.register(
        content,
        model_name=str(record.get("name", "")),
        workflow_name=inputs.workflow_name,
        workflow_uid=inputs.workflow_uid,
        git_commit=inputs.git_commit,
        environment=str(record.get("environment", "")),
    )


def _prompt_fields(prompt: "RegisteredPrompt | None") -> dict[str, Any]:
    if prompt is None:
        return {}
    return {
        "prompt_name": prompt.name,
        "prompt_version": prompt.version,
        "prompt_digest": prompt.digest,
        "prompt_created": prompt.created,
    }


def describe(outputs: Outputs) -> str:
    """The one human line the step prints, e.g. `registered demo-qa version 3 (sha256:ab12..., new)`."""
    how = "new" if outputs.created else "already registered, reused"
    line = f"registered {outputs.name} version {outputs.version} ({outputs.digest[:19]}..., {how})"
    if outputs.prompt_name:
        new = "new" if outputs.prompt_created else "already registered, reused"
        line += (
            f"; prompt {outputs.prompt_name} version {outputs.prompt_version} "
            f"({outputs.prompt_digest[:19]}..., {new}, alias candidate)"
        )
    return line


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
    git_repo: str = "{{workflow.parameters.git-repo}}"
    """The releases repository; Argo (and the local runner) substitute the workflow's `git-repo` in the default."""


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
        git_repo="" if "{{" in params.git_repo else params.git_repo,  # run outside Argo: the default unsubstituted
    )
    outputs = run_step("register", lambda: _run_here(inputs))
    print(describe(outputs))
    return RegisterResult(model_name=outputs.name, version=outputs.version, created=outputs.created)
