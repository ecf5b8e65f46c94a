"""The one place that chooses a serving plane: from the `plane` an environment's platform policy sets.

Steps and commands that serve, move traffic or stop servers call `release_plane(environment, home)` and are given
the cluster plane (`RolloutPlane`, vLLM behind Argo Rollouts: `steps.rollout.cluster_release` drives it) where the
environment's policy sets `plane: kubernetes`, else a local `ServingPlane` (`serving_plane`, driven by
`steps.rollout.operations`); none constructs an implementation. `policy/platform-policy.yaml` sets `plane` per
environment (default `local`); an empty environment (commands and steps run without one) gets the local plane, as
`steps.release.policy.apply_environment` leaves a spec unchanged without one.

The local plane runs in one of two places: as the local profile's service (`llmrelease local up` starts it and its
ConfigMap sets `LLMRELEASE_SERVING_URL`), reached over HTTP by `RemoteServing` so that the servers outlive the step
pods; or, without that variable (unit tests, plain runs on this machine), in the calling process (`LocalServing`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from registry.errors import SpecError
from steps.release.policy import PlatformPolicy, load_policy
from steps.rollout.serving.base import ServingPlane
from steps.rollout.serving.cluster import RolloutPlane
from steps.rollout.serving.local import LocalServing
from steps.rollout.serving.remote import SERVING_URL_ENV, RemoteServing
from steps.rollout.serving.rollouts import RolloutOptions

__all__ = ["release_plane", "rollout_plane", "serving_plane"]


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
                f"{policy.rule(environment, 'plane')} is {plane!r}: versions are served by an Argo Rollouts Rollout "
                "there, driven through steps.rollout.serving.factory.rollout_plane, not by a local ServingPlane"
            )
    url = os.environ.get(SERVING_URL_ENV, "").strip()
    return RemoteServing(url) if url else LocalServing(home)


def rollout_plane(
    environment: str,
    policy: PlatformPolicy | None = None,
    *,
    options: RolloutOptions | None = None,
    connect: Callable[[RolloutOptions | None], RolloutPlane] | None = None,
) -> RolloutPlane | None:
    """The cluster plane (vLLM behind Argo Rollouts) when `environment`'s policy sets `plane: kubernetes`, else None.

    Args:
        environment: dev, stage, prod (any environment the policy defines); "" is the local plane (None).
        policy: the platform policy; None reads `policy/platform-policy.yaml`.
        options: namespace, Gateway, Prometheus of the model's objects (default `RolloutOptions()`).
        connect: builds the plane (default `RolloutPlane.from_cluster`: the pod's account, else the kubeconfig).

    Raises:
        SpecError: the environment is not in the policy, or the policy file is missing or malformed.
        ServingError: no Kubernetes client or configuration (from `connect`).
    """
    if not environment:
        return None
    policy = policy or load_policy()
    if policy.environment(environment).plane != "kubernetes":
        return None
    return (connect or RolloutPlane.from_cluster)(options)


def release_plane(environment: str, home: Path, policy: PlatformPolicy | None = None) -> RolloutPlane | ServingPlane:
    """The plane the steps drive in `environment`: `rollout_plane`'s when the policy sets kubernetes, else local.

    Raises:
        SpecError: the environment is not in the policy, or the policy file is missing or malformed.
        ServingError: the policy sets kubernetes and no Kubernetes client or configuration is there.
    """
    return rollout_plane(environment, policy) or serving_plane(environment, home, policy)
