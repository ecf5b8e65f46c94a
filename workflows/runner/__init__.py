"""The local runner: executes rendered Argo YAML on this machine, faithfully enough to trust before Argo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from registry.errors import WorkflowError
from workflows.argo.manifests import load_library, resolve_workflow
from workflows.runner.engine import Runner, RunOptions, RunResult

__all__ = ["RunOptions", "RunResult", "run_workflow"]


def run_workflow(
    target: str, options: RunOptions, *, argo_dir: Path = Path("argo"), extra_files: Sequence[Path] = ()
) -> RunResult:
    """Lint then run `target` (a YAML file or a rendered object's name) to completion.

    Raises:
        WorkflowError: the manifest does not lint, or uses what only a cluster can run.
    """
    from workflows.argo.lint import lint_document

    library = load_library(argo_dir, extra_files)
    workflow = resolve_workflow(target, library)
    refs = library.templates_by_name()
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{workflow['stem']}-"},
        "spec": workflow["spec"],
    }
    errors = [p for p in lint_document(workflow["source"], doc, templates_by_name=refs) if p.severity == "error"]
    if errors:
        raise WorkflowError(f"{errors[0]} ({len(errors)} lint error(s); run `llmrelease lint` for all)")
    return Runner(workflow, options, refs).run()
