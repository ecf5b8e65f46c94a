"""Pipeline modules: each has `build()` returning the Argo objects it defines (rendered into argo/)."""

__all__: list[str] = []
