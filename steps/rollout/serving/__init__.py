"""Serving model versions: the local plane (transformers serve + HAProxy) and vLLM on Kubernetes."""

from steps.rollout.serving.local import LocalServing, PlaneState, ServerState, ServingError, ready_check, server_name

__all__ = ["LocalServing", "PlaneState", "ServerState", "ServingError", "ready_check", "server_name"]
