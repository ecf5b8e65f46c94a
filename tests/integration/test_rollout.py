"""Deploy, canary, promote, abort and rollback on real components: MLflow (sqlite), HAProxy, `transformers serve`.

Every model server here is a real `transformers serve` process serving a tiny GPT-2 built offline; the router is
the Debian haproxy driven through its runtime API; the registry is a real MLflow store per test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from registry.facade import ModelRegistry
from registry.tags import CANARY_TAG, LEASE_TAG, ROLLED_BACK_TAG
from steps import canary
from steps.core.proc import alive
from steps.release.spec import load_spec
from steps.rollout.operations import RolloutError, abort, current_lease, deploy, promote, rollback
from steps.rollout.serving.local import LocalServing, server_name
from tests.tiny_models import build_tiny_gpt2, register_local_version

NAME = "tiny-qa"
REPO = Path(__file__).resolve().parents[2]

if shutil.which("haproxy") is None:
    if os.environ.get("CI"):
        pytest.fail("haproxy is not on PATH in CI: run .ci/install-system-packages.sh first", pytrace=False)
    pytest.skip("haproxy not on PATH: run .ci/install-system-packages.sh as root", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = ["User: what is the capital of Zorvia?\nAssistant: Mora", "User: hello\nAssistant: hi there"] * 20
    return build_tiny_gpt2(
        tmp_path_factory.mktemp("tiny") / "model",
        corpus,
        chat_template="{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:",
    )


class World:
    """One test's registry (two versions of the same tiny weights), serving plane and spec."""

    def __init__(self, root: Path, model_dir: Path) -> None:
        self.home = root / "home"
        uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.registry = ModelRegistry(self.client, tracking_uri=uri, artifact_root=root / "artifacts")
        self.client.create_registered_model(NAME)
        for version in ("1", "2"):  # the same tiny weights, told apart by one file (as two releases would be)
            weights = root / f"weights-v{version}"
            shutil.copytree(model_dir, weights)
            (weights / "release.txt").write_text(version)
            register_local_version(self.client, NAME, weights)
        self.plane = LocalServing(self.home)
        demo = load_spec(str(REPO / "releases" / "demo.yaml"))
        analysis = demo.rollout.analysis.model_copy(update={"interval_s": 0.2, "count": 2, "probes": 6})
        self.spec = demo.model_copy(
            update={
                "model": demo.model.model_copy(update={"name": NAME}),
                "rollout": demo.rollout.model_copy(update={"steps": [5, 50, 100], "analysis": analysis}),
            }
        )

    def deploy(self, version: str, uid: str) -> Any:
        return deploy(
            self.registry, self.client, self.plane, self.home, model=NAME, candidate=version, workflow_uid=uid
        )

    def weights(self) -> dict[str, int]:
        return self.plane.router(self.plane.state(NAME)).weights()

    def served_by(self, n: int = 20) -> list[str]:
        url = self.plane.router_url(self.plane.state(NAME)) + "/chat/completions"
        body = {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        return [httpx.post(url, json=body, timeout=30).headers.get("x-served-by", "?") for _ in range(n)]


@pytest.fixture
def world(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.chdir(tmp_path)
    w = World(tmp_path, tiny_model)
    yield w
    w.plane.shutdown(NAME)


def _first_release(world: World) -> None:
    """Version 1 goes out with no champion to compare with, then becomes champion."""
    world.deploy("1", "uid-1")
    log = canary.run(
        canary.Inputs(spec=world.spec, workflow_uid="uid-1", work_dir=world.home / "c1"), world.registry, world.plane
    ).log
    assert log["outcome"] == "completed"
    promote(
        world.registry,
        world.plane,
        model=NAME,
        workflow_uid="uid-1",
        actor="alice",
        reason="first",
        keep_previous_hot_s=600,
    )


def test_release_goes_to_100_then_rolls_back_in_one_command(world: World) -> None:
    """GIVEN version 1 released and champion
    WHEN version 2 is deployed, canaried 5 -> 50 -> 100 and promoted, then rolled back
    THEN v2 joined at weight 0 next to the hot champion, the canary log shows each step Successful with both
    sides measured, promotion moved champion/previous with the actor and workflow, and the rollback put all
    traffic and the champion alias back on v1, removed `previous` and tagged v2; a second rollback is refused."""
    _first_release(world)
    assert world.registry.get_alias(NAME, "champion") == "1"
    deployed = world.deploy("2", "uid-2")
    assert (deployed.champion, world.weights()) == ("1", {"v1": 100, "v2": 0})
    assert set(world.served_by(10)) == {"v1"}

    log = canary.run(
        canary.Inputs(spec=world.spec, workflow_uid="uid-2", work_dir=world.home / "c2"), world.registry, world.plane
    ).log

    assert [s["weight"] for s in log["steps"]] == [5, 50, 100]
    assert all(s["phase"] == "Successful" for s in log["steps"])
    first = log["steps"][0]["measurements"][0]
    assert first["canary"]["requests"] >= 3 and first["champion"]["requests"] >= 3
    assert (world.home / "c2" / "canary-log.json").is_file()
    assert world.weights() == {"v1": 0, "v2": 100}
    moves = promote(
        world.registry,
        world.plane,
        model=NAME,
        workflow_uid="uid-2",
        actor="bob",
        reason="canary ok",
        keep_previous_hot_s=600,
    )
    assert [(m.alias, m.to_version, m.actor, m.workflow_uid) for m in moves] == [
        ("previous", "1", "bob", "uid-2"),
        ("champion", "2", "bob", "uid-2"),
    ]
    assert current_lease(world.registry, NAME) is None
    assert world.client.get_model_version(NAME, "2").tags[CANARY_TAG] == "completed"
    assert world.plane.state(NAME).servers["1"].hot_until is not None  # previous kept hot

    result = rollback(
        world.plane,
        NAME,
        actor="carol",
        reason="bad answers",
        registry_factory=lambda: world.registry,
        versions_factory=lambda: world.client,
        home=world.home,
    )

    assert (result["from"], result["to"], result["fast"]) == ("2", "1", True)
    assert set(world.served_by(10)) == {"v1"}
    assert world.registry.get_alias(NAME, "champion") == "1"
    assert world.registry.get_alias(NAME, "previous") is None
    assert "carol" in world.client.get_model_version(NAME, "2").tags[ROLLED_BACK_TAG]
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback(
            world.plane,
            NAME,
            actor="carol",
            reason="again",
            registry_factory=lambda: world.registry,
            versions_factory=lambda: world.client,
            home=world.home,
        )
    assert set(world.served_by(5)) == {"v1"}


def test_second_rollout_of_the_same_model_is_refused_and_changes_nothing(world: World) -> None:
    """GIVEN a rollout of version 2 in flight (lease held by workflow uid-2)
    WHEN another workflow deploys version 1 of the same model
    THEN it is refused naming the rollout in flight and how to abort it; lease and weights are unchanged."""
    world.registry.promote(NAME, "1", actor="seed", reason="seed")
    world.deploy("2", "uid-2")
    before = world.weights()

    with pytest.raises(RolloutError, match=r"another rollout of tiny-qa is in flight \(version 2 by workflow uid-2"):
        world.deploy("1", "uid-other")

    lease = current_lease(world.registry, NAME)
    assert lease is not None and lease.workflow_uid == "uid-2"
    assert world.weights() == before


def test_rollback_with_no_previous_is_refused_and_leaves_traffic_alone(world: World) -> None:
    """GIVEN a champion serving 100% and no `previous`
    WHEN `rollback` runs
    THEN it fails with 'nothing to roll back to' and the fix, and neither traffic nor aliases change."""
    _first_release(world)

    with pytest.raises(RolloutError, match=r"nothing to roll back to: tiny-qa has no 'previous'.*registry promote"):
        rollback(
            world.plane,
            NAME,
            actor="dave",
            reason="x",
            registry_factory=lambda: world.registry,
            versions_factory=lambda: world.client,
            home=world.home,
        )

    assert world.weights() == {"v1": 100}
    assert world.registry.get_alias(NAME, "champion") == "1"


def test_rollback_workflow_template_refuses_then_rolls_back(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN the rendered `rollback` WorkflowTemplate run by the local runner on this world's store
    WHEN there is no `previous`  THEN the workflow fails with 'nothing to roll back to';
    WHEN v2 was promoted over v1  THEN it succeeds and all traffic is on v1 again."""
    from workflows.cli.main import main

    monkeypatch.setenv("LLMRELEASE_HOME", str(world.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.registry._uri)  # the test's own store
    _first_release(world)
    argv = [
        "run",
        "rollback",
        "-p",
        f"model={NAME}",
        "-p",
        "actor=erin",
        "--argo-dir",
        str(REPO / "argo"),
        "--runs-dir",
        str(world.home / "runs"),
        "--isolation",
        "none",  # the step reads the test's own MLflow store under tmp, which a bwrap pod does not see
    ]

    assert main(argv) != 0
    assert "nothing to roll back to" in capsys.readouterr().out
    world.deploy("2", "uid-2")
    canary.run(
        canary.Inputs(spec=world.spec, workflow_uid="uid-2", work_dir=world.home / "c2"), world.registry, world.plane
    )
    promote(
        world.registry, world.plane, model=NAME, workflow_uid="uid-2", actor="bob", reason="ok", keep_previous_hot_s=600
    )

    assert main(argv) == 0
    assert set(world.served_by(6)) == {"v1"} and world.registry.get_alias(NAME, "champion") == "1"


def test_canary_killed_during_analysis_aborts_and_no_request_fails_after_the_abort(world: World) -> None:
    """GIVEN version 2 in canary at 50% with user traffic flowing through the router
    WHEN the canary's server is killed during the analysis
    THEN the analysis fails, the canary is aborted (weight 0, all traffic on v1, lease released, version tagged),
    and not one user request sent after the abort fails (requests already in flight to the dead server when it
    died may fail: that is what the analysis caught)."""
    world.registry.promote(NAME, "1", actor="seed", reason="seed")
    world.deploy("2", "uid-2")
    spec = world.spec.model_copy(update={"rollout": world.spec.rollout.model_copy(update={"steps": [50, 100]})})
    canary_pid = world.plane.state(NAME).servers["2"].pid
    results: list[tuple[float, bool]] = []
    stop = threading.Event()

    def users() -> None:
        url = world.plane.router_url(world.plane.state(NAME)) + "/chat/completions"
        body = {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    ok = client.post(url, json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                results.append((sent, ok))

    def kill_then_sleep(seconds: float) -> None:
        if alive(canary_pid):
            os.killpg(canary_pid, signal.SIGKILL)
        time.sleep(seconds)

    traffic = threading.Thread(target=users, daemon=True)
    traffic.start()
    outputs = canary.run(
        canary.Inputs(spec=spec, workflow_uid="uid-2", work_dir=world.home / "c"),
        world.registry,
        world.plane,
        sleep=kill_then_sleep,
    )
    log = outputs.log
    aborted_at = time.monotonic()
    time.sleep(1.5)
    stop.set()
    traffic.join(timeout=15)

    assert log["outcome"] == "aborted" and "error rate" in log["abort_reason"]
    assert outputs.outcome == "aborted" and canary.describe(outputs).startswith(
        "canary: aborted, all traffic back on the champion: analysis "
    )
    assert json.loads(outputs.log_path.read_text()) == log
    assert world.weights() == {"v1": 100}
    assert current_lease(world.registry, NAME) is None
    assert world.client.get_model_version(NAME, "2").tags[CANARY_TAG].startswith("aborted: analysis Failed at ")
    failed_after = [t for t, ok in results if not ok and t > aborted_at]
    assert sum(1 for t, _ in results if t > aborted_at) > 5  # traffic did flow after the abort
    print(f"user requests: {len(results)}, failed before the abort: {sum(1 for t, ok in results if not ok)}")
    assert failed_after == []


def test_exit_handler_abort_restores_the_champion_only_for_its_own_workflow(world: World) -> None:
    """GIVEN a rollout of version 2 by uid-2 stopped at 50%
    WHEN the exit handler of another workflow aborts, then that of uid-2
    THEN the first does nothing; the second puts 100% on v1, removes v2 from the router and stops its server."""
    world.registry.promote(NAME, "1", actor="seed", reason="seed")
    world.deploy("2", "uid-2")
    world.plane.router(world.plane.state(NAME)).set_weights({"v1": 50, "v2": 50})

    assert abort(world.registry, world.plane, model=NAME, workflow_uid="uid-other", reason="x") is None
    assert world.weights() == {"v1": 50, "v2": 50}
    assert abort(world.registry, world.plane, model=NAME, workflow_uid="uid-2", reason="workflow Failed") == "2"

    state = world.plane.state(NAME)
    assert world.weights() == {"v1": 100} and "2" not in state.servers and state.canary is None
    assert set(world.served_by(6)) == {server_name("1")}
    assert LEASE_TAG not in world.registry.model_tags(NAME)


def test_an_aborted_first_release_leaves_nothing_serving_and_deploys_again(world: World) -> None:
    """GIVEN a first release (no champion) deployed and taking all router traffic
    WHEN its workflow fails and the exit handler aborts it
    THEN the router and the server are stopped (nothing served before it, nothing after), the lease is released,
    and a new deploy of the same version starts cleanly with a fresh router."""
    world.deploy("1", "uid-1")
    assert world.weights() == {"v1": 100}

    assert abort(world.registry, world.plane, model=NAME, workflow_uid="uid-1", reason="workflow Failed") == "1"

    state = world.plane.state(NAME)
    assert (state.router_port, state.servers, state.canary) == (None, {}, None)
    assert current_lease(world.registry, NAME) is None
    world.deploy("1", "uid-2")
    assert world.weights() == {"v1": 100} and set(world.served_by(4)) == {"v1"}
