"""The MLflow model-registry facade: versions, tags, aliases and their history."""

__all__: list[str] = []
