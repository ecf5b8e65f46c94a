"""Pipeline modules: each has `build()` returning the Argo objects it defines (rendered into argo/)."""

from hera.workflows import Task

__all__ = ["as_task"]


def as_task(node: object) -> Task:
    """Hera's script call returns Step | Task; inside a DAG it is always a Task."""
    assert isinstance(node, Task), node
    return node
