"""The steps' cluster path (deploy, canary, promote, the exit handler's abort, rollback) against recorded Argo Rollouts.

The Kubernetes API is recorded, not real: `tests/recorded_rollouts.RecordedCluster` answers as the API server does
and plays back the statuses the Argo Rollouts v1.5 controller writes; there is no cluster here. Everything else is
real: the steps' `run` functions as their Hera entries call them, an MLflow registry (sqlite) per test with
versions registered at digest-addressed S3 weights-store URIs, the release spec `releases/demo.yaml`, the shipped
platform policy with one environment switched to `plane: kubernetes`, and the Role of infrastructure/base/rbac.yaml.
What a real controller moving real traffic would show is the `on_cluster` suite's (docs/install.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry import ModelRegistry
from registry.tags import CANARY_TAG, CHAMPION, LEASE_TAG, PREVIOUS, ROLLED_BACK_TAG
from steps import canary, deploy, finalize, promote, rollback
from steps.release.spec import load_spec
from steps.rollout import cluster_release
from steps.rollout.operations import RolloutError, current_lease
from steps.rollout.serving.cluster import RolloutPlane
from steps.rollout.serving.rollouts import SERVING_ANNOTATION, ServedVersion
from tests.recorded_rollouts import RecordedCluster, analysis_run, rollout_status

REPO = Path(__file__).resolve().parents[2]
RELEASE = str(REPO / "releases" / "demo.yaml")
NAME = "demo-qa"
HEX = {"1": "1" * 64, "2": "2" * 64, "3": "3" * 64}
STAGED = rollout_status("Paused", step=1, canary_weight=0, stable="s7", paused_for="CanaryPauseStep")
RUN_1, RUN_3 = "demo-qa-canary02-2-4", "demo-qa-canary02-2-6"  # AnalysisRuns of steps 4 and 6 (after 1%, 5%)
SETTLED_V2 = rollout_status("Healthy", step=9, canary_weight=0, stable="canary02", current="canary02")


class World:
    """One test's registry (demo-qa v1 and v2 at S3 weights-store URIs), recorded cluster and plane."""

    def __init__(self, home: Path, tmp: Path) -> None:
        from steps.core.tracking import mlflow_client

        self.home, self.tmp = home, tmp
        self.client = mlflow_client()
        self.registry = ModelRegistry.from_env()
        self.client.create_registered_model(NAME)
        for version, hex_ in HEX.items():
            source = f"s3://artifacts/weights/sha256/{hex_}"
            self.client.create_model_version(NAME, source=source, tags={"llmrelease.digest": f"sha256:{hex_}"})
            assert self.client.get_model_version(NAME, version).source == source
        self.cluster = RecordedCluster()
        self.plane = RolloutPlane(self.cluster, self.cluster, sleep=lambda s: None)

    def deploy(self, version: str) -> Any:
        """The deploy step; the controller starts the candidate's pods and pauses at the staging step (weight 0)."""
        if ("rollouts", NAME) in self.cluster.objects:  # read once before the spec is replaced, once after
            self.cluster.controller_writes(STAGED, STAGED)
        else:  # a first revision becomes stable at once
            self.cluster.controller_writes(
                rollout_status("Healthy", step=12, canary_weight=0, stable="s7", current="s7")
            )
        inputs = deploy.Inputs(release=RELEASE, version=version, workflow_uid=f"uid-{version}", environment="prod")
        return deploy.run(inputs, self.registry, self.client, self.plane, self.home)

    def canary(self, version: str, sleep: Any = None) -> canary.Outputs:
        spec = load_spec(RELEASE)
        inputs = canary.Inputs(spec=spec, workflow_uid=f"uid-{version}", work_dir=self.tmp / f"canary-{version}")
        return canary.run(inputs, self.registry, self.plane, sleep=sleep or (lambda s: None))

    def promote(self, version: str) -> promote.Outputs:
        inputs = promote.Inputs(release=RELEASE, workflow_name=f"golden-{version}", workflow_uid=f"uid-{version}")
        return promote.run(inputs, self.registry, self.client, self.plane)

    def rollout(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.objects[("rollouts", NAME)]
        return found

    def serving(self) -> str:
        return str(self.rollout()["spec"]["template"]["metadata"]["labels"]["llmrelease.io/version"])

    def released_v1(self) -> None:
        """The first release: v1 deployed (stable at once, as the controller makes a first revision), promoted."""
        self.deploy("1")
        self.cluster.controller_writes(rollout_status("Healthy", step=9, canary_weight=0, stable="s7", current="s7"))
        assert self.canary("1").outcome == "completed"
        self.promote("1")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    for var in ("MLFLOW_TRACKING_URI", "LLMRELEASE_PUSHGATEWAY", "LLMRELEASE_EVIDENCE_KEY", "LLMRELEASE_VLLM_IMAGE"):
        monkeypatch.delenv(var, raising=False)
    return World(tmp_path / "home", tmp_path)


def _granted() -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((REPO / "infrastructure" / "base" / "rbac.yaml").read_text(encoding="utf-8"))
    role = next(d for d in docs if d and d["kind"] == "Role" and d["metadata"]["name"] == "llmrelease-steps")
    rules = role["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _walks_to_healthy(world: World) -> None:
    """The controller walks v2's steps with an analysis at 1% and 5%, then makes it stable."""
    world.cluster.controller_writes(
        STAGED,  # where deploy left it: the canary step promotes past the staging pause first
        rollout_status("Progressing", step=4, canary_weight=1, stable="s7", analysis=(RUN_1, "Running")),
        rollout_status("Progressing", step=6, canary_weight=5, stable="s7", analysis=(RUN_3, "Running")),
        SETTLED_V2,
    )
    ok: dict[str, list[tuple[str, str | None]]] = {
        "error-rate": [("Successful", "[0.001]")],
        "probe": [("Successful", None)],
    }
    world.cluster.add("analysisruns", analysis_run(RUN_1, NAME, "Successful", ok))
    world.cluster.add("analysisruns", analysis_run(RUN_3, NAME, "Successful", ok))


def test_deploy_writes_the_candidate_into_the_rollout_and_a_finished_canary_is_promoted(world: World) -> None:
    """GIVEN demo-qa v1 released on the cluster plane (the Rollout created, promoted champion)
    WHEN v2 is deployed, its canary followed to Healthy and promoted through the steps' `run`
    THEN deploy took the lease and put v2's pod template (weights from its store URI's files/, the pinned vLLM image)
    into the Rollout with v1 as previous, answering at the HTTPRoute host; promote before Healthy is refused; the
    canary log has one step per AnalysisRun at the weight it judged; promote moves champion 1 -> 2 and previous to 1,
    tags v2 completed and releases the lease; every API call is one the steps' Role grants."""
    world.released_v1()
    assert world.registry.get_alias(NAME, CHAMPION) == "1" and current_lease(world.registry, NAME) is None
    out = world.deploy("2")
    assert current_lease(world.registry, NAME).candidate == "2"  # type: ignore[union-attr]
    assert (out.candidate, out.champion) == ("2", "1")
    assert out.router_url == "http://demo-qa.models.llmrelease.internal/v1"
    assert out.candidate_url == "http://demo-qa-canary.llmrelease.svc:8000/v1"
    annotations = world.rollout()["metadata"]["annotations"]
    served = ServedVersion.from_json(annotations[SERVING_ANNOTATION], "t")
    assert served == ServedVersion("2", f"s3://artifacts/weights/sha256/{HEX['2']}/files", cluster_release.VLLM_IMAGE)
    assert world.serving() == "2"
    with pytest.raises(RolloutError, match="not the Rollout's stable version.*finish the canary first"):
        world.promote("2")
    _walks_to_healthy(world)
    patched = world.cluster.calls.count(("argoproj.io", "rollouts/status", "patch"))
    result = world.canary("2")
    assert world.cluster.calls.count(("argoproj.io", "rollouts/status", "patch")) == patched + 1  # past the staging
    assert result.outcome == "completed" and result.log["router"] == "gateway"
    assert [(s["weight"], s["phase"], len(s["measurements"])) for s in result.log["steps"]] == [
        (1, "Successful", 2),
        (5, "Successful", 2),
    ]
    assert json.loads(result.log_path.read_text())["steps"][0]["measurements"][0]["at"] == "2026-11-30T22:00:02Z"
    moves = world.promote("2").moves
    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [(PREVIOUS, None, "1"), (CHAMPION, "1", "2")]
    assert current_lease(world.registry, NAME) is None
    assert world.client.get_model_version(NAME, "2").tags[CANARY_TAG] == "completed"
    assert set(world.cluster.calls) <= _granted()


def test_a_degraded_rollout_aborts_the_canary_tags_the_version_and_releases_the_lease(world: World) -> None:
    """GIVEN v2 deployed over champion v1 WHEN the controller aborts the Rollout (an AnalysisRun in Error at 5%)
    THEN the canary step's outcome is aborted with the controller's message and the run's error as its reason,
    written to canary-log.json; v2 is tagged aborted, the lease is released and champion stays 1."""
    world.released_v1()
    world.deploy("2")
    error = 'Metric "error-rate" assessed Error due to consecutiveErrors (5) > consecutiveErrorLimit (4)'
    world.cluster.controller_writes(
        rollout_status("Progressing", step=3, canary_weight=5, stable="s7", analysis=(RUN_3, "Running")),
        rollout_status("Degraded", step=0, canary_weight=0, stable="s7", abort=True, message=f"Aborted: {error}"),
    )
    run = analysis_run(RUN_3, NAME, "Error", {"error-rate": [("Error", None)] * 5}, message=error)
    world.cluster.add("analysisruns", run)
    result = world.canary("2")
    assert result.outcome == "aborted" and result.abort_reason.startswith("Aborted: Metric")
    assert f"AnalysisRun {RUN_3}: Error: {error}" in result.abort_reason
    assert [(s["weight"], s["phase"]) for s in result.log["steps"]] == [(5, "Error")]
    assert json.loads(result.log_path.read_text())["outcome"] == "aborted"
    assert world.client.get_model_version(NAME, "2").tags[CANARY_TAG].startswith("aborted: Aborted: Metric")
    assert LEASE_TAG not in world.registry.model_tags(NAME)
    assert world.registry.get_alias(NAME, CHAMPION) == "1"


def test_an_inconclusive_pause_waits_for_a_human_abort_or_aborts_itself_at_the_pause_timeout(world: World) -> None:
    """GIVEN v2's canary paused on an Inconclusive analysis
    WHEN a human aborts it (what `llmrelease rollout abort` writes) while the step waits
    THEN the step records the human's abort, the Rollout has status.abort and the canary ends aborted;
    GIVEN the same pause and nobody acting WHEN pause_timeout_s passes THEN the step aborts the Rollout itself."""
    world.released_v1()
    world.deploy("2")
    paused = rollout_status("Paused", step=3, canary_weight=5, stable="s7", paused_for="InconclusiveAnalysis")
    degraded = rollout_status("Degraded", step=0, canary_weight=0, stable="s7", abort=True, message="RolloutAborted")
    world.cluster.controller_writes(paused, paused)
    humans: list[str] = []

    def human_aborts(seconds: float) -> None:
        humans.append(world.plane.abort(NAME))
        world.cluster.controller_writes(degraded)

    result = world.canary("2", sleep=human_aborts)
    assert len(humans) == 1 and result.outcome == "aborted"
    assert result.log["decisions"][0]["action"] == "abort" and "human" in result.log["decisions"][0]["actor"]
    assert world.rollout()["status"]["abort"] is True
    # the pause timeout, on a fresh deploy of v2 (the lease released by the abort above)
    world.deploy("2")
    world.cluster.controller_writes(paused, paused, paused)
    now = [0.0]

    def tick(seconds: float) -> None:
        now[0] += seconds

    log = cluster_release.canary(
        world.registry, world.plane, spec=load_spec(RELEASE), workflow_uid="uid-2", sleep=tick, clock=lambda: now[0]
    )
    assert log["outcome"] == "aborted" and log["decisions"][0]["actor"].startswith("pause timeout")
    assert world.cluster.calls[-2:] == [("argoproj.io", "rollouts", "get"), ("argoproj.io", "analysisruns", "list")]
    assert world.rollout()["status"]["abort"] is True
    assert now[0] >= load_spec(RELEASE).rollout.analysis.pause_timeout_s


def test_rollback_undoes_the_rollout_then_moves_the_aliases(world: World) -> None:
    """GIVEN v2 promoted over v1 on the cluster plane WHEN `rollback` runs (the step, environment prod)
    THEN the Rollout's pod template is v1's again (undo), the step waits until the controller reports it Healthy,
    then champion is 1, `previous` is gone and v2 is tagged rolled back; a second rollback is refused;
    a rollback whose target is not the Rollout's previous revision is refused before anything is written."""
    world.released_v1()
    world.deploy("2")
    _walks_to_healthy(world)
    world.canary("2")
    world.promote("2")
    patch = world.cluster.patch_namespaced_custom_object

    def controller_settles(*args: Any) -> Any:
        done = patch(*args)
        world.cluster.controller_writes(rollout_status("Healthy", step=9, canary_weight=0, stable="s7", current="s7"))
        return done

    world.cluster.patch_namespaced_custom_object = controller_settles  # type: ignore[method-assign,assignment]
    inputs = rollback.Inputs(model=NAME, actor="alice", reason="p95 doubled", environment="prod")
    out = rollback.run(inputs, world.plane, world.registry)
    assert (out.from_version, out.to_version) == ("2", "1") and world.serving() == "1"
    assert world.registry.get_alias(NAME, CHAMPION) == "1" and world.registry.get_alias(NAME, PREVIOUS) is None
    assert json.loads(world.client.get_model_version(NAME, "2").tags[ROLLED_BACK_TAG])["actor"] == "alice"
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback.run(inputs, world.plane, world.registry)
    world.registry.move_alias(NAME, PREVIOUS, "3", actor="bob", reason="by hand")  # the Rollout's previous is 2
    calls = len(world.cluster.calls)
    with pytest.raises(RolloutError, match="previous revision 2, so undo cannot reach 3"):
        rollback.run(inputs, world.plane, world.registry)
    assert all(verb != "patch" for _, _, verb in world.cluster.calls[calls:])
    assert set(world.cluster.calls) <= _granted()


def test_the_exit_handler_aborts_a_canary_in_flight_and_undoes_one_that_finished_unpromoted(
    world: World, tmp_path: Path
) -> None:
    """GIVEN v2's canary in flight at 5% WHEN the run fails and the exit handler runs
    THEN it aborts the Rollout (status.abort: all traffic on stable), releases the lease, tags v2 and still writes the
    evidence; GIVEN v2's canary finished (stable) but the run failed before promote WHEN the exit handler runs
    THEN it undoes the Rollout to the champion v1's pod template; another workflow's rollout is left alone."""
    world.released_v1()

    def close(uid: str) -> finalize.Outputs:
        inputs = finalize.Inputs(
            release=RELEASE, workflow_name="golden-8", workflow_uid=uid, workflow_status="Failed",
            reports_dir=tmp_path / "reports", failures='["canary"]',
        )  # fmt: skip
        return finalize.run(inputs, world.registry, world.plane)

    world.deploy("2")
    world.cluster.controller_writes(rollout_status("Progressing", step=3, canary_weight=5, stable="s7"))
    assert close("uid-other").aborted is None and current_lease(world.registry, NAME) is not None
    out = close("uid-2")
    assert out.aborted == "2" and out.evidence_digest.startswith("sha256:")
    assert world.rollout()["status"]["abort"] is True and world.serving() == "2"
    assert current_lease(world.registry, NAME) is None
    assert "workflow golden-8 Failed" in world.client.get_model_version(NAME, "2").tags[CANARY_TAG]
    world.deploy("2")
    world.cluster.controller_writes(SETTLED_V2)
    assert close("uid-2").aborted == "2" and world.serving() == "1"
    assert world.registry.get_alias(NAME, CHAMPION) == "1"
    assert set(world.cluster.calls) <= _granted()


def test_the_steps_pick_the_cluster_plane_where_the_policy_says_kubernetes(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a policy with prod on `plane: kubernetes` and a cluster reachable (recorded)
    WHEN the deploy step's Hera path runs for prod and promote and rollback pick their planes
    THEN deploy writes the Rollout (not a local server), promote finds the cluster plane through the lease's
    environment, rollback (the step and `llmrelease rollback --env`) through its environment; dev gets this
    machine's plane; and a version whose weights are not on S3 is refused in one line naming the fix."""
    policy = yaml.safe_load((REPO / "policy" / "platform-policy.yaml").read_text(encoding="utf-8"))
    policy["environments"]["prod"]["plane"] = "kubernetes"
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "platform-policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    built: list[Any] = []

    def from_cluster(cls: Any, options: Any = None) -> RolloutPlane:
        built.append(options)
        return world.plane

    monkeypatch.setattr(RolloutPlane, "from_cluster", classmethod(from_cluster))
    world.cluster.controller_writes(rollout_status("Healthy", step=12, canary_weight=0, stable="s7", current="s7"))
    out = deploy._run_here(deploy.Inputs(release=RELEASE, version="1", workflow_uid="uid-1", environment="prod"))
    assert out.router_url.startswith("http://demo-qa.models.") and world.serving() == "1"
    assert promote._plane(world.registry, RELEASE) is world.plane and len(built) == 2
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback._run_here(rollback.Inputs(model=NAME, actor="alice", environment="prod"))
    assert len(built) == 3
    from workflows.cli.main import main

    assert main(["rollback", NAME, "--actor", "alice", "--env", "prod"]) == 1  # the CLI's cluster path, same refusal
    assert len(built) == 4 and "nothing to roll back to" in capsys.readouterr().err
    from steps.rollout.serving.factory import release_plane, rollout_plane

    assert rollout_plane("prod") is world.plane and not isinstance(release_plane("dev", world.home), RolloutPlane)
    world.client.create_model_version(NAME, source=(tmp_path / "w").as_uri(), tags={"llmrelease.digest": "sha256:1"})
    with pytest.raises(RolloutError, match="not in an S3 weights store.*LLMRELEASE_S3_BUCKET") as info:
        cluster_release.served_version(world.client, NAME, "4", world.home)
    assert "\n" not in str(info.value)
