"""What `llmrelease run` refuses up front (workflows/runner/options.py) and the workflow globals it builds."""

from __future__ import annotations

import calendar
import time

from workflows.runner.cluster import ClusterConfig
from workflows.runner.options import unsupported
from workflows.runner.scope import workflow_globals


def test_http_templates_run_but_lifecycle_hooks_are_refused_where_they_stand() -> None:
    """GIVEN an http template, step hooks and workflow hooks, WHEN checked, THEN only the hooks are named."""
    spec = {
        "hooks": {"exit": {"template": "call"}},
        "templates": [
            {"name": "call", "http": {"url": "http://127.0.0.1/"}},
            {"name": "main", "steps": [[{"name": "a", "template": "call", "hooks": {"x": {"template": "call"}}}]]},
        ],
    }
    assert unsupported(spec) == ["spec.hooks", "template main: step a: hooks.x"]


def test_workflow_globals_carry_priority_schedule_timestamps_and_runtime_values() -> None:
    """GIVEN priority and the scheduled-time annotation, WHEN the globals are built, THEN they hold Argo's values."""
    workflow = {
        "metadata": {"annotations": {"workflows.argoproj.io/scheduled-time": "2026-04-29T00:00:00Z"}},
        "spec": {"entrypoint": "main", "priority": 5},
    }
    scope = workflow_globals("w", "u", workflow, {}, ClusterConfig())
    assert (scope["workflow.priority"], scope["workflow.scheduledTime"]) == ("5", "2026-04-29T00:00:00Z")
    assert (scope["workflow.status"], scope["workflow.duration"]) == ("Running", "0.000000")
    created = scope["workflow.creationTimestamp"]
    assert scope["workflow.creationTimestamp.RFC3339"] == created
    epoch = int(scope["workflow.creationTimestamp.s"])
    assert calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) == epoch
    stamp = time.gmtime(epoch)
    assert scope["workflow.creationTimestamp.Y"] == str(stamp.tm_year)
    assert scope["workflow.creationTimestamp.b"] == time.strftime("%b", stamp)
    assert (scope["workflow.creationTimestamp.Z"], scope["workflow.creationTimestamp.z"]) == ("UTC", "+0000")


def test_no_priority_or_schedule_leaves_them_unset() -> None:
    """GIVEN neither, WHEN the globals are built, THEN `workflow.priority`/`scheduledTime` are absent, as in Argo."""
    scope = workflow_globals("w", "u", {"spec": {"entrypoint": "main"}}, {}, ClusterConfig())
    assert "workflow.priority" not in scope and "workflow.scheduledTime" not in scope
