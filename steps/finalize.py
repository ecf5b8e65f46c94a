"""The exit handler: whatever a golden delivery run did, leave no traffic split, and record what happened.

It runs after every run (Argo `onExit`). When the run did not succeed and its rollout is still in flight (the
lease names this workflow), it aborts it: all traffic back on the champion, the candidate's weight 0 and its
server stopped, the lease released. Then it writes the evidence bundle and the release report from whichever
reports the run produced (they arrive as optional workflow-level artifacts).
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys
from pathlib import Path
from typing import Annotated

from hera.workflows import Artifact, Input, Output, Parameter, script

from steps.artifacts import FINAL_INPUTS, GLOBAL_REPORTS
from steps.errors import ReleaseError
from steps.images import STEPS_IMAGE

__all__ = ["FinalizeParams", "FinalizeResult", "finalize_step", "report_paths"]


class FinalizeParams(Input):
    """Argo input parameters of the exit handler."""

    release: str
    workflow_name: str
    workflow_uid: str
    workflow_status: str
    reports_dir: str = FINAL_INPUTS
    failures: str = "[]"
    git_commit: str = ""
    approver: str = ""


class FinalizeResult(Output):
    """What the exit handler did."""

    aborted: Annotated[str, Parameter(name="aborted")]


def report_paths(reports_dir: str) -> list[Path]:
    """The report files this run produced (those the exit handler received)."""
    return [p for name in GLOBAL_REPORTS if (p := Path(reports_dir) / f"{name}.json").is_file()]


@script(constructor="runner", image=STEPS_IMAGE, name="finalize",
        inputs=[Artifact(name=name, path=f"{FINAL_INPUTS}/{name}.json", optional=True) for name in GLOBAL_REPORTS])
def finalize_step(params: FinalizeParams) -> FinalizeResult:
    """Hera entry: abort a half-done rollout of a failed run, then write the evidence (see the module docs)."""
    from registry.facade import ModelRegistry
    from steps.home import llmrelease_home
    from steps.rollout import abort
    from steps.serving.local import LocalServing
    from steps.spec import load_spec

    aborted = None
    try:
        model = load_spec(params.release).model.name
        if params.workflow_status != "Succeeded":
            aborted = abort(
                ModelRegistry.from_env(), LocalServing(llmrelease_home()), model=model,
                workflow_uid=params.workflow_uid,
                reason=f"workflow {params.workflow_name} {params.workflow_status}: {params.failures[:500]}",
            )
    except ReleaseError as e:
        print(f"finalize: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if aborted:
        print(f"finalize: run {params.workflow_status}: rolled out version {aborted} aborted, all traffic on the "
              "champion")
    found = report_paths(params.reports_dir)
    print(f"finalize: {params.workflow_status}; reports: {', '.join(p.stem for p in found) or 'none'}")
    return FinalizeResult(aborted=aborted or "")
