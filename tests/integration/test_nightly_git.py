"""The nightly regression evaluates a champion with the spec it was released with: from git, at its commit.

A release spec is committed in a temporary releases repository at commit A; the rendered golden-delivery's onboard
and register (the `deliver` DAG cut after register) deliver it, and the version is promoted. The repository then
moves on to commit B, which changes the spec's suites, and the working directory (what the steps image would hold)
has a third copy with other suites again. The rendered nightly-regression, run by the local runner with real
MLflow, Ray and a tiny GPT-2, evaluates the champion with A's suites: not B's, not the image's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_nightly import CHAT_TEMPLATE, CORPUS, nightly_runs, write_suites
from tests.integration.test_spec_from_git import POLICY, _onboard_and_register
from tests.tiny_models import build_tiny_gpt2

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
NAME = "nightly-g"
RELEASE = f"releases/{NAME}.yaml"


def _spec(suite: str) -> str:
    """The release spec of nightly-g whose golden suite is named `suite` (and read from suites/<suite>.jsonl)."""
    spec = yaml.safe_load((REPO / "releases" / "demo.yaml").read_text())
    spec["name"] = spec["model"]["name"] = NAME
    spec["model"]["source"] = "models/tiny"
    spec["evals"] = {
        "suites": [{"name": suite, "path": f"suites/{suite}.jsonl"}],
        "safety": {"name": "safety", "path": "suites/safety.jsonl"},
    }
    return yaml.safe_dump(spec, sort_keys=False)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(repo: Path, text: str, message: str) -> str:
    (repo / RELEASE).parent.mkdir(parents=True, exist_ok=True)
    (repo / RELEASE).write_text(text, encoding="utf-8")
    _git(repo, "add", RELEASE)
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The steps' working directory: the tiny model, the suites (golden-a/b/image, safety) and the policy."""
    root = tmp_path / "root"
    build_tiny_gpt2(root / "models" / "tiny", CORPUS, seed=0, n_positions=128, chat_template=CHAT_TEMPLATE)
    quality, safety = write_suites(tmp_path)
    (root / "suites").mkdir()
    for suite in ("golden-a", "golden-b", "golden-image"):
        (root / "suites" / f"{suite}.jsonl").write_text(quality.read_text())
    (root / "suites" / "safety.jsonl").write_text(safety.read_text())
    (root / "policy").mkdir()
    (root / "policy" / "platform-policy.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    monkeypatch.chdir(root)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def _deliver(tmp_path: Path, repo: Path, commit: str) -> str:
    """onboard + register of the rendered golden-delivery at `commit`; the registered version."""
    from workflows.runner import RunOptions, run_workflow

    params = {"git-repo": str(repo), "git-commit": commit, "release": RELEASE}
    result = run_workflow(
        str(_onboard_and_register(tmp_path)),
        RunOptions(runs_dir=tmp_path / "runs", echo=False, parameters=params),
        argo_dir=ARGO,
    )
    assert result.phase == "Succeeded", result.tree
    [register] = [n for n in result.status["status"]["nodes"].values() if n["displayName"] == "register"]
    return next(p["value"] for p in register["outputs"]["parameters"] if p["name"] == "version")


def test_nightly_evaluates_the_champion_with_the_spec_of_its_commit(root: Path, tmp_path: Path) -> None:
    """GIVEN nightly-g delivered from a releases repository at commit A (golden suite golden-a) and promoted, the
    repository then at commit B (golden-b) and the working directory's copy naming golden-image WHEN
    nightly-regression runs THEN the git task evaluates it with A's spec (golden-a metrics only), says where the spec
    came from, and the image task skips it."""
    from registry import ModelRegistry
    from steps.core.tracking import mlflow_client
    from workflows.runner import RunOptions, run_workflow

    repo = tmp_path / "releases-repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    a = _commit(repo, _spec("golden-a"), "A")
    version = _deliver(tmp_path, repo, a)
    registry = ModelRegistry.from_env()
    registry.promote(NAME, version, actor="release-manager", reason="test champion")
    tags = mlflow_client().get_model_version(NAME, version).tags
    assert (tags["llmrelease.spec.repository"], tags["llmrelease.git_commit"]) == (str(repo), a)
    b = _commit(repo, _spec("golden-b"), "B: other suites")
    (root / RELEASE).parent.mkdir()
    (root / RELEASE).write_text(_spec("golden-image"))  # what a steps image built later would hold

    result = run_workflow(
        "nightly-regression",
        RunOptions(parameters={"model": NAME, "eval-shards": "1"}, runs_dir=tmp_path / "runs", echo=False),
        argo_dir=ARGO,
    )

    assert result.phase == "Succeeded", result.tree
    nodes = {n["displayName"]: n for n in result.status["status"]["nodes"].values()}
    [listed] = [n for name, n in nodes.items() if name == "list-champions"]
    [champion] = json.loads(next(p["value"] for p in listed["outputs"]["parameters"] if p["name"] == "champions"))
    assert champion == {
        "model_name": NAME,
        "version": version,
        "release": RELEASE,
        "repository": str(repo),
        "commit": a,
        "source": "git",
    }
    ran = {name: n["phase"] for name, n in nodes.items() if name.startswith("nightly-eval") and "(" in name}
    assert {name.split("(")[0]: phase for name, phase in ran.items() if phase != "Skipped"} == {
        "nightly-eval": "Succeeded"
    }, ran
    assert any(name.startswith("nightly-eval-image(") for name in ran), ran  # there, and skipped
    [night] = nightly_runs(NAME)
    suites = {key.split(".")[0] for key in night.data.metrics}
    assert "golden-a" in suites and not suites & {"golden-b", "golden-image"}, sorted(night.data.metrics)
    comparisons = _artifact(night.info.run_id, "nightly/comparisons.json", tmp_path)
    assert f"spec {RELEASE} at {a[:12]} in {repo} (as released)" in comparisons["notes"]
    assert b != a and _git(repo, "rev-parse", "HEAD") == b


def _artifact(run_id: str, path: str, tmp_path: Path) -> Any:
    from steps.core.tracking import mlflow_client

    local = mlflow_client().download_artifacts(run_id, path, str(tmp_path / "dl"))
    return json.loads(Path(local).read_text())
