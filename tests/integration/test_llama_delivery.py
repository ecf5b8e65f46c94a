"""A Llama-architecture model with Llama 3's chat template through the whole golden delivery, and its latency gate.

The rendered `golden-delivery` WorkflowTemplate runs on the local runner (isolation none: bubblewrap pods are
test_local_golden's business) with a sqlite MLflow under a temporary LLMRELEASE_HOME, the local serving plane
(`transformers serve` behind HAProxy) and the specs committed to a temporary releases repository. The models are
the demo models (examples/build_demo_models.py): the champion first, then candidate-llama with
releases/demo-llama.yaml. Nothing is faked: the evals, the gate, the latency step's load and capacity search and the
canary all run against the real served Llama.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry import ModelRegistry
from workflows.local.access import commit_releases
from workflows.runner import RunOptions, RunResult, run_workflow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "demo-qa"
CHAMPION, LLAMA = "releases/demo-champion.yaml", "releases/demo-llama.yaml"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh LLMRELEASE_HOME (its own sqlite MLflow and serving plane); the model's servers stopped after."""
    path = tmp_path / "home"
    monkeypatch.setenv("LLMRELEASE_HOME", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO)
    yield path
    env = {**os.environ, "LLMRELEASE_HOME": str(path)}
    stop = [sys.executable, "-m", "workflows.cli.main", "serving", "stop", MODEL]
    subprocess.run(stop, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def _spec(release: str, source: Path, **load: Any) -> dict[str, Any]:
    """The committed spec of RELEASE with its model read from SOURCE, and `load` fields replacing the required
    load's (rate and concurrency go together: setting one unsets the other)."""
    spec = yaml.safe_load((REPO / release).read_text(encoding="utf-8"))
    spec["model"]["source"] = str(source)
    if load:
        required = {k: v for k, v in spec["gates"]["latency"]["load"].items() if k not in ("rate", "concurrency")}
        spec["gates"]["latency"]["load"] = {**required, **load}
    return dict(spec)


def _deliver(tmp_path: Path, release: str, spec: dict[str, Any]) -> tuple[RunResult, float]:
    """Commit SPEC as RELEASE in the releases repository and run golden-delivery on it; (result, wall seconds)."""
    repo = tmp_path / "releases-repo"
    commit = commit_releases(repo, {release: spec})
    parameters = {"release": release, "git-repo": str(repo), "git-commit": commit}
    options = RunOptions(runs_dir=tmp_path / "runs", echo=False, parameters=parameters)
    started = time.perf_counter()
    result = run_workflow("golden-delivery", options, argo_dir=REPO / "argo")
    return result, time.perf_counter() - started


def _node(result: RunResult, name: str) -> dict[str, Any]:
    found = [n for n in result.status["status"]["nodes"].values() if n["displayName"] in (name, f"{name}(0)")]
    return dict(found[-1])


def _output(result: RunResult, node: str, name: str) -> str:
    return str(next(p["value"] for p in _node(result, node)["outputs"]["parameters"] if p["name"] == name))


def _latency_report(result: RunResult) -> dict[str, Any]:
    return dict(json.loads(Path(_output(result, "latency", "report-path")).read_text()))


@pytest.mark.timeout(1800)  # three deliveries: about 6 minutes on 2 quiet cores, much more on a busy machine
def test_a_llama_with_a_chat_template_is_delivered_then_refused_a_load_over_its_capacity(
    tmp_path: Path, home: Path, demo_models: Path
) -> None:
    """GIVEN the demo champion promoted by a golden delivery
    WHEN golden-delivery runs releases/demo-llama.yaml (candidate-llama: LlamaForCausalLM, Llama 3 chat template)
    THEN it is promoted: the champion alias is on its version, the previous champion kept, the latency report gives
    the required load held and a measured capacity;
    WHEN the same spec runs again requiring 16 times the concurrent clients that capacity serves within the SLO
    (Little's law: capacity x p95 SLO; 16 as the open-loop search under-reports a busy machine's capacity, its
    client lagging first)
    THEN the latency step fails it and reject-latency stops the workflow with the capacity measured in this run in
    the reason, and no champion alias moves.

    The load it cannot hold is closed-loop on purpose: its capacity search starts from the req/s the endpoint
    served under it and halves from there, so the probes stay near the real capacity; a rate far over it would
    probe rates where the load client on this busy 2-core machine lags behind its own schedule (the search then
    stops without a capacity, as steps/rollout/capacity.py says)."""
    llama_dir = demo_models / "candidate-llama"
    assert json.loads((llama_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    first, _ = _deliver(tmp_path, CHAMPION, _spec(CHAMPION, demo_models / "champion"))
    assert first.phase == "Succeeded", first.tree
    registry = ModelRegistry.from_env()
    assert registry.get_alias(MODEL, "champion") == "1"

    held, wall_s = _deliver(tmp_path, LLAMA, _spec(LLAMA, llama_dir))
    assert held.phase == "Succeeded", held.tree
    version = _output(held, "register", "version")
    assert version == "2" and _output(held, "gate", "decision") == "pass"
    assert (registry.get_alias(MODEL, "champion"), registry.get_alias(MODEL, "previous")) == (version, "1")
    report = _latency_report(held)
    assert report["verdict"] == "pass" and report["spec"]["rate"] == 2.0, report["reasons"]
    capacity = report["capacity"]["capacity_req_per_s"]
    assert capacity is not None and capacity >= 2.0, report["capacity"]
    print(f"llama delivery: {wall_s:.0f} s wall, capacity {capacity:.3g} req/s ({report['capacity']['stopped']})")

    moves = len(registry.history(MODEL))
    clients = math.ceil(16 * capacity * report["slo"]["p95_e2e_ms"] / 1000)
    over, _ = _deliver(tmp_path, LLAMA, _spec(LLAMA, llama_dir, concurrency=clients))
    assert over.phase == "Failed", over.tree
    latency = _latency_report(over)
    assert latency["verdict"] == "fail" and latency["spec"]["concurrency"] == clients, latency["reasons"]
    measured = latency["capacity"]["capacity_req_per_s"]
    assert measured is not None, latency["capacity"]
    assert _node(over, "reject-latency")["message"].startswith("exit code 1: gate rejected demo-qa version 2: latency")
    reason = _output(over, "latency", "summary")  # the reasons reject-latency tags the version with (in full)
    assert f"above the measured capacity of {measured:.3g} req/s" in reason, reason
    assert any(f"above the measured capacity of {measured:.3g} req/s" in r for r in latency["reasons"])
    assert _node(over, "promote")["phase"] in ("Skipped", "Omitted")
    assert registry.get_alias(MODEL, "champion") == version
    assert [m for m in registry.history(MODEL)[moves:] if m.alias == "champion"] == []
