"""The cluster plane (vLLM behind Argo Rollouts) against recorded Kubernetes API behaviour: no cluster here.

`tests/recorded_rollouts.RecordedCluster` answers as the API server does and plays back the Rollout statuses and
AnalysisRuns the Argo Rollouts v1.5 controller writes (phases, pause reasons, abort messages as it sets them). What
these tests cannot show, a real controller moving real traffic, is the `on_cluster` suite's (docs/install.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from steps.release.spec import Rollout
from steps.rollout.serving.base import ServingError
from steps.rollout.serving.cluster import PREVIOUS_ANNOTATION, RolloutPlane
from steps.rollout.serving.factory import rollout_plane
from steps.rollout.serving.rollouts import SERVING_ANNOTATION, ServedVersion
from tests.recorded_rollouts import RecordedCluster, analysis_run, rollout_status

ROOT = Path(__file__).resolve().parents[2]
V7 = ServedVersion("7", "s3://artifacts/models/demo-qa/sha256-77", "vllm/vllm-openai:v0.32.0")
V8 = ServedVersion("8", "s3://artifacts/models/demo-qa/sha256-88", "vllm/vllm-openai:v0.32.0")
SPEC = Rollout()


class Clock:
    """A monotonic clock that advances only when the plane sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _plane(cluster: RecordedCluster, clock: Clock | None = None) -> RolloutPlane:
    clock = clock or Clock()
    return RolloutPlane(cluster, cluster, sleep=clock.sleep, clock=clock)


def _version_label(cluster: RecordedCluster) -> str:
    labels: dict[str, str] = cluster.objects[("rollouts", "demo-qa")]["spec"]["template"]["metadata"]["labels"]
    return labels["llmrelease.io/version"]


def annotations_of(cluster: RecordedCluster) -> dict[str, str]:
    found: dict[str, str] = cluster.objects[("rollouts", "demo-qa")]["metadata"]["annotations"]
    return found


def _deployed(cluster: RecordedCluster) -> RolloutPlane:
    plane = _plane(cluster)
    plane.deploy("demo-qa", V7, SPEC)
    plane.deploy("demo-qa", V8, SPEC)
    return plane


def test_first_deploy_creates_every_object_and_a_new_version_replaces_only_the_rollout() -> None:
    """GIVEN an empty namespace WHEN version 7 then version 8 of demo-qa are deployed
    THEN the first deploy creates the Rollout, AnalysisTemplate, Services and HTTPRoute; the second replaces the
    Rollout's spec (pod template of v8, v7 recorded as previous) and leaves the Services and the HTTPRoute whose
    weights the controller moved alone."""
    cluster = RecordedCluster()
    plane = _plane(cluster)
    first = plane.deploy("demo-qa", V7, SPEC)
    assert all(line.endswith(": created") for line in first) and len(first) == 5
    cluster.objects[("httproutes", "demo-qa")]["spec"]["rules"][0]["backendRefs"][1]["weight"] = 25
    cluster.objects[("rollouts", "demo-qa")]["metadata"]["annotations"]["rollout.argoproj.io/revision"] = "1"
    second = plane.deploy("demo-qa", V8, SPEC)
    assert "Rollout llmrelease/demo-qa: replaced" in second
    assert "HTTPRoute llmrelease/demo-qa: exists (left to the controller)" in second
    rollout = cluster.objects[("rollouts", "demo-qa")]
    assert _version_label(cluster) == "8" and rollout["metadata"]["generation"] == 2
    annotations = rollout["metadata"]["annotations"]
    assert ServedVersion.from_json(annotations[SERVING_ANNOTATION], "t") == V8
    assert ServedVersion.from_json(annotations[PREVIOUS_ANNOTATION], "t") == V7
    assert annotations["rollout.argoproj.io/revision"] == "1"  # the controller's annotation survives
    plane.deploy("demo-qa", V8, SPEC)  # the same version again: previous stays v7
    assert ServedVersion.from_json(annotations_of(cluster)[PREVIOUS_ANNOTATION], "t") == V7
    assert cluster.objects[("httproutes", "demo-qa")]["spec"]["rules"][0]["backendRefs"][1]["weight"] == 25
    assert ("", "services", "patch") not in cluster.calls


def test_a_canary_followed_to_healthy_collects_its_measurements() -> None:
    """GIVEN v8 deployed over v7 and a controller that walks the steps (a stale status first, then 1%, 5%, ...)
    WHEN the canary is followed THEN it settles Healthy only once the new hash is stable, echoing each change, with
    the measurements of this Rollout's AnalysisRuns (not another model's)."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    cluster.controller_writes(rollout_status("Healthy", step=5, canary_weight=0, current="stable01"), stale=True)
    cluster.controller_writes(
        rollout_status("Progressing", step=1, canary_weight=1, analysis=("demo-qa-canary02-2-1", "Running")),
        rollout_status("Progressing", step=3, canary_weight=5, analysis=("demo-qa-canary02-2-3", "Running")),
        rollout_status("Progressing", step=7, canary_weight=50, analysis=("demo-qa-canary02-2-7", "Successful")),
        rollout_status("Healthy", step=9, canary_weight=0, stable="canary02", current="canary02"),
    )
    measured: dict[str, list[tuple[str, str | None]]] = {
        "error-rate": [("Successful", "[0.001]")],
        "probe": [("Successful", None)],
    }
    cluster.add("analysisruns", analysis_run("demo-qa-canary02-2-1", "demo-qa", "Successful", measured))
    cluster.add("analysisruns", analysis_run("other-abc-1-1", "other", "Failed", {"error-rate": [("Failed", "[0.5]")]}))
    lines: list[str] = []
    outcome = plane.follow("demo-qa", timeout_s=600, poll_s=5, echo=lines.append)
    assert outcome.settled == "Healthy" and outcome.status.version == "8"
    assert len(lines) == 5 and lines[1].startswith("Progressing; step 1/12; canary weight 1%")
    assert [(m.run, m.metric, m.phase, m.value) for m in outcome.measurements] == [
        ("demo-qa-canary02-2-1", "error-rate", "Successful", "[0.001]"),
        ("demo-qa-canary02-2-1", "probe", "Successful", None),
    ]
    assert outcome.run_errors == []


def test_a_failed_analysis_degrades_the_rollout_with_all_traffic_on_stable() -> None:
    """GIVEN a canary whose error-rate analysis fails at 5% WHEN it is followed
    THEN it settles Degraded (aborted, canary weight 0) with the controller's message and the failed measurements."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    message = (
        'RolloutAborted: Rollout aborted update to revision 2: Metric "error-rate" assessed Failed due to '
        "failed (2) > failureLimit (1)"
    )
    cluster.controller_writes(
        rollout_status("Progressing", step=3, canary_weight=5, analysis=("demo-qa-canary02-2-3", "Running")),
        rollout_status("Degraded", step=0, canary_weight=0, abort=True, message=message),
    )
    cluster.add("analysisruns", analysis_run("demo-qa-canary02-2-3", "demo-qa", "Failed",
                                             {"error-rate": [("Failed", "[0.2]"), ("Failed", "[0.3]")]}))  # fmt: skip
    outcome = plane.follow("demo-qa", timeout_s=600)
    assert outcome.settled == "Degraded" and outcome.status.aborted and outcome.status.canary_weight == 0
    assert "failureLimit" in outcome.status.message
    assert [m.phase for m in outcome.measurements] == ["Failed", "Failed"]


def test_an_analysis_run_that_errors_is_reported_with_its_message() -> None:
    """GIVEN a canary whose AnalysisRun ends in Error (Prometheus unreachable: consecutive errors over the limit)
    WHEN it is followed THEN the Rollout settles Degraded and the outcome names the run and the controller's message."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    error = (
        'Metric "error-rate" assessed Error due to consecutiveErrors (5) > consecutiveErrorLimit (4): "Error '
        'Message: Post \\"http://prometheus:9090/api/v1/query\\": dial tcp: lookup prometheus: no such host"'
    )
    cluster.controller_writes(rollout_status("Degraded", step=1, canary_weight=0, abort=True, message=error))
    cluster.add("analysisruns", analysis_run("demo-qa-canary02-2-1", "demo-qa", "Error",
                                             {"error-rate": [("Error", None)] * 5}, message=error))  # fmt: skip
    outcome = plane.follow("demo-qa", timeout_s=60)
    assert outcome.settled == "Degraded"
    assert outcome.run_errors == [f"AnalysisRun demo-qa-canary02-2-1: Error: {error}"]
    assert [m.phase for m in outcome.measurements] == ["Error"] * 5


def test_inconclusive_pauses_then_promote_and_abort_write_what_kubectl_argo_rollouts_writes() -> None:
    """GIVEN a canary paused on an Inconclusive analysis WHEN followed, promoted, aborted and retried
    THEN it settles Paused; promote clears the pause conditions, abort sets status.abort, retry clears it, all on
    the status subresource; retry refuses a Rollout that is not aborted."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    paused = rollout_status("Paused", step=3, canary_weight=5, paused_for="InconclusiveAnalysis",
                            message="InconclusiveAnalysisRun")  # fmt: skip
    cluster.controller_writes(paused)
    assert plane.follow("demo-qa", timeout_s=60).settled == "Paused"
    cluster.objects[("rollouts", "demo-qa")]["status"] = {k: v for k, v in paused.items() if k != "_stale"}
    plane.promote("demo-qa")
    assert "pauseConditions" not in cluster.objects[("rollouts", "demo-qa")]["status"]
    with pytest.raises(ServingError, match="is not aborted: nothing to retry"):
        plane.retry("demo-qa")
    plane.abort("demo-qa")
    assert cluster.objects[("rollouts", "demo-qa")]["status"]["abort"] is True
    plane.retry("demo-qa")
    assert cluster.objects[("rollouts", "demo-qa")]["status"]["abort"] is False
    assert plane.promote("demo-qa", full=True).endswith("fully promoted")
    assert cluster.objects[("rollouts", "demo-qa")]["status"]["promoteFull"] is True


def test_promote_in_the_middle_of_an_analysis_skips_to_the_next_step() -> None:
    """GIVEN a canary running the analysis of step 3 (no pause) WHEN promoted
    THEN the step index moves to 4, as `kubectl argo rollouts promote` does."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    cluster.objects[("rollouts", "demo-qa")]["status"] = rollout_status("Progressing", step=3, canary_weight=5)
    plane.promote("demo-qa")
    assert cluster.objects[("rollouts", "demo-qa")]["status"]["currentStepIndex"] == 4


def test_a_watch_that_does_not_settle_times_out_in_one_line() -> None:
    """GIVEN a canary stuck Progressing at 1% (pods never Ready) WHEN followed for 30 s
    THEN one line names the Rollout, its phase and step, and how to go on; the clock advanced by the polls only."""
    cluster = RecordedCluster()
    plane = _plane(cluster, clock := Clock())
    plane.deploy("demo-qa", V7, SPEC)
    stuck = rollout_status("Progressing", step=1, canary_weight=1, message="more replicas need to be updated")
    cluster.controller_writes(*[stuck] * 20)
    with pytest.raises(ServingError) as info:
        plane.follow("demo-qa", timeout_s=30, poll_s=5)
    message = str(info.value)
    assert "\n" not in message and message.startswith("Rollout llmrelease/demo-qa did not settle within 30s")
    assert "Progressing; step 1/12" in message and "rollout get demo-qa --watch" in message
    assert clock.now == 30


def test_undo_serves_the_previous_version_again_and_refuses_without_one() -> None:
    """GIVEN v7 then v8 deployed WHEN undone THEN the pod template is v7's again and v8 becomes previous;
    GIVEN a single version WHEN undone THEN one line says there is nothing to undo."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    assert plane.undo("demo-qa").endswith("undo to version 7")
    assert _version_label(cluster) == "7"
    annotations = cluster.objects[("rollouts", "demo-qa")]["metadata"]["annotations"]
    assert ServedVersion.from_json(annotations[PREVIOUS_ANNOTATION], "t").version == "8"
    single = RecordedCluster()
    _plane(single).deploy("demo-qa", V7, SPEC)
    with pytest.raises(ServingError, match="has no previous version"):
        _plane(single).undo("demo-qa")


def test_api_refusals_are_one_line_with_the_fix() -> None:
    """GIVEN an account without create on rollouts, or no Rollout at all
    WHEN deploying or aborting THEN one line names the object and the fix (RBAC file, deploy first)."""
    cluster = RecordedCluster()
    cluster.refuse[("rollouts", "create")] = 403
    with pytest.raises(ServingError) as info:
        _plane(cluster).deploy("demo-qa", V7, SPEC)
    assert "Rollout llmrelease/demo-qa: creating it failed (403 Forbidden)" in str(info.value)
    assert "infrastructure/base/rbac.yaml" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ServingError, match="does not exist: deploy a version of demo-qa first"):
        _plane(RecordedCluster()).abort("demo-qa")


def test_a_concurrent_writer_makes_the_replace_a_conflict() -> None:
    """GIVEN someone changed the Rollout between the plane's read and its patch (resourceVersion moved)
    WHEN the plane replaces the spec THEN the JSON patch's test op fails with 409 and the error says to run again."""
    cluster = RecordedCluster()
    plane = _plane(cluster)
    plane.deploy("demo-qa", V7, SPEC)
    original = cluster.get_namespaced_custom_object

    def racing(group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        found = original(group, version, namespace, plural, name)
        if plural == "rollouts":
            cluster.objects[("rollouts", "demo-qa")]["metadata"]["resourceVersion"] = "999"
        return found

    cluster.get_namespaced_custom_object = racing  # type: ignore[method-assign]
    with pytest.raises(ServingError, match="409.*run the command again"):
        plane.deploy("demo-qa", V8, SPEC)


def test_the_plane_uses_exactly_what_the_role_grants() -> None:
    """GIVEN every operation of the plane run against the recorded API
    WHEN the (group, resource, verb) of its calls are collected
    THEN they are exactly the serving rules of the llmrelease-steps Role (infrastructure/base/rbac.yaml)."""
    cluster = RecordedCluster()
    plane = _deployed(cluster)
    cluster.controller_writes(rollout_status("Degraded", step=1, canary_weight=0, abort=True))
    plane.follow("demo-qa", timeout_s=10)
    plane.retry("demo-qa")
    plane.abort("demo-qa")
    plane.promote("demo-qa", full=True)
    plane.undo("demo-qa")
    docs = yaml.safe_load_all((ROOT / "infrastructure" / "base" / "rbac.yaml").read_text(encoding="utf-8"))
    role = next(d for d in docs if d and d["kind"] == "Role" and d["metadata"]["name"] == "llmrelease-steps")
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    granted -= {("argoproj.io", "workflowtaskresults", v) for v in ("create", "patch")}
    assert set(cluster.calls) == granted


def test_the_factory_selects_the_cluster_plane_from_the_policy() -> None:
    """GIVEN the shipped policy with prod set to plane: kubernetes WHEN planes are asked for
    THEN prod gets the Rollout plane (built by `connect`), dev and no environment get none."""
    from steps.release.policy import load_policy

    policy = load_policy()
    raw = policy.model_dump()
    raw["environments"]["prod"]["plane"] = "kubernetes"
    cluster_policy = type(policy).model_validate(raw)
    built: list[Any] = []

    def connect(options: Any) -> RolloutPlane:
        built.append(options)
        return _plane(RecordedCluster())

    assert isinstance(rollout_plane("prod", cluster_policy, connect=connect), RolloutPlane)
    assert rollout_plane("dev", cluster_policy, connect=connect) is None
    assert rollout_plane("", cluster_policy, connect=connect) is None
    assert len(built) == 1
