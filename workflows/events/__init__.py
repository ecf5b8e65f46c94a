"""Argo Events: the GitHub webhook EventSource/Sensor evaluation and `webhook simulate`."""

__all__: list[str] = []
