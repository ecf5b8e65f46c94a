"""The one place that chooses a serving plane: from the `plane` an environment's platform policy sets.

Steps and commands that serve, move traffic or stop servers call `serving_plane(environment, home)` and are given
a `ServingPlane`; none constructs an implementation. `policy/platform-policy.yaml` sets `plane` per environment
(default `local`); an empty environment (commands and steps run without one) gets the local plane, as
`steps.release.policy.apply_environment` leaves a spec unchanged without one.

The local plane runs in one of two places: as the local profile's service (`llmrelease local up` starts it and its
ConfigMap sets `LLMRELEASE_SERVING_URL`), reached over HTTP by `RemoteServing` so that the servers outlive the step
pods; or, without that variable (unit tests, plain runs on this machine), in the calling process (`LocalServing`).
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.errors import SpecError
from steps.release.policy import PlatformPolicy, load_policy
from steps.rollout.serving.base import ServingPlane
from steps.rollout.serving.local import LocalServing
from steps.rollout.serving.remote import SERVING_URL_ENV, RemoteServing

__all__ = ["serving_plane"]


def serving_plane(environment: str, home: Path, policy: PlatformPolicy | None = None) -> ServingPlane:
    """The serving plane of `environment`.

    Args:
        environment: dev, stage, prod (any environment the policy defines); "" for the local plane.
        home: LLMRELEASE_HOME, where the local plane keeps its state (in this process: no LLMRELEASE_SERVING_URL).
        policy: the platform policy; None reads `policy/platform-policy.yaml` (only when `environment` is set).

    Raises:
        SpecError: the environment is not in the policy, the policy file is missing or malformed (an unknown
            `plane` value included), or it names a plane that is not available yet.
    """
    if environment:
        policy = policy or load_policy()
        plane = policy.environment(environment).plane
        if plane != "local":
            raise SpecError(
                f"{policy.rule(environment, 'plane')} is {plane!r}, which is not available yet (issue 15 adds the "
                "Kubernetes plane: vLLM behind Argo Rollouts); set plane: local"
            )
    url = os.environ.get(SERVING_URL_ENV, "").strip()
    return RemoteServing(url) if url else LocalServing(home)
