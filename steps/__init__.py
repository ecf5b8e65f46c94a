"""Step code that runs inside the pipeline's containers: one module per step."""

__all__: list[str] = []
