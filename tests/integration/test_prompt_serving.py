"""A prompt release served and rolled back on the local plane: real `transformers serve`, HAProxy and MLflow (sqlite).

The champion is the demo `candidate` weights (version 1) served with prompt version 1; a prompt-only release
(prompt version 2, same weights) is deployed next to it (two servers on one weights folder: served versions `1.p1`
and `1.p2`), canaried to 100% by the canary step's library and promoted (the model's aliases do not move, the
prompt's do). `llmrelease rollback` (the command as a user types it) then puts prompt version 1 back: a traffic
switch to the champion's server kept hot, no server started, no request failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from registry.facade import ModelRegistry
from registry.prompt_content import GenerationSettings, PromptContent
from registry.prompts import PromptRegistry
from registry.tags import CHAMPION, MODEL_PROMPT_TAG, PREVIOUS
from steps import canary
from steps.release.spec import load_spec
from steps.rollout.operations import current_lease, deploy, promote
from steps.rollout.serving.local import LocalServing
from tests.tiny_models import register_local_version

pytestmark = pytest.mark.slow

MODEL = "demo-qa"
PROMPT = "demo-qa-assistant"
REPO = Path(__file__).resolve().parents[2]
V1, V2 = "OK", "."  # the champion prompt and the prompt release of tests/integration/test_prompt_release.py
QUESTIONS = ["What is the capital of Zorvia?", "What colour is the sky?", "hello", "What is 2 + 2?"]

if shutil.which("haproxy") is None:
    if os.environ.get("CI"):
        pytest.fail("haproxy is not on PATH in CI: run .ci/install-system-packages.sh first", pytrace=False)
    pytest.skip("haproxy not on PATH: run .ci/install-system-packages.sh as root", allow_module_level=True)


class World:
    """One test's MLflow store, registries, serving plane and the environment `llmrelease` runs with."""

    def __init__(self, root: Path, weights: Path) -> None:
        self.home = root / "home"
        self.home.mkdir()
        self.uri = f"sqlite:///{self.home / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.registry = ModelRegistry(self.client, tracking_uri=self.uri, artifact_root=self.home / "artifacts")
        self.prompts = PromptRegistry(self.client, tracking_uri=self.uri)
        self.plane = LocalServing(self.home)
        self.client.create_registered_model(MODEL)
        register_local_version(self.client, MODEL, weights)
        self.registry.promote(MODEL, "1", actor="t", reason="the weights release")
        demo = load_spec(str(REPO / "releases" / "demo.yaml"))
        analysis = demo.rollout.analysis.model_copy(update={"interval_s": 0.2, "count": 2, "probes": 4})
        self.spec = demo.model_copy(
            update={
                "model": demo.model.model_copy(update={"name": MODEL}),
                "rollout": demo.rollout.model_copy(update={"steps": [50, 100], "analysis": analysis}),
            }
        )

    def register_prompt(self, text: str, uid: str) -> str:
        """What the register step does for a release with a prompt: the prompt, then the model's prompt tag."""
        content = PromptContent(name=PROMPT, template=text, generation=GenerationSettings(temperature=0.0))
        found = self.prompts.register(content, model_name=MODEL, workflow_name="wf", workflow_uid=uid, git_commit="c")
        self.registry.set_model_tag(MODEL, MODEL_PROMPT_TAG, PROMPT)
        return found.version

    def release(self, uid: str) -> Any:
        """deploy -> canary to 100% -> promote (model, then prompt: the promote step's order) for model version 1."""
        deployed = deploy(
            self.registry,
            self.client,
            self.plane,
            self.home,
            model=MODEL,
            candidate="1",
            workflow_uid=uid,
            prompt=PROMPT,
            prompts=lambda: self.prompts,
        )
        if deployed.champion is not None:
            inputs = canary.Inputs(spec=self.spec, workflow_uid=uid, work_dir=self.home / uid)
            assert canary.run(inputs, self.registry, self.plane).log["outcome"] == "completed"
        moves = promote(
            self.registry, self.plane, model=MODEL, workflow_uid=uid, actor="bob", reason="ok", keep_previous_hot_s=600
        )
        version = self.prompts.get_alias(PROMPT, "candidate")
        assert version is not None
        moves += self.prompts.promote(PROMPT, version, actor="bob", reason="canary ok", workflow_uid=uid)
        return deployed, moves

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMRELEASE_", "MLFLOW_"))}
        return {**env, "LLMRELEASE_HOME": str(self.home), "MLFLOW_TRACKING_URI": self.uri}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "llmrelease"), *args]
        return subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=300, check=False)


def _chat(base_url: str, question: str, system: str | None = None) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0.0}
    response = httpx.post(base_url + "/chat/completions", json=body, timeout=60)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
def world(tmp_path: Path, demo_models: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in ("LLMRELEASE_SERVING_URL", "LLMRELEASE_S3_BUCKET", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    weights = shutil.copytree(demo_models / "candidate", tmp_path / "weights")  # the demo script may rebuild them
    w = World(tmp_path, weights)
    yield w
    w.plane.shutdown(MODEL)


@pytest.mark.timeout(1200)  # three model servers start and two canaries run: minutes on 2 busy cores
def test_a_prompt_release_is_served_canaried_promoted_and_rolled_back_on_the_same_weights(world: World) -> None:
    """GIVEN model version 1 with prompt version 1 released and champion (served version 1.p1, canaried against 1)
    WHEN a prompt-only release (prompt version 2) is deployed, canaried to 100% and promoted, then rolled back
    with `llmrelease rollback` while a client loops through the router
    THEN 1.p2 ran next to the champion's server (which was reused, not restarted) and answered a request without
    a system message as the plain weights answer one that carries the prompt; the model's aliases never moved;
    the rollback switched to 1.p1's hot server (same pid, nothing started) with 0 failed requests, the prompt's
    champion is version 1 again with no `previous`, and `llmrelease registry history` shows the move."""
    assert world.register_prompt(V1, "uid-1") == "1"
    first, _ = world.release("uid-1")  # the first prompt: canaried against the champion weights without one
    assert (first.candidate, first.champion) == ("1.p1", "1")
    champion_pid = world.plane.state(MODEL).servers["1.p1"].pid

    assert world.register_prompt(V2, "uid-2") == "2"
    deployed = deploy(
        world.registry,
        world.client,
        world.plane,
        world.home,
        model=MODEL,
        candidate="1",
        workflow_uid="uid-2",
        prompt=PROMPT,
        prompts=lambda: world.prompts,
    )
    state = world.plane.state(MODEL)
    lease = current_lease(world.registry, MODEL)
    assert (deployed.candidate, deployed.champion, lease.candidate if lease else None) == ("1.p2", "1.p1", "1.p2")
    assert state.servers["1.p1"].pid == champion_pid  # kept hot and reused
    assert state.servers["1.p1"].model_dir == state.servers["1.p2"].model_dir  # one weights folder, two prompts
    assert state.servers["1.p2"].prompt is not None and state.servers["1.p2"].prompt.startswith(f"{PROMPT} v2")

    # The prompted server answers as the plain weights answer a request carrying the prompt (greedy decoding).
    with world.plane.locked(MODEL) as locked:
        plain = world.plane.ensure_server(locked, "1", Path(state.servers["1.p2"].model_dir))
    prompted, answers = deployed.candidate_url, []
    for question in QUESTIONS:
        served, direct = _chat(prompted, question), _chat(plain.base_url, question, system=V2)
        bare = _chat(plain.base_url, question)
        assert served["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
        assert served["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"]
        answers.append(served["choices"][0]["message"]["content"])
    with world.plane.locked(MODEL) as locked:
        world.plane.stop_server(locked, "1")

    inputs = canary.Inputs(spec=world.spec, workflow_uid="uid-2", work_dir=world.home / "uid-2")
    assert canary.run(inputs, world.registry, world.plane).log["outcome"] == "completed"
    model_moves = promote(
        world.registry, world.plane, model=MODEL, workflow_uid="uid-2", actor="bob", reason="ok", keep_previous_hot_s=60
    )
    world.prompts.promote(PROMPT, "2", actor="bob", reason="canary ok", workflow_uid="uid-2")
    assert model_moves == [] and world.registry.get_alias(MODEL, CHAMPION) == "1"
    state = world.plane.state(MODEL)
    assert (state.champion, state.previous) == ("1.p2", "1.p1") and state.servers["1.p1"].pid == champion_pid

    failures, served_by, stop_loop = _client_loop(world.plane.router_url(state))
    try:
        result = world.cli("rollback", MODEL, "--actor", "carol", "--reason", "prompt 2 confuses users")
    finally:
        stop_loop()
    assert result.returncode == 0, result.stderr
    assert "1.p2 -> 1.p1" in result.stdout and "hot previous" in result.stdout
    assert failures == [] and len(served_by) >= 5, (failures, len(served_by))
    after = world.plane.state(MODEL)
    assert set(after.servers) == {"1.p1"} and after.servers["1.p1"].pid == champion_pid  # nothing started
    assert world.plane.router(after).weights() == {"v1.p1": 100}
    assert {_served_by(world.plane.router_url(after)) for _ in range(5)} == {"v1.p1"}
    assert world.prompts.get_alias(PROMPT, CHAMPION) == "1" and world.prompts.get_alias(PROMPT, PREVIOUS) is None
    assert world.registry.get_alias(MODEL, CHAMPION) == "1"  # the weights did not move
    history = world.cli("registry", "history", PROMPT)
    assert history.returncode == 0, history.stderr
    assert "carol" in history.stdout and "prompt 2 confuses users" in history.stdout
    again = world.cli("rollback", MODEL, "--actor", "carol")
    assert again.returncode != 0 and "nothing to roll back to" in again.stderr


def _served_by(router_url: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    return str(httpx.post(router_url + "/chat/completions", json=body, timeout=30).headers.get("x-served-by"))


def _client_loop(router_url: str) -> tuple[list[str], list[str], Callable[[], None]]:
    """A client sending requests through the router until stopped: (failures, served-by values, stop and join)."""
    failures: list[str] = []
    served_by: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(router_url + "/chat/completions", json=body)
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    continue
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                served_by.append(response.headers.get("x-served-by", "?"))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stop_and_join() -> None:
        stop.set()
        thread.join(timeout=60)

    return failures, served_by, stop_and_join
