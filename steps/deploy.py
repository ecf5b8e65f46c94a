"""The deploy step: serve the candidate next to the (hot) champion, behind the model's router, at weight 0.

It takes the model's rollout lease first (see `steps.rollout.operations`): a second release of the same model while
one is in flight is refused here, before anything is started. Readiness means a real completion succeeded. Locally
the servers are `transformers serve` processes (see `steps.rollout.serving.local`). Where the environment's policy
sets `plane: kubernetes`, the version's pod template (vLLM) goes into the model's Argo Rollouts `Rollout`
(`steps.rollout.cluster_release`); the controller starts the canary steps from there.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

from pathlib import Path
from typing import Annotated, Any, ClassVar

from hera.workflows import Artifact, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE
from steps.release.source import SPEC_IN
from steps.rollout.operations import Deployment

__all__ = ["DeployParams", "DeployResult", "Inputs", "Outputs", "deploy_step", "describe", "run"]


class Inputs(BaseModel):
    """What the deploy step needs: the release (its model), the version and the workflow taking the lease."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    release: str
    version: str
    workflow_uid: str
    environment: str = "dev"


Outputs = Deployment  # the step publishes the library's deployment as it is


def run(inputs: Inputs, registry: Any, client: Any, plane: Any, home: Path) -> Outputs:
    """Take the rollout lease and serve the candidate next to the champion (see the module docs).

    On the cluster plane (`plane` a `RolloutPlane`) the candidate's pod template goes into the model's Argo
    Rollouts `Rollout` instead (`steps.rollout.cluster_release.deploy`).

    Raises:
        SpecError: The release spec is missing or invalid.
        ReleaseError: Another rollout of the model holds the lease, or a server did not come up.
    """
    from steps.release.spec import load_spec
    from steps.rollout.operations import deploy
    from steps.rollout.serving.cluster import RolloutPlane

    if isinstance(plane, RolloutPlane):  # the environment serves on the cluster: vLLM behind Argo Rollouts
        from steps.release.policy import apply_environment
        from steps.rollout import cluster_release

        spec = apply_environment(load_spec(inputs.release), inputs.environment)
        return cluster_release.deploy(
            registry,
            client,
            plane,
            home,
            spec=spec,
            candidate=inputs.version,
            workflow_uid=inputs.workflow_uid,
            environment=inputs.environment,
        )
    spec = load_spec(inputs.release)
    return deploy(
        registry,
        client,
        plane,
        home,
        model=spec.model.name,
        candidate=inputs.version,
        workflow_uid=inputs.workflow_uid,
        environment=inputs.environment,
        prompt=spec.prompt.name if spec.prompt else None,  # served as `<version>.p<prompt version>`
    )


def describe(outputs: Outputs) -> str:
    """The one human line, e.g. `deploy: demo-qa v3 ready at http://... (weight 0); champion 2; router ...`."""
    return (
        f"deploy: {outputs.model} v{outputs.candidate} ready at {outputs.candidate_url} (weight 0); champion "
        f"{outputs.champion or 'none'}; router {outputs.router_url}"
    )


class DeployParams(StepParams):
    """Argo input parameters of the deploy template."""

    step: ClassVar[str] = "deploy"

    release: str
    version: str
    workflow_uid: str
    environment: str = "dev"


class DeployResult(Output):
    """Argo outputs: where the candidate, the champion and the router answer."""

    candidate_url: Annotated[str, Parameter(name="candidate-url")]
    champion: Annotated[str, Parameter(name="champion")]
    router_url: Annotated[str, Parameter(name="router-url")]
    served_model: Annotated[str, Parameter(name="served-model")]


def _run_here(inputs: Inputs) -> Outputs:
    """`run` with this environment's registry, MLflow client and plane (the cluster's where the policy says so)."""
    from registry.facade import ModelRegistry
    from registry.settings import llmrelease_home
    from steps.core.tracking import mlflow_client
    from steps.rollout.serving.factory import release_plane

    home = llmrelease_home()
    return run(inputs, ModelRegistry.from_env(), mlflow_client(), release_plane(inputs.environment, home), home)


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="deploy",
    inputs=[Artifact(name="spec", path=SPEC_IN)],  # the validated spec from onboard; `release` names it
)
def deploy_step(params: DeployParams) -> DeployResult:
    """Hera entry: deploy the candidate (exit 1 with one line when refused or when a server does not come up)."""
    inputs = Inputs(
        release=params.release, version=params.version, workflow_uid=params.workflow_uid, environment=params.environment
    )
    outputs = run_step("deploy", lambda: _run_here(inputs))
    print(describe(outputs))
    return DeployResult(
        candidate_url=outputs.candidate_url,
        champion=outputs.champion or "",
        router_url=outputs.router_url,
        served_model=outputs.model,
    )
