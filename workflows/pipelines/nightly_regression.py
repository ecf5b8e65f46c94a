"""The nightly regression pipeline: re-evaluate every registered model's champion, fail on a significant regression.

Rendered as the `nightly-regression` CronWorkflow (Argo 3.6 `schedules`, 03:30 Europe/Berlin): `list-champions`
finds the champions, `nightly-eval` runs once per champion (one at a time: each holds a Ray session and the
engines), and fails with the reason when a champion has regressed against its promotion-time evaluation (see
`steps.nightly_eval`). Each champion is evaluated with the spec it was released with: `list-champions` gives its
releases repository, commit and path, and the `nightly-eval` task gets that repository at that commit as a `git`
artifact whose repo and revision are the loop item's (Argo substitutes `{{item.*}}` in artifact fields), so the pod
clones nothing itself and the repository's credentials stay in the artifact (as onboard's). No depth: the commit
is usually behind the branch tip by now. A champion registered before its repository was recorded (`source`
image) runs in the `nightly-eval-image` task instead, with the spec copy in the steps image and a warning; each
item runs in exactly one of the two tasks (`when` on the item's `source`). Run it on demand with `llmrelease run
nightly-regression` (or `argo submit --from cronwf/nightly-regression`); `llmrelease cron next nightly-regression`
shows when it fires next.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, CronWorkflow, GitArtifact, Parameter, Task

from steps.list_champions import list_champions_step
from steps.nightly_eval import NIGHTLY_DIR, nightly_eval_step
from workflows.pipelines import as_task
from workflows.pipelines.controls import apply_controls

__all__ = ["build", "NAME", "SCHEDULE", "TIMEZONE"]

NAME = "nightly-regression"
SCHEDULE = "30 3 * * *"  # after 03:00: never in the DST gap (skipped) or overlap (run twice)
TIMEZONE = "Europe/Berlin"
_DESCRIPTION = "Re-evaluate every champion on its golden suites; fail on a significant regression."


def build() -> list[Any]:
    """The nightly-regression CronWorkflow."""
    with CronWorkflow(
        name=NAME,
        schedules=[SCHEDULE],
        timezone=TIMEZONE,
        concurrency_policy="Forbid",
        starting_deadline_seconds=3600,
        successful_jobs_history_limit=7,
        failed_jobs_history_limit=14,
        entrypoint="nightly",
        labels={"app.kubernetes.io/part-of": "llmrelease"},
        annotations={"workflows.argoproj.io/description": _DESCRIPTION},
        service_account_name="llmrelease-steps",
        active_deadline_seconds=6 * 3600,
        arguments=[
            Parameter(
                name="model",
                value="",
                description="Only this registered model; empty means every model with a champion.",
            ),
            Parameter(
                name="eval-shards",
                value="2",
                enum=["1", "2", "4", "8", "16"],
                description="How many Ray workers share each eval suite (one engine each).",
            ),
        ],
    ) as cron:
        with DAG(name="nightly", fail_fast=False, parallelism=1):
            champions = as_task(
                list_champions_step(name="list-champions", arguments={"model": "{{workflow.parameters.model}}"})
            )
            champions >> [_evaluate(champions, "git"), _evaluate(champions, "image")]
    return [apply_controls(cron)]


def _evaluate(champions: Task, source: str) -> Task:
    """The nightly-eval fan-out over the champions whose spec `source` is `git` (from the repository) or `image`."""
    arguments: list[Parameter | GitArtifact] = [
        Parameter(name=name, value=value)
        for name, value in {
            "model_name": "{{item.model_name}}",
            "version": "{{item.version}}",
            "release": "{{item.release}}",
            "work_dir": NIGHTLY_DIR,
            "shards": "{{workflow.parameters.eval-shards}}",
            "repository": "{{item.repository}}",
            "commit": "{{item.commit}}",
        }.items()
    ]
    if source == "git":
        arguments.append(GitArtifact(name="release-repo", repo="{{item.repository}}", revision="{{item.commit}}"))
    return as_task(
        nightly_eval_step(
            name="nightly-eval" if source == "git" else "nightly-eval-image",
            arguments=arguments,
            with_param=champions.get_parameter("champions"),
            when=f"'{{{{item.source}}}}' == '{source}'",
        )
    )
