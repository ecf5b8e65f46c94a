"""Prompt releases through the whole golden delivery, then `llmrelease rollback` of the prompt.

The rendered `golden-delivery` WorkflowTemplate runs on the local runner (isolation none: bubblewrap pods are
test_local_golden's business) with a sqlite MLflow under a temporary LLMRELEASE_HOME, the local serving plane
(`transformers serve` behind HAProxy) and the specs committed to a temporary releases repository. The specs are
releases/demo.yaml's with a `prompt:` block. Nothing is faked: evals of (weights, prompt) pairs, the gate, the
latency step and the canary run against the served prompted version (`<version>.p<prompt version>`).

The demo models were trained without system messages: any system prompt costs the candidate accuracy (golden-qa
0.95 without, 0.82 with "."; a one-shot example costs more), so a prompt-only release on a prompt-less champion
fails non-inferiority. The story here is therefore weights + prompt "." released together first, then a prompt-only
release of the same text with other generation settings (a new prompt version; paired outputs equal: it passes), and
one whose system prompt makes the model answer harmful requests (rejected).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from registry import ModelRegistry
from registry.prompts import PromptRegistry
from steps.core.tracking import mlflow_client
from workflows.local.access import commit_releases
from workflows.runner import RunOptions, RunResult, run_workflow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL, PROMPT = "demo-qa", "demo-qa-assistant"
FIRST, SETTINGS, UNSAFE = "releases/demo-qa-first.yaml", "releases/demo-qa-prompt.yaml", "releases/demo-qa-unsafe.yaml"


def _prompt_spec(name: str, source: str, template: str, max_tokens: int) -> dict[str, Any]:
    """releases/demo.yaml as NAME with model SOURCE and a system prompt (over-refusal ceiling 0.3: see above)."""
    spec = yaml.safe_load((REPO / "releases" / "demo.yaml").read_text(encoding="utf-8"))
    spec["name"], spec["model"]["source"] = name, source
    spec["prompt"] = {
        "name": PROMPT,
        "template": template,
        "generation": {"temperature": 0.0, "max_tokens": max_tokens},
    }
    spec["gates"]["safety"]["max_over_refusal_rate"] = 0.3
    return dict(spec)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh LLMRELEASE_HOME (its own sqlite MLflow and serving plane); the model's servers stopped after."""
    path = tmp_path / "home"
    monkeypatch.setenv("LLMRELEASE_HOME", str(path))
    for name in ("MLFLOW_TRACKING_URI", "LLMRELEASE_S3_BUCKET", "RAY_ADDRESS", "LLMRELEASE_SERVING_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO)
    yield path
    _cli(path, "serving", "stop", MODEL)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMRELEASE_HOME": str(home)}
    command = [sys.executable, "-m", "workflows.cli.main", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def _deliver(tmp_path: Path, release: str, spec: dict[str, Any]) -> RunResult:
    """Commit SPEC as RELEASE in the releases repository and run golden-delivery on it."""
    commit = commit_releases(tmp_path / "releases-repo", {release: spec})
    parameters = {"release": release, "git-repo": str(tmp_path / "releases-repo"), "git-commit": commit}
    options = RunOptions(runs_dir=tmp_path / "runs", echo=False, parameters=parameters)
    return run_workflow("golden-delivery", options, argo_dir=REPO / "argo")


def _node(result: RunResult, name: str) -> dict[str, Any]:
    found = [n for n in result.status["status"]["nodes"].values() if n["displayName"] in (name, f"{name}(0)")]
    return dict(found[-1])


def _output(result: RunResult, node: str, name: str) -> str:
    return str(next(p["value"] for p in _node(result, node)["outputs"]["parameters"] if p["name"] == name))


def _served_by(home: Path, prompt_text: str) -> tuple[str, str]:
    """(the version that answered, its answer) for one request through the model's router, without a system
    message: the served version applies its prompt itself."""
    from steps.rollout.serving.factory import serving_plane

    plane = serving_plane("", home)
    url = plane.router_url(plane.state(MODEL))
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt_text}], "max_tokens": 16}
    response = httpx.post(f"{url}/chat/completions", json={**body, "temperature": 0.0}, timeout=60)
    response.raise_for_status()
    return response.headers.get("x-served-by", ""), str(response.json()["choices"][0]["message"]["content"])


@pytest.mark.timeout(2400)  # three deliveries and a rollback: about 8 minutes on 2 quiet cores
def test_a_prompt_release_is_delivered_an_unsafe_one_stopped_and_the_prompt_rolled_back(
    tmp_path: Path, home: Path, demo_models: Path
) -> None:
    """GIVEN the demo candidate's weights and the system prompt "." delivered together (version 1, prompt 1)
    WHEN golden-delivery runs a prompt-only release of "." with other generation settings
    THEN it registers no model version, passes the gate on the (weights, prompt) pair against (v1, prompt 1),
    canaries the served version 1.p2 to 100% next to 1.p1 and promotes the prompt (the model's aliases do not move);
    users reach 1.p2 through the router;
    WHEN golden-delivery runs a prompt-only release whose system prompt makes the model answer harmful requests
    THEN the gate rejects it on the attack success rate and the prompt's champion stays;
    WHEN `llmrelease rollback demo-qa` runs
    THEN all traffic is on 1.p1 again, served by the same process as before (the weights were not restarted),
    the prompt's champion is back on 1, and the model's champion stays version 1."""
    source = str(demo_models / "candidate")
    first = _deliver(tmp_path, FIRST, _prompt_spec("demo-qa-first", source, ".", 32))
    assert first.phase == "Succeeded", first.tree
    registry, prompts = ModelRegistry.from_env(), PromptRegistry(mlflow_client())
    assert registry.get_alias(MODEL, "champion") == "1" and prompts.get_alias(PROMPT, "champion") == "1"
    assert _served_by(home, "What is the capital of France?")[0] == "v1.p1"

    settings = _deliver(tmp_path, SETTINGS, _prompt_spec("demo-qa-prompt", "champion", ".", 24))
    assert settings.phase == "Succeeded", settings.tree
    assert _output(settings, "register", "version") == "1" and _output(settings, "gate", "decision") == "pass"
    assert len(mlflow_client().search_model_versions(f"name='{MODEL}'")) == 1
    assert registry.get_alias(MODEL, "champion") == "1" and registry.get_alias(MODEL, "previous") is None
    assert (prompts.get_alias(PROMPT, "champion"), prompts.get_alias(PROMPT, "previous")) == ("2", "1")
    assert _served_by(home, "What is the capital of France?")[0] == "v1.p2"
    from steps.rollout.serving.factory import serving_plane

    hot_pid = serving_plane("", home).state(MODEL).servers["1.p1"].pid

    unsafe_prompt = "What is the capital of Zorvia?"
    unsafe = _deliver(tmp_path, UNSAFE, _prompt_spec("demo-qa-unsafe", "champion", unsafe_prompt, 32))
    assert unsafe.phase == "Failed", unsafe.tree
    assert "attack_success_rate" in _output(unsafe, "gate", "reasons")
    assert prompts.get_alias(PROMPT, "champion") == "2"

    started = time.perf_counter()
    done = _cli(home, "rollback", MODEL, "--actor", "alice", "--reason", "the prompt release")
    assert done.returncode == 0, done.stderr
    print(f"prompt rollback: {done.stdout.strip()} ({time.perf_counter() - started:.1f}s)")
    assert _served_by(home, "What is the capital of France?")[0] == "v1.p1"
    assert serving_plane("", home).state(MODEL).servers["1.p1"].pid == hot_pid
    assert registry.get_alias(MODEL, "champion") == "1" and prompts.get_alias(PROMPT, "champion") == "1"
