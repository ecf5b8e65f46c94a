"""The Kubernetes client, configured once the way every cluster-facing step needs it."""

from __future__ import annotations

from typing import Any

from registry.errors import ReleaseError

__all__ = ["kube_client"]


def kube_client(error: type[ReleaseError], what: str) -> Any:
    """The `kubernetes.client` module, configured from the pod's service account, else the local kubeconfig.

    Args:
        error: the ReleaseError subclass to raise (the caller's own, e.g. RoutingError).
        what: what needs the cluster, for the message (e.g. "HTTPRoute llmrelease/demo-qa").

    Raises:
        error: the `kubernetes` package is missing, or no configuration can be loaded.
    """
    try:
        from kubernetes import client, config  # heavy and optional: only where a cluster is driven
    except ImportError as e:
        raise error("kubernetes client not installed: pip install 'llmrelease[steps]'") from e
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise error(f"no Kubernetes configuration for {what}: run in a pod or set KUBECONFIG") from e
    return client
