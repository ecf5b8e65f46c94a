"""The local runner: executes rendered Argo YAML on this machine, faithfully enough to trust before Argo."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from registry.errors import WorkflowError
from workflows.argo.manifests import load_library, resolve_workflow
from workflows.runner.engine import Runner
from workflows.runner.options import RunOptions, RunResult
from workflows.runner.state import list_runs, load_saved

__all__ = [
    "RunOptions",
    "RunResult",
    "continue_workflow",
    "list_runs",
    "load_saved",
    "request_shutdown",
    "run_workflow",
]


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


def continue_workflow(
    name: str,
    runs_dir: Path,
    *,
    nodes: frozenset[str] = frozenset(),
    supplied: Mapping[str, str] | None = None,
    shutdown: str = "",
    echo: bool = True,
) -> RunResult:
    """Resume (`nodes`, or every suspend node when empty), stop or terminate (`shutdown`) a suspended workflow.

    Its saved nodes are taken as they were; a running workflow (another process) is asked to stop instead.

    Raises:
        WorkflowError: No such workflow, it has ended, or it is still running (for a resume).
    """
    saved = load_saved(runs_dir, name)
    if saved.phase not in ("Running", "Pending"):
        raise WorkflowError(f"workflow {name} has ended ({saved.phase}); only a Running workflow can be continued")
    pid = request_shutdown(name, runs_dir, shutdown) if shutdown else _live_pid(saved.options.get("pid"))
    if pid:
        if not shutdown:
            raise WorkflowError(f"workflow {name} is still running (pid {pid}); resume it once it is suspended")
        raise WorkflowError(f"workflow {name} is running (pid {pid}): asked it to {shutdown.lower()}")
    options = RunOptions(
        resume=nodes,
        supplied=dict(supplied or {}),
        runs_dir=runs_dir,
        echo=echo,
        isolation=str(saved.options.get("isolation") or "none"),
        cluster_config=Path(saved.options["cluster_config"]) if saved.options.get("cluster_config") else None,
        resume_all=not nodes and not shutdown,
        shutdown=shutdown,
    )
    return Runner(saved.workflow, options, saved.refs, saved=saved).run()


def request_shutdown(name: str, runs_dir: Path, strategy: str) -> int | None:
    """Ask the live `llmrelease run` process running workflow `name` to stop or terminate it; its pid, or None.

    That process kills its running pods (their process groups, bubblewrap's included), starts no new node and
    ends the workflow Failed "Stopped with strategy '<strategy>'", running exit handlers for "Stop" only.
    None when no live process runs it (a suspended workflow: `continue_workflow` ends it here).

    Raises:
        WorkflowError: No such workflow, or it has ended.
    """
    saved = load_saved(runs_dir, name)
    if saved.phase not in ("Running", "Pending"):
        raise WorkflowError(f"workflow {name} has ended ({saved.phase}); only a Running workflow can be stopped")
    pid = _live_pid(saved.options.get("pid"))
    if pid:
        (runs_dir / name / "shutdown").write_text(strategy)
    return pid


def _live_pid(pid: object) -> int | None:
    if not pid or int(str(pid)) == os.getpid() or not _alive(int(str(pid))):
        return None
    return int(str(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
