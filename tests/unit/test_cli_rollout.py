"""`llmrelease rollout get|promote|abort|undo|retry` on the cluster plane, against recorded Kubernetes API behaviour.

No cluster here: `tests/recorded_rollouts.RecordedCluster` answers as the API server does and plays back the
Rollout statuses the Argo Rollouts controller writes. The environment's policy (prod: plane kubernetes) picks the
plane, as it does on a cluster; the local plane's mapping of the same verbs is covered by the integration tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.facade import ModelRegistry
from registry.tags import CHAMPION, PREVIOUS
from steps.release.spec import Rollout
from steps.rollout.serving.cluster import RolloutPlane
from steps.rollout.serving.rollouts import ServedVersion
from tests.recorded_rollouts import RecordedCluster, analysis_run, rollout_status
from workflows.cli.main import main

REPO = Path(__file__).resolve().parents[2]
V7 = ServedVersion("7", "s3://artifacts/models/demo-qa/sha256-77", "vllm/vllm-openai:v0.32.0")
V8 = ServedVersion("8", "s3://artifacts/models/demo-qa/sha256-88", "vllm/vllm-openai:v0.32.0")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecordedCluster:
    """A policy whose prod runs on the cluster plane (in the working directory) and a recorded API behind it."""
    raw = yaml.safe_load((REPO / "policy" / "platform-policy.yaml").read_text(encoding="utf-8"))
    raw["environments"]["prod"]["plane"] = "kubernetes"
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "platform-policy.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMRELEASE_ROLLOUT_TEMPLATE", str(REPO / "infrastructure" / "serving" / "vllm-rollout.yaml"))
    monkeypatch.setenv("LLMRELEASE_VLLM_TEMPLATE", str(REPO / "infrastructure" / "serving" / "vllm.yaml"))
    recorded = RecordedCluster()

    def connect(options: Any = None) -> RolloutPlane:
        return RolloutPlane(recorded, recorded, options, sleep=lambda _: None)

    monkeypatch.setattr(RolloutPlane, "from_cluster", staticmethod(connect))
    plane = connect()
    plane.deploy("demo-qa", V7, Rollout())
    plane.deploy("demo-qa", V8, Rollout())
    return recorded


def test_get_watch_follows_to_degraded_and_exits_1(cluster: RecordedCluster, capsys: Any) -> None:
    """GIVEN a canary that the controller aborts on a failed analysis WHEN `rollout get --watch --env prod`
    THEN every change is printed, then the measurements, and the exit is 1 (Degraded)."""
    cluster.controller_writes(
        rollout_status("Progressing", step=1, canary_weight=1),
        rollout_status("Degraded", step=1, canary_weight=0, abort=True, message="RolloutAborted: metric failed"),
    )
    cluster.add("analysisruns", analysis_run("demo-qa-c-2-1", "demo-qa", "Failed", {"error-rate": [("Failed", "[1]")]}))
    code = main(["rollout", "get", "demo-qa", "--env", "prod", "--watch", "--interval", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Progressing; step 1/12; canary weight 1%" in out and "Degraded; step 1/12" in out
    assert "demo-qa-c-2-1 error-rate: Failed [1]" in out


def test_get_json_promote_abort_retry_undo(
    cluster: RecordedCluster, capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a canary paused on Inconclusive WHEN get --json, promote, abort, retry and undo run against prod
    THEN get reports the pause, and each verb writes what `kubectl argo rollouts` writes; undo waits until the
    Rollout is Healthy on 7, then moves `champion` back in the registry (a real MLflow store)."""
    cluster.controller_writes(rollout_status("Paused", step=3, canary_weight=5, paused_for="InconclusiveAnalysis"))
    assert main(["rollout", "get", "demo-qa", "--env", "prod", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["paused_for"] == ["InconclusiveAnalysis"] and shown["version"] == "8"
    assert main(["rollout", "promote", "demo-qa", "--env", "prod"]) == 0
    assert "pauseConditions" not in cluster.objects[("rollouts", "demo-qa")]["status"]
    assert main(["rollout", "abort", "demo-qa", "--env", "prod"]) == 0
    assert main(["rollout", "retry", "demo-qa", "--env", "prod"]) == 0
    assert cluster.objects[("rollouts", "demo-qa")]["status"]["abort"] is False
    registry = _released_7_then_8(tmp_path, monkeypatch)
    healthy = rollout_status("Healthy", step=12, canary_weight=0, stable="s7", current="s7")
    cluster.controller_writes(*[healthy] * 5)  # read before the undo, then Healthy on 7 once the controller saw it
    assert main(["rollout", "undo", "demo-qa", "--env", "prod", "--actor", "alice"]) == 0
    out = capsys.readouterr().out
    assert "undo to version 7" in out and "champion 8 -> 7" in out
    assert registry.get_alias("demo-qa", CHAMPION) == "7" and registry.get_alias("demo-qa", PREVIOUS) is None


def _released_7_then_8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """A real MLflow registry (sqlite) where demo-qa 7 was champion and 8 was promoted over it."""
    from steps.core.tracking import mlflow_client

    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client, registry = mlflow_client(), ModelRegistry.from_env()
    client.create_registered_model("demo-qa")
    for _ in range(8):
        client.create_model_version("demo-qa", source="s3://artifacts/weights/sha256/" + "7" * 64)
    for version in ("7", "8"):
        registry.promote("demo-qa", version, actor="t", reason="release", workflow_uid=f"uid-{version}")
    return registry


def test_bad_input_is_one_line_and_non_zero(cluster: RecordedCluster, capsys: Any) -> None:
    """GIVEN no Rollout named demo-qb, an environment the policy lacks, retry on a Rollout that is not aborted
    WHEN the commands run THEN each is one line on stderr and a non-zero exit, no traceback."""
    for argv, expected in (
        (["rollout", "abort", "demo-qb", "--env", "prod"], "does not exist"),
        (["rollout", "get", "demo-qa", "--env", "qa"], "qa"),
        (["rollout", "retry", "demo-qa", "--env", "prod"], "not aborted"),
    ):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "Traceback" not in err, (argv, err)
