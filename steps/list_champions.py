"""The list-champions step: the registered models with a `champion` alias, for the nightly fan-out.

The first step of the `nightly-regression` CronWorkflow: it lists every registered model that has a `champion`
alias (or only the model named by the `model` parameter), with where the release spec each champion was onboarded
from lives, as a JSON list the `nightly-eval` step (steps/nightly_eval.py) fans out over (`withParam`): the path
(the onboarding run's `spec_path` parameter), the releases repository (`llmrelease.spec.repository`) and the commit
(`llmrelease.git_commit`) recorded at registration. `source` is `git` when all three are usable (the pipeline then
gives nightly-eval that repository at that commit as a `git` artifact), else `image`: a champion registered before
the repository was recorded is evaluated with the spec copy in the steps image, with a warning.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import re
from typing import Annotated, Any, ClassVar, Literal

from hera.workflows import Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.errors import RegistryError, ReleaseError, SpecError
from registry.tags import GIT_COMMIT_TAG, SPEC_REPOSITORY_TAG
from steps.core.entry import StepParams, one_line, run_step
from steps.core.images import STEPS_IMAGE
from steps.evals.baseline import Champion, find_champions
from steps.release.source import release_path

__all__ = [
    "Inputs",
    "ListChampionsParams",
    "ListChampionsResult",
    "NightlyChampion",
    "Outputs",
    "describe",
    "list_champions_step",
    "run",
]

_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class Inputs(BaseModel):
    """Which champions to list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""
    """Only this registered model; empty: every model with a champion."""


class NightlyChampion(BaseModel):
    """A champion and where its release spec is: `release` in `repository` at `commit` (source git), else the image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    release: str
    repository: str = ""
    commit: str = ""
    source: Literal["git", "image"] = "image"


class Outputs(BaseModel):
    """The champions found (possibly none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""
    champions: list[NightlyChampion]


def _with_source(client: Any, champion: Champion) -> NightlyChampion:
    """The champion with its recorded spec source; `git` only for a repository, a full sha and a releases/ path."""
    tags = dict(client.get_model_version(champion.model_name, champion.version).tags or {})
    repository, commit = tags.get(SPEC_REPOSITORY_TAG, ""), tags.get(GIT_COMMIT_TAG, "").lower()
    try:
        in_repo = release_path(champion.release) == champion.release
    except SpecError:
        in_repo = False
    usable = bool(repository) and _FULL_SHA.fullmatch(commit) is not None and in_repo
    return NightlyChampion(
        **champion.model_dump(),
        repository=repository if usable else "",
        commit=commit if usable else "",
        source="git" if usable else "image",
    )


def run(inputs: Inputs, client: Any) -> Outputs:
    """List the champions through the MLflow client `client`.

    Raises:
        RegistryError: The registry cannot be read (MLflow raises its own exception types; they become this one).
    """
    try:
        champions = [_with_source(client, c) for c in find_champions(client, inputs.model)]
    except ReleaseError:
        raise
    except Exception as e:
        raise RegistryError(
            f"cannot read the registry ({type(e).__name__}: {one_line(str(e), 300)}): check MLFLOW_TRACKING_URI"
        ) from e
    return Outputs(model=inputs.model, champions=champions)


def describe(outputs: Outputs) -> str:
    """One line per champion (`demo-qa: champion version 3 (release releases/demo.yaml at 1a2b3c4d5e6f in URL)`)."""
    if not outputs.champions:
        named = f" named {outputs.model}" if outputs.model else ""
        return f"no registered model has a champion{named}: nothing to re-evaluate"
    return "\n".join(
        f"{c.model_name}: champion version {c.version} (release {c.release or 'unknown'} "
        + (f"at {c.commit[:12]} in {c.repository})" if c.source == "git" else "from the image: no repository recorded)")
        for c in outputs.champions
    )


class ListChampionsParams(StepParams):
    """Argo input parameters of the list-champions template."""

    step: ClassVar[str] = "list-champions"

    model: str = ""


class ListChampionsResult(Output):
    """Argo output parameters of the list-champions template: the champions, a JSON list of objects."""

    champions: Annotated[list[dict[str, str]], Parameter(name="champions")]


@script(constructor="runner", image=STEPS_IMAGE, name="list-champions")
def list_champions_step(params: ListChampionsParams) -> ListChampionsResult:
    """List registered models with a champion (all, or only `model`) as a JSON list for the nightly fan-out."""
    from steps.core.tracking import mlflow_client

    outputs = run_step("list-champions", lambda: run(Inputs(model=params.model), mlflow_client()))
    print(describe(outputs))
    return ListChampionsResult(champions=[c.model_dump() for c in outputs.champions])
