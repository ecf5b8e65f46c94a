"""Rollout libraries: deploy/canary/promote/rollback operations, analysis, load generation, serving planes, routers."""

__all__: list[str] = []
