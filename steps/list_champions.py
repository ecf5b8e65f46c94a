"""The list-champions step: the registered models with a `champion` alias, for the nightly fan-out.

The first step of the `nightly-regression` CronWorkflow: it lists every registered model that has a `champion`
alias (or only the model named by the `model` parameter), with the release spec each champion was onboarded from
(the onboarding run's `spec_path` parameter, logged at registration), as a JSON list the `nightly-eval` step
(steps/nightly_eval.py) fans out over (`withParam`).

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

from typing import Annotated, Any, ClassVar

from hera.workflows import Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.errors import RegistryError, ReleaseError
from steps.core.entry import StepParams, one_line, run_step
from steps.core.images import STEPS_IMAGE
from steps.evals.baseline import Champion, find_champions

__all__ = ["Inputs", "ListChampionsParams", "ListChampionsResult", "Outputs", "describe", "list_champions_step", "run"]


class Inputs(BaseModel):
    """Which champions to list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""
    """Only this registered model; empty: every model with a champion."""


class Outputs(BaseModel):
    """The champions found (possibly none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""
    champions: list[Champion]


def run(inputs: Inputs, client: Any) -> Outputs:
    """List the champions through the MLflow client `client`.

    Raises:
        RegistryError: The registry cannot be read (MLflow raises its own exception types; they become this one).
    """
    try:
        champions = find_champions(client, inputs.model)
    except ReleaseError:
        raise
    except Exception as e:
        raise RegistryError(
            f"cannot read the registry ({type(e).__name__}: {one_line(str(e), 300)}): check MLFLOW_TRACKING_URI"
        ) from e
    return Outputs(model=inputs.model, champions=champions)


def describe(outputs: Outputs) -> str:
    """One line per champion (`demo-qa: champion version 3 (release releases/demo.yaml)`), or why there is none."""
    if not outputs.champions:
        named = f" named {outputs.model}" if outputs.model else ""
        return f"no registered model has a champion{named}: nothing to re-evaluate"
    return "\n".join(
        f"{c.model_name}: champion version {c.version} (release {c.release or 'unknown'})" for c in outputs.champions
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
