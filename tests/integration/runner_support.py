"""Builders shared by the runner's integration tests: a Workflow file from a spec, a run, its nodes, a shell pod."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflows.runner import RunOptions, RunResult, run_workflow
from workflows.runner.sandbox import bwrap_problem

__all__ = ["BWRAP_PROBLEM", "ISOLATIONS", "LLMRELEASE", "nodes", "run", "run_text", "sh", "write"]

LLMRELEASE = [sys.executable, "-m", "workflows.cli.main"]
BWRAP_PROBLEM = bwrap_problem()  # None where bubblewrap can sandbox a pod here
# Both isolations for a parametrized test; the bwrap one skipped, with the reason, where bubblewrap cannot run.
ISOLATIONS = [
    "none",
    pytest.param("bwrap", marks=pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=str(BWRAP_PROBLEM))),
]


def write(tmp_path: Path, spec: dict[str, Any], name: str = "wf") -> Path:
    """A Workflow file `<name>.yaml` in `tmp_path` with `spec`."""
    path = tmp_path / f"{name}.yaml"
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": f"{name}-"}}
    path.write_text(yaml.safe_dump({**doc, "spec": spec}))
    return path


def run(path: Path, tmp_path: Path, **options: Any) -> RunResult:
    """Run the workflow at `path` with the local runner, its runs under `tmp_path/runs`."""
    opts = RunOptions(runs_dir=tmp_path / "runs", echo=False, **options)
    return run_workflow(str(path), opts, argo_dir=tmp_path / "no-argo")


def run_text(tmp_path: Path, text: str, **options: Any) -> RunResult:
    """Run the Workflow YAML `text` (apiVersion added when it has none) from `tmp_path/workflow.yaml`."""
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "argoproj.io/v1alpha1", **yaml.safe_load(text)}))
    return run(path, tmp_path, **options)


def nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    """The run's nodes by display name."""
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A container template running `script` under sh."""
    return {"name": name, "container": {"image": "alpine:3.20", "command": ["sh", "-c", script]}, **extra}
