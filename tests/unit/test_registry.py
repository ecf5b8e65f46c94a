"""The model-registry facade and the register step, against real MLflow stores (sqlite, one per test)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from registry import AliasMove, ModelRegistry, format_history
from registry.errors import RegistryError, SpecError
from registry.history import alias_at
from registry.integrity import Manifest
from registry.tags import CHAMPION, ONBOARDING_EXPERIMENT
from registry.weights_store import WeightsStore
from steps.core.artifacts import RECORD_IN, ROOT
from steps.core.entry import POD_ROOT_ENV
from steps.core.git import resolve_git_commit
from steps.register import Inputs, describe, run

REPO = Path(__file__).resolve().parents[2]
NAME = "demo-qa"


def make_record(root: Path, payload: bytes = b"weights-v1", name: str = NAME) -> dict[str, Any]:
    """An onboarding record (the JSON the onboard step writes) for a small weights folder under `root`, its
    weights published to the file weights store `<root>/store` as the onboard step publishes them."""
    weights = root / f"weights-{hashlib.sha256(payload).hexdigest()[:8]}"
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "config.json").write_text('{"architecture": "GPT2LMHeadModel"}')
    (weights / "model.safetensors").write_bytes(payload)
    files = [
        {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(weights.iterdir())
    ]
    digest = "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    store = WeightsStore((root / "store").as_uri())
    published = store.publish(weights, Manifest.model_validate({"digest": digest, "files": files}))
    return {
        "name": name,
        "environment": "dev",
        "source_uri": weights.as_uri(),
        "kind": "weights",
        "weights_uri": published.uri,
        "provider": None,
        "digest": digest,
        "files": files,
        "card": {"license": "apache-2.0", "intended_use": "qa demo", "constraints": ["en"], "owner": "ml"},
        "config": {"params": 1000, "context_length": 128, "dtype": "float32", "architecture": "GPT2LMHeadModel"},
        "memory": None,
        "datasets": [],
        "spec_path": "releases/demo.yaml",
        "spec_sha256": "0" * 64,
        "policy_version": "1",
    }


class Store:
    """One test's MLflow store (sqlite + artifact folder under tmp_path) with a facade and a raw client."""

    def __init__(self, root: Path, clock: Any = time.time_ns) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.registry = ModelRegistry(
            self.client, tracking_uri=self.uri, artifact_root=root / "mlartifacts", clock=clock
        )

    def runs(self) -> list[Any]:
        experiment = self.client.get_experiment_by_name(ONBOARDING_EXPERIMENT)
        return [] if experiment is None else list(self.client.search_runs([experiment.experiment_id]))

    def versions(self, name: str = NAME) -> list[Any]:
        return list(self.client.search_model_versions(f"name='{name}'"))

    def register(self, record: dict[str, Any], uid: str = "uid-1") -> Any:
        return self.registry.register(record, workflow_name="golden-delivery", workflow_uid=uid, git_commit="abc123")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would show up here
    return Store(tmp_path)


def test_register_creates_version_one_with_tags_artifacts_and_candidate(store: Store, tmp_path: Path) -> None:
    """GIVEN an onboarding record of local weights and an empty store
    WHEN it is registered
    THEN version 1 exists with every llmrelease tag, its source the weights' store location (no second copy in
    the run's artifacts), the record, card and manifest logged, and `candidate` pointing at it (one history
    entry)."""
    record = make_record(tmp_path)
    result = store.register(record)

    assert (result.name, result.version, result.created) == (NAME, "1", True)
    version = store.client.get_model_version(NAME, "1")
    assert version.tags == {
        "llmrelease.digest": record["digest"],
        "llmrelease.license": "apache-2.0",
        "llmrelease.source_uri": record["source_uri"],
        "llmrelease.git_commit": "abc123",
        "llmrelease.workflow_name": "golden-delivery",
        "llmrelease.workflow_uid": "uid-1",
        "llmrelease.environment": "dev",
    }
    run_dir = tmp_path / "mlartifacts" / result.run_id / "artifacts"
    hex_digest = record["digest"].removeprefix("sha256:")
    assert version.source == f"{(tmp_path / 'store').as_uri()}/weights/sha256/{hex_digest}" == result.source
    assert not (run_dir / "model").exists()
    assert json.loads((run_dir / "onboarding" / "record.json").read_text()) == record
    assert json.loads((run_dir / "onboarding" / "card.json").read_text())["license"] == "apache-2.0"
    assert json.loads((run_dir / "onboarding" / "manifest.json").read_text())["files"] == record["files"]
    run = store.client.get_run(result.run_id)
    assert run.data.params["kind"] == "weights" and run.data.params["config.context_length"] == "128"
    assert store.registry.get_alias(NAME, "candidate") == "1"
    [move] = store.registry.history(NAME)
    assert (move.alias, move.from_version, move.to_version, move.actor) == (
        "candidate",
        None,
        "1",
        "golden-delivery/uid-1",
    )
    assert not (tmp_path / "mlruns").exists()


def test_registering_the_same_digest_again_reuses_the_version(store: Store, tmp_path: Path) -> None:
    """GIVEN a registered record
    WHEN the same record is registered again (a retried step)
    THEN the same version comes back with created=False, and no run, version or alias move is added."""
    record = make_record(tmp_path)
    first = store.register(record)
    runs, versions, moves = len(store.runs()), len(store.versions()), len(store.registry.history(NAME))

    again = store.register(record, uid="uid-2")

    assert (again.version, again.created, again.run_id) == (first.version, False, first.run_id)
    assert (len(store.runs()), len(store.versions()), len(store.registry.history(NAME))) == (runs, versions, moves)
    assert (runs, versions, moves) == (1, 1, 1)


def test_a_second_digest_gets_version_two_and_moves_candidate(store: Store, tmp_path: Path) -> None:
    """GIVEN version 1 registered
    WHEN a record with other weights (another digest) is registered
    THEN it becomes version 2 and `candidate` moves 1 -> 2."""
    store.register(make_record(tmp_path, b"weights-v1"))
    second = store.register(make_record(tmp_path, b"weights-v2"))

    assert (second.version, second.created) == ("2", True)
    assert store.registry.get_alias(NAME, "candidate") == "2"
    last = store.registry.history(NAME)[-1]
    assert (last.alias, last.from_version, last.to_version) == ("candidate", "1", "2")


def test_an_incomplete_run_left_by_a_crash_is_tolerated(store: Store, tmp_path: Path) -> None:
    """GIVEN a run for the digest that a crashed attempt left half-logged (no version, no completion mark)
    WHEN the record is registered
    THEN registration succeeds with a fresh complete run and version 1."""
    record = make_record(tmp_path)
    experiment_id = store.client.create_experiment(ONBOARDING_EXPERIMENT, (tmp_path / "mlartifacts").as_uri())
    store.client.create_run(experiment_id, tags={"llmrelease.digest": record["digest"], "llmrelease.model_name": NAME})

    result = store.register(record)

    assert (result.version, result.created) == ("1", True)
    assert len(store.runs()) == 2 and len(store.versions()) == 1


def test_a_crash_between_run_and_version_reuses_the_complete_run(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN an attempt that logged its run completely, then died before creating the version
    WHEN registration runs again
    THEN it creates version 1 from that run: no second run, no second copy of the weights."""
    record = make_record(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(store.client, "create_model_version", _crash)
        with pytest.raises(RegistryError, match="process killed"):
            store.register(record)
    [orphan] = store.runs()
    assert store.versions() == []

    result = store.register(record)

    assert (result.version, result.created, result.run_id) == ("1", True, orphan.info.run_id)
    assert len(store.runs()) == 1


def _crash(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("process killed")


def test_promote_moves_champion_and_previous_and_records_both(store: Store, tmp_path: Path) -> None:
    """GIVEN versions 1 and 2, version 1 promoted
    WHEN version 2 is promoted
    THEN champion -> 2, previous -> 1, both moves in the history with actor and reason, rollback target is 1."""
    store.register(make_record(tmp_path, b"weights-v1"))
    store.register(make_record(tmp_path, b"weights-v2"))
    store.registry.promote(NAME, "1", actor="alice", reason="first release")

    moves = store.registry.promote(NAME, 2, actor="wf/uid-9", reason="gate passed", workflow_uid="uid-9")

    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [("previous", None, "1"), ("champion", "1", "2")]
    assert store.registry.get_alias(NAME, "champion") == "2"
    assert store.registry.rollback_target(NAME) == "1"
    history = store.registry.history(NAME)
    assert history[-2:] == moves
    assert all(m.actor == "wf/uid-9" and "gate passed" in m.reason and m.workflow_uid == "uid-9" for m in moves)
    assert store.registry.promote(NAME, "2", actor="bob", reason="again") == []
    assert len(store.registry.history(NAME)) == len(history)


def test_history_survives_a_new_client_on_the_same_store(store: Store, tmp_path: Path) -> None:
    """GIVEN alias moves recorded through one client
    WHEN a new MlflowClient (as a restarted process would) reads the same database
    THEN it sees the same history, and `format_history` prints it as a table."""
    store.register(make_record(tmp_path))
    store.registry.promote(NAME, "1", actor="alice", reason="first release")
    before = store.registry.history(NAME)

    fresh = ModelRegistry.from_uri(store.uri, artifact_root=tmp_path / "mlartifacts")

    assert fresh.history(NAME) == before
    table = format_history(fresh.history(NAME)).splitlines()
    assert table[0].split() == ["TIME", "(UTC)", "ALIAS", "FROM", "->", "TO", "ACTOR", "REASON"]
    assert "champion" in table[2] and "- -> 1" in table[2] and "alice" in table[2] and "first release" in table[2]


def test_champion_at_answers_for_a_past_time(tmp_path: Path) -> None:
    """GIVEN version 1 promoted at 10:00 by alice and version 2 at 12:00 by bob (a fixed clock)
    WHEN asking who was champion at 09:00, 11:00 and 13:00
    THEN none, version 1 (moved by alice), version 2 (moved by bob)."""
    day = datetime(2026, 11, 1, tzinfo=UTC)
    ticks = iter(int((day + timedelta(hours=h)).timestamp() * 1e9) for h in (8, 10, 12, 12.5, 13))
    store = Store(tmp_path, clock=lambda: next(ticks))
    store.register(make_record(tmp_path, b"weights-v1"))  # candidate at 08:00
    store.register(make_record(tmp_path, b"weights-v2"))  # candidate at 10:00
    store.registry.move_alias(NAME, "champion", "1", actor="alice", reason="first")  # 12:00
    store.registry.promote(NAME, "2", actor="bob", reason="better")  # previous 12:30, champion 13:00

    moves = store.registry.history(NAME)
    assert alias_at(moves, CHAMPION, day + timedelta(hours=11)) is None
    at_1230 = alias_at(moves, CHAMPION, day + timedelta(hours=12, minutes=45))
    assert at_1230 is not None and (at_1230.to_version, at_1230.actor) == ("1", "alice")
    at_14 = alias_at(moves, CHAMPION, (day + timedelta(hours=14)).replace(tzinfo=None))
    assert at_14 is not None and (at_14.to_version, at_14.from_version, at_14.actor) == ("2", "1", "bob")


@pytest.mark.parametrize("target", ["7", "deleted"])
def test_moving_an_alias_to_a_missing_version_raises_and_records_nothing(
    store: Store, tmp_path: Path, target: str
) -> None:
    """GIVEN version 1 (and, for `deleted`, a version 2 that was deleted)
    WHEN champion is moved to a version that does not exist
    THEN RegistryError names the alias, the model and the fix; no alias is set and no history is added."""
    store.register(make_record(tmp_path, b"weights-v1"))
    if target == "deleted":
        store.register(make_record(tmp_path, b"weights-v2"))
        store.client.delete_model_version(NAME, "2")
        target = "2"
    moves = store.registry.history(NAME)

    with pytest.raises(RegistryError) as caught:
        store.registry.promote(NAME, target, actor="alice", reason="oops")

    message = str(caught.value)
    assert "'champion'" in message and f"{NAME!r}" in message and "pick an existing version" in message
    assert "\n" not in message
    assert store.registry.get_alias(NAME, "champion") is None
    assert store.registry.history(NAME) == moves
    with pytest.raises(RegistryError, match="'note'"):
        store.registry.tag_version(NAME, target, "note", "x")


def test_an_unreachable_tracking_server_fails_fast_with_one_line(tmp_path: Path) -> None:
    """GIVEN a tracking URI on a closed port and retry_seconds=1
    WHEN registering
    THEN RegistryError says the server is unreachable after N tries and how to fix it, within seconds,
    and nothing is written anywhere."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    registry = ModelRegistry(MlflowClient(tracking_uri=uri, registry_uri=uri), tracking_uri=uri, retry_seconds=1)
    started = time.monotonic()

    with pytest.raises(RegistryError) as caught:
        registry.register(make_record(tmp_path / "src"), workflow_name="wf", workflow_uid="u", git_commit="c")

    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server at {uri} unreachable after ")
    assert message.endswith("start it or set MLFLOW_TRACKING_URI") and "\n" not in message
    assert time.monotonic() - started < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_provider_model_is_registered_by_its_uri(store: Store, tmp_path: Path) -> None:
    """GIVEN a provider record (an OpenAI-compatible API, no weights)
    WHEN it is registered
    THEN the version's source is the provider URI and no weights are copied."""
    record = make_record(tmp_path) | {
        "kind": "provider",
        "weights_uri": None,
        "source_uri": "openai://api.example.test/v1/demo-chat",
        "provider": {"base_url": "https://api.example.test/v1", "model": "demo-chat"},
        "files": [],
    }
    result = store.register(record)

    assert result.source == "openai://api.example.test/v1/demo-chat"
    assert not (tmp_path / "mlartifacts" / str(result.run_id) / "artifacts" / "model").exists()


def test_a_malformed_record_is_a_spec_error_naming_the_field(store: Store, tmp_path: Path) -> None:
    """GIVEN a record whose digest is not sha256:<hex>
    WHEN it is registered
    THEN SpecError names the model and the field, and nothing is registered."""
    record = make_record(tmp_path) | {"digest": "md5:abc"}
    with pytest.raises(SpecError, match=r"'demo-qa' is invalid at digest"):
        store.register(record)
    assert store.runs() == []


def test_step_run_reads_the_record_file_and_describes_the_result(store: Store, tmp_path: Path) -> None:
    """GIVEN an onboarding record file
    WHEN the step's pure `run` registers it twice
    THEN the outputs say new, then reused, and the printed line says so."""
    path = tmp_path / "record.json"
    path.write_text(json.dumps(make_record(tmp_path)))
    inputs = Inputs(record_path=str(path), workflow_name="wf", workflow_uid="u", git_commit="c")

    first, second = run(inputs, store.registry), run(inputs, store.registry)

    assert (first.version, first.created, second.created) == ("1", True, False)
    assert describe(first).startswith("registered demo-qa version 1 (sha256:") and describe(first).endswith(", new)")
    assert describe(second).endswith("already registered, reused)")
    assert resolve_git_commit("", cwd=tmp_path) == "unknown"
    assert len(resolve_git_commit("", cwd=REPO)) == 40


def test_hera_runner_entry_writes_output_parameters(tmp_path: Path) -> None:
    """GIVEN an onboarding record as the `record` input artifact (in a pod folder, as the local runner maps it)
    WHEN the Hera runner runs steps.register:register_step (a subprocess, as in the container)
    THEN it prints one line and writes model-name, version and created; without the artifact it exits 2 (a
    SpecError) with one line naming the file."""
    pod = tmp_path / "pod"
    path = in_pod_path(pod, RECORD_IN)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(make_record(tmp_path)))
    env = {
        **os.environ,
        "LLMRELEASE_HOME": str(tmp_path / "home"),
        "hera__outputs_directory": str(tmp_path / "out"),
        POD_ROOT_ENV: str(pod),
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    done = _run_step(tmp_path, env)

    assert done.returncode == 0, done.stderr
    assert "registered demo-qa version 1 (sha256:" in done.stdout
    out = tmp_path / "out" / "parameters"
    assert {p.name: p.read_text() for p in out.iterdir()} == {"model-name": NAME, "version": "1", "created": "true"}
    assert (tmp_path / "home" / "mlflow.db").exists()

    path.unlink()
    bad = _run_step(tmp_path, env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"register: onboarding record {path} not found: run the onboard step first and pass its `record`"
    ]


def in_pod_path(pod: Path, container_path: str) -> Path:
    """Where a pod whose LLMRELEASE_POD_ROOT is `pod` sees `container_path` (a path under ROOT)."""
    return pod / Path(container_path).relative_to(ROOT)


def _run_step(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    params = [
        {"name": "workflow_name", "value": "golden-delivery-x"},
        {"name": "workflow_uid", "value": "uid-1"},
        {"name": "git_commit", "value": ""},
        {"name": "git_repo", "value": ""},
    ]
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(params))
    command = [sys.executable, "-m", "hera.workflows.runner", "-e", "steps.register:register_step", str(params_file)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_alias_move_round_trips_through_its_tag_value() -> None:
    """GIVEN an alias move with a naive time
    WHEN stored as a tag value and read back
    THEN it is equal, in UTC."""
    move = AliasMove(
        name=NAME, alias="champion", from_version=None, to_version="1", when=datetime(2026, 1, 1), actor="a"
    )
    assert AliasMove.model_validate_json(move.to_tag_value()) == move
    assert move.when.tzinfo is UTC
