"""Foundations every step library may use: process helpers, image names, artifact paths, the Kubernetes client."""

__all__: list[str] = []
