"""The deploy step: serve the candidate next to the (hot) champion, behind the model's router, at weight 0.

It takes the model's rollout lease first (see `steps.rollout.operations`): a second release of the same model while one is
in flight is refused here, before anything is started. Readiness means a real completion succeeded. Locally the
servers are `transformers serve` processes (see `steps.rollout.serving.local`); on a cluster the same contract is a vLLM
Deployment + Service per version (`steps.rollout.serving.kubernetes`, infrastructure/serving/).
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys
from typing import Annotated

from hera.workflows import Input, Output, Parameter, script

from registry.errors import ReleaseError
from steps.core.images import STEPS_IMAGE

__all__ = ["DeployParams", "DeployResult", "deploy_step"]


class DeployParams(Input):
    """Argo input parameters of the deploy template."""

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


@script(constructor="runner", image=STEPS_IMAGE, name="deploy")
def deploy_step(params: DeployParams) -> DeployResult:
    """Hera entry: deploy the candidate (exit 1 with one line when refused or when a server does not come up)."""
    from registry.facade import ModelRegistry
    from registry.settings import llmrelease_home
    from steps.core.tracking import mlflow_client
    from steps.release.spec import load_spec
    from steps.rollout.operations import deploy
    from steps.rollout.serving.factory import serving_plane

    try:
        model = load_spec(params.release).model.name
        home = llmrelease_home()
        result = deploy(
            ModelRegistry.from_env(), mlflow_client(), serving_plane(params.environment, home), home, model=model,
            candidate=params.version, workflow_uid=params.workflow_uid, environment=params.environment,
        )
    except ReleaseError as e:
        print(f"deploy: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"deploy: {model} v{result.candidate} ready at {result.candidate_url} (weight 0); champion "
          f"{result.champion or 'none'}; router {result.router_url}")
    return DeployResult(candidate_url=result.candidate_url, champion=result.champion or "",
                        router_url=result.router_url, served_model=model)
