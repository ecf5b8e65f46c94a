"""`llmrelease status`: a model's release history read back from a real MLflow store (sqlite, one per test).

The story: v1 and v2 promoted, v3 rejected at the gate, v4 promoted then rolled back to v2, v5 in canary (the
`llmrelease.rollout` tag), v6 just registered (alias candidate); a nightly run of the champion passed.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from registry import ModelRegistry
from steps.release.status import format_status, release_status, status_at
from workflows.cli.main import main

NAME = "demo-qa"


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Story:
    """A store under tmp_path with the history above, written at chosen times through the registry facade."""

    def __init__(self, home: Path) -> None:
        self.uri = f"sqlite:///{home / 'mlflow.db'}"
        home.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.now = 0
        self.registry = ModelRegistry(
            self.client, tracking_uri=self.uri, artifact_root=home / "mlartifacts", clock=self._clock
        )

    def _clock(self) -> int:
        self.now += 1_000_000  # 1 ms per move keeps moves made together in order
        return self.now

    def at(self, when: str) -> ModelRegistry:
        self.now = int(_t(when).timestamp() * 1e9)
        return self.registry

    def tag(self, version: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(NAME, version, key.replace("__", "."), value)

    def approve(self, version: str, env: str, who: str, when: str) -> None:
        self.client.set_model_version_tag(
            NAME,
            version,
            f"llmrelease.approval.{env}",
            json.dumps({"approver": who, "approved_at": when, "environment": env, "workflow_uid": ""}),
        )


@pytest.fixture
def story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Story:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = Story(tmp_path / "home")
    s.client.create_registered_model(NAME)
    for v in range(1, 7):
        s.client.create_model_version(NAME, source=(tmp_path / f"w{v}").as_uri(), tags={"llmrelease.digest": f"d{v}"})
    s.at("2026-11-20T10:00:00Z").promote(NAME, "1", actor="alice", reason="first release")
    s.tag("2", llmrelease__gate="pass")
    s.approve("2", "prod", "bob", "2026-11-21T09:30:00Z")
    s.at("2026-11-21T10:00:00Z").promote(
        NAME, "2", actor="golden-delivery/uid-2", reason="canary completed", workflow_uid="uid-2"
    )
    s.tag("3", llmrelease__gate="fail", llmrelease__rejected="safety/attack_success_rate = 0.45 > 0.10 (max)")
    s.tag("4", llmrelease__gate="pass")
    s.approve("4", "prod", "carol", "2026-11-22T09:00:00Z")
    s.at("2026-11-22T10:00:00Z").promote(
        NAME, "4", actor="golden-delivery/uid-4", reason="canary completed", workflow_uid="uid-4"
    )
    s.at("2026-11-23T08:00:00Z").promote(NAME, "2", actor="rollback/uid-4b", reason="rollback: p95 regression")
    s.tag("5", llmrelease__gate="pass")
    rollout = {"candidate": "5", "workflow_uid": "uid-5", "started_at": "2026-11-23T11:00:00Z"}
    s.client.set_registered_model_tag(NAME, "llmrelease.rollout", json.dumps(rollout))
    s.at("2026-11-23T11:30:00Z").move_alias(NAME, "candidate", "6", actor="golden-delivery/uid-6", reason="registered")
    return s


def _nightly(s: Story, model: str, verdict: str, version: str) -> Any:
    experiment = s.client.get_experiment_by_name("llmrelease-nightly")
    eid = experiment.experiment_id if experiment else s.client.create_experiment("llmrelease-nightly")
    run = s.client.create_run(
        eid,
        run_name=f"nightly-{model}",
        tags={
            "llmrelease.model_name": model,
            "llmrelease.model_version": version,
            "llmrelease.nightly.verdict": verdict,
        },
    )
    s.client.set_terminated(run.info.run_id, "FINISHED")
    return run


def test_status_shows_champion_previous_in_flight_and_the_last_five_releases(story: Story) -> None:
    """GIVEN the story and no nightly run yet
    WHEN the status is read
    THEN champion v2 (back after the rollback, approved by bob), previous v4, v5 in canary and v6 as candidate
    in flight, nightly none, and the last five releases with their outcomes."""
    s = release_status(NAME)
    assert s.champion is not None and s.champion.version == "2"
    assert s.champion.promoted_by == "rollback/uid-4b"
    assert s.champion.promoted_at and s.champion.promoted_at.replace(microsecond=0) == _t("2026-11-23T08:00:00Z")
    assert [(a.environment, a.approver, a.approved_at) for a in s.champion.approvals] == [
        ("prod", "bob", _t("2026-11-21T09:30:00Z"))
    ]
    assert s.previous is not None and s.previous.version == "4"
    assert [(f.version, f.via) for f in s.in_flight] == [
        ("5", ["canary by workflow uid-5 since 2026-11-23T11:00:00Z"]),
        ("6", ["alias candidate"]),
    ]
    assert s.last_nightly is None
    assert [(r.version, r.outcome) for r in s.releases] == [
        ("6", "in flight"),
        ("5", "in flight"),
        ("4", "rolled back"),
        ("3", "rejected"),
        ("2", "champion"),
    ]
    text = format_status(s)
    assert "nightly:    none" in text and "v3 rejected: safety/attack_success_rate = 0.45 > 0.10 (max)" in text
    assert "  champion:   v2, promoted 2026-11-23T08:00:00Z by rollback/uid-4b; approved: prod by bob" in text


def test_status_shows_the_last_nightly_run_of_this_model(story: Story) -> None:
    """GIVEN nightly runs of this model (fail, then pass) and of another model WHEN the status is read
    THEN the latest run of this model is shown with its verdict and version."""
    _nightly(story, NAME, "fail", "2")
    last = _nightly(story, NAME, "pass", "2")
    _nightly(story, "other-model", "fail", "9")
    n = release_status(NAME).last_nightly
    assert n is not None and (n.run_id, n.verdict, n.version, n.status) == (last.info.run_id, "pass", "2", "FINISHED")


@pytest.mark.parametrize(
    ("at", "champion", "promoted_by", "approvers", "previous"),
    [
        ("2026-11-19T00:00:00Z", None, None, [], None),
        ("2026-11-21T12:00:00Z", "2", "golden-delivery/uid-2", ["bob"], "1"),
        ("2026-11-22T12:00:00Z", "4", "golden-delivery/uid-4", ["carol"], "2"),
        ("2026-11-23T12:00:00Z", "2", "rollback/uid-4b", ["bob"], "4"),
    ],
)
def test_status_at_a_time_names_the_champion_and_who_promoted_and_approved_it(
    story: Story, at: str, champion: str | None, promoted_by: str | None, approvers: list[str], previous: str | None
) -> None:
    """GIVEN the story WHEN asked about a time THEN the champion then, who promoted it, who approved it."""
    got = status_at(NAME, _t(at))
    assert (got.champion, got.promoted_by, [a.approver for a in got.approvals], got.previous) == (
        champion,
        promoted_by,
        approvers,
        previous,
    )


def test_cli_status(story: Story, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN the story WHEN `llmrelease status` runs plain, --json, --at, with a bad time and an unknown model
    THEN text and JSON come out, and errors are one line on stderr with a non-zero exit."""
    assert main(["status", NAME]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{NAME}\n  champion:   v2") and "in flight:  v5 (canary by workflow uid-5" in out
    assert "VERSION  REGISTERED" in out and "rolled back" in out
    assert main(["status", NAME, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["previous"]["version"] == "4"
    assert main(["status", NAME, "--at", "2026-11-22T12:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert (
        "champion:  v4 since 2026-11-22T10:00:00.000Z" not in out and "champion:  v4 since 2026-11-22T10:00:00Z" in out
    )
    assert "promoted:  by golden-delivery/uid-4 (workflow uid-4): canary completed" in out
    assert "approved:  prod by carol at 2026-11-22T09:00:00Z" in out
    assert main(["status", NAME, "--at", "yesterday"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an ISO 8601 time" in err
    assert main(["status", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope' not found" in err
    assert datetime.now(UTC).year >= 2026


def test_rejected_aborted_and_failed_releases_are_shown_as_such_not_in_flight(story: Story) -> None:
    """GIVEN the story, then (through the real steps) v6 rejected by the reject step while alias `candidate` still
    names it; v7 registered and taking the rollout lease, then its run failing so the exit handler aborts the
    canary; v8 registered and its run failing before any rollout (the exit handler records the failed run)
    WHEN the status is read
    THEN nothing is in flight: v6 is rejected, v7 aborted with the exit handler's reason, v8 run failed; the text
    says so on their own lines."""
    from steps import finalize, reject
    from steps.rollout.serving.local import LocalServing

    repo = Path(__file__).resolve().parents[2]
    home = Path(os.environ["LLMRELEASE_HOME"])
    reasons = "quality/accuracy 0.61 < 0.70 (min)"
    reject.run(reject.Inputs(model_name=NAME, version="6", reasons=reasons), story.registry)
    for v in ("7", "8"):
        story.client.create_model_version(NAME, source=(home / f"w{v}").as_uri(), tags={"llmrelease.digest": f"d{v}"})
    story.at("2026-11-23T12:00:00Z").move_alias(NAME, "candidate", "7", actor="golden-delivery/uid-7", reason="x")
    rollout = {"candidate": "7", "workflow_uid": "uid-7", "started_at": "2026-11-23T12:01:00Z"}
    story.client.set_registered_model_tag(NAME, "llmrelease.rollout", json.dumps(rollout))
    assert [(f.version, f.via[0]) for f in release_status(NAME).in_flight] == [("7", "alias candidate")]

    def failed_run(uid: str) -> None:
        inputs = finalize.Inputs(
            release=str(repo / "releases/demo.yaml"),
            workflow_name=f"golden-delivery-{uid}",
            workflow_uid=uid,
            workflow_status="Failed",
            reports_dir=home / "no-reports",
            failures='[{"message": "canary analysis failed"}]',
        )
        finalize.run(inputs, story.registry, LocalServing(home))

    failed_run("uid-7")
    story.at("2026-11-23T13:00:00Z").move_alias(NAME, "candidate", "8", actor="golden-delivery/uid-8", reason="x")
    failed_run("uid-8")
    s = release_status(NAME)
    assert s.in_flight == []
    outcomes = {r.version: r for r in release_status(NAME, last=9).releases}
    assert [(v, outcomes[v].outcome) for v in ("8", "7", "6")] == [
        ("8", "run failed"),
        ("7", "aborted"),
        ("6", "rejected"),
    ]
    assert outcomes["7"].aborted and "workflow golden-delivery-uid-7 Failed" in outcomes["7"].aborted
    text = format_status(s)
    assert "in flight:  none" in text
    assert "v7 aborted: workflow golden-delivery-uid-7 Failed" in text and "v6 rejected: quality/accuracy" in text
