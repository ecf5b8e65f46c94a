"""Approval: the suspend template a person resumes with their name, and the step that records it as a version tag.

Real MLflow on sqlite under tmp_path; the workflow tests go through the local runner on a rendered template built
from `approval_templates()`, as golden-delivery uses them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from registry import ModelRegistry
from registry.errors import RegistryError, SpecError
from registry.tags import APPROVAL_TAG_PREFIX, Approval, approval_tag, approvals_from_tags
from steps.approval import Inputs, describe, run

NAME = "demo-qa"


class Store:
    """One test's MLflow store with one registered version."""

    def __init__(self, root: Path) -> None:
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.registry = ModelRegistry(self.client, tracking_uri=self.uri, artifact_root=root / "mlartifacts")
        self.client.create_registered_model(NAME)
        self.client.create_model_version(NAME, (root / "weights").as_uri())

    def tags(self, version: str = "1") -> dict[str, str]:
        return dict(self.client.get_model_version(NAME, version).tags)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    created = Store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", created.uri)
    return created


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def tag_version(self, name: str, version: str | int, key: str, value: str) -> None:
        self.calls.append((name, version, key, value))


def inputs(**overrides: str) -> Inputs:
    fields = {"model_name": NAME, "version": "1", "environment": "prod", "approver": "alice", "workflow_uid": "u-1"}
    return Inputs(**{**fields, **overrides})


@pytest.mark.parametrize("approver", ["", "   ", "\t\n"])
def test_an_empty_approver_is_refused_naming_the_field_and_the_fix(approver: str) -> None:
    """GIVEN an empty or whitespace approver WHEN the approval is recorded THEN a one-line SpecError names
    `approver` and how to supply it, and nothing is tagged."""
    recorder = Recorder()
    with pytest.raises(SpecError) as info:
        run(inputs(approver=approver), recorder)
    message = str(info.value)
    assert message.startswith("approver is empty") and "--supply approval.approver=" in message
    assert "\n" not in message and recorder.calls == []


@pytest.mark.parametrize(
    ("field", "value", "words"), [("environment", "Prod!", "environment 'Prod!'"), ("version", " ", "version is empty")]
)
def test_other_bad_inputs_are_refused(field: str, value: str, words: str) -> None:
    """GIVEN an environment that cannot be part of a tag key, or no version WHEN recorded THEN SpecError."""
    with pytest.raises(SpecError, match=words):
        run(inputs(**{field: value}), Recorder())


def test_the_approval_is_a_json_version_tag_per_environment(store: Store) -> None:
    """GIVEN a registered version WHEN alice approves it for prod THEN tag llmrelease.approval.prod holds who,
    when, the environment and the workflow uid; a stage approval is a tag of its own."""
    when = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)
    outputs = run(inputs(approver="  alice  "), store.registry, clock=lambda: when)
    approval = outputs.approval
    assert describe(outputs) == (
        f"{NAME} version 1 approved for prod by alice at 2026-11-23T14:05:00+00:00: tag llmrelease.approval.prod"
    )
    run(inputs(environment="stage", approver="bob", workflow_uid="u-2"), store.registry)
    tags = store.tags()
    assert json.loads(tags[approval_tag("prod")]) == {
        "approver": "alice",
        "approved_at": "2026-11-23T14:05:00Z",
        "environment": "prod",
        "workflow_uid": "u-1",
    }
    found = approvals_from_tags(tags)
    assert found["prod"] == approval and found["stage"].approver == "bob"
    assert approval_tag("prod") == APPROVAL_TAG_PREFIX + "prod"
    assert Approval.model_validate_json(tags[approval_tag("stage")]).workflow_uid == "u-2"


def test_approving_a_version_that_does_not_exist_fails(store: Store) -> None:
    """GIVEN no version 9 WHEN it is approved THEN RegistryError, and nothing is tagged on version 1."""
    with pytest.raises(RegistryError, match="no such version"):
        run(inputs(version="9"), store.registry)
    assert not any(k.startswith(APPROVAL_TAG_PREFIX) for k in store.tags())


# ---- through the local runner, as golden-delivery runs it ----------------------------------------------------------


def approval_workflow(path: Path) -> Path:
    """A WorkflowTemplate: approval (suspend) -> record-approval, built from `approval_templates()`."""
    from hera.workflows import DAG, Task, WorkflowTemplate

    from steps.approval import approval_templates

    with WorkflowTemplate(name="approve-demo", entrypoint="main") as template:
        suspend, record = approval_templates()
        with DAG(name="main"):
            approval = Task(name="approval", template=suspend)
            recorded = record(
                name="record-approval",
                arguments={
                    "model_name": NAME,
                    "version": "1",
                    "environment": "prod",
                    "approver": approval.get_parameter("approver"),
                    "workflow_uid": "{{workflow.uid}}",
                },
            )
            approval >> recorded
    path.write_text(template.to_yaml())
    return path


def run_local(path: Path, tmp_path: Path, **options: Any) -> Any:
    from workflows.runner import RunOptions, run_workflow

    return run_workflow(
        str(path), RunOptions(runs_dir=tmp_path / "runs", echo=False, **options), argo_dir=tmp_path / "no-argo"
    )


def test_resumed_with_a_name_the_workflow_records_the_approval(store: Store, tmp_path: Path) -> None:
    """GIVEN the approval workflow WHEN run with --resume approval --supply approval.approver=alice THEN it succeeds
    and the version carries alice's approval with the run's workflow uid."""
    path = approval_workflow(tmp_path / "approve.yaml")
    result = run_local(path, tmp_path, resume=frozenset({"approval"}), supplied={"approval.approver": "alice"})
    assert result.phase == "Succeeded", result.tree
    recorded = json.loads(store.tags()[approval_tag("prod")])
    assert recorded["approver"] == "alice"
    assert re.fullmatch(r"[0-9a-f-]{36}", recorded["workflow_uid"])


def test_not_resumed_or_resumed_without_a_name_records_nothing(store: Store, tmp_path: Path) -> None:
    """GIVEN the approval workflow WHEN run without --resume THEN it stops at approval; WHEN resumed with a blank
    approver THEN record-approval fails naming `approver`; in both cases the version has no approval tag."""
    path = approval_workflow(tmp_path / "approve.yaml")
    waiting = run_local(path, tmp_path)
    assert waiting.phase == "Running" and "llmrelease resume" in waiting.message
    blank = run_local(path, tmp_path, resume=frozenset({"approval"}), supplied={"approval.approver": " "})
    assert blank.phase == "Failed"
    assert "approver is empty" in blank.tree
    assert approval_tag("prod") not in store.tags()
