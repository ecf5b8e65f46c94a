"""The release spec comes from git at a commit: the golden delivery's onboard and register, through the local runner.

A spec is committed in a temporary git repository at commit A and changed in commit B (another model name and
environment). The rendered golden-delivery's `deliver` DAG, cut after register, runs with the real onboard and
register steps: the `git` input artifact checks out the commit, onboard validates the file there, publishes it as
the `spec` artifact, and the registered version records the commit that was evaluated. The webhook's Sensor,
read from argo/, maps a push of commit B to the parameters that evaluate B.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import SpecError
from steps.release.source import checkout_spec, release_path
from tests.unit.test_onboard import QA, SAFETY, save_model, write_jsonl
from workflows.runner import RunOptions, run_workflow

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
POLICY = {
    "version": "test-1",
    "environments": {
        env: {"licenses": ["apache-2.0"], "models": ["*"], "providers": ["*"]} for env in ("dev", "stage", "prod")
    },
}


def _spec(model: str, environment: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "apiVersion": "llmrelease/v1",
        "name": "tiny",
        "model": {
            "name": model,
            "source": "models/tiny",
            "card": {"license": "apache-2.0", "intended_use": "tests", "constraints": ["tiny"], "owner": "t"},
            "serving": {"target_gpu": {"name": "nvidia-l4", "memory_gib": 24}},
        },
        "evals": {
            "suites": [{"name": "qa", "path": "suites/qa.jsonl"}],
            "safety": {"name": "safety", "path": "suites/safety.jsonl"},
        },
    }
    return {**spec, "environment": environment} if environment else spec


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(repo: Path, spec: dict[str, Any], message: str) -> str:
    (repo / "releases").mkdir(parents=True, exist_ok=True)
    (repo / "releases" / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    _git(repo, "add", "releases/tiny.yaml")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A model root (the steps' working directory: model, suites, policy) and a releases repository: A, then B."""
    root = tmp_path / "root"
    save_model(root / "models" / "tiny")
    write_jsonl(root / "suites" / "qa.jsonl", QA)
    write_jsonl(root / "suites" / "safety.jsonl", SAFETY)
    (root / "policy").mkdir()
    (root / "policy" / "platform-policy.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    repo = tmp_path / "releases-repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    a = _commit(repo, _spec("tiny-a", None), "A")
    a_bytes = (repo / "releases" / "tiny.yaml").read_bytes()
    b = _commit(repo, _spec("tiny-b", "stage"), "B")
    monkeypatch.chdir(root)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"root": root, "repo": repo, "a": a, "b": b, "a_sha256": hashlib.sha256(a_bytes).hexdigest()}


def _onboard_and_register(folder: Path) -> Path:
    """The rendered golden-delivery, its `deliver` DAG cut after register (no exit handler): a Workflow file."""
    spec = yaml.safe_load((ARGO / "golden-delivery.workflowtemplate.yaml").read_text())["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    deliver = templates["deliver"]
    tasks = [t for t in deliver["dag"]["tasks"] if t["name"] in ("onboard", "register")]
    cut = {k: v for k, v in spec.items() if k not in ("onExit", "templates")}
    cut["templates"] = [{**deliver, "dag": {"tasks": tasks}}, templates["onboard"], templates["register"]]
    path = folder / "onboard-register.yaml"
    manifest = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "git-"}}
    path.write_text(yaml.safe_dump({**manifest, "spec": cut}, sort_keys=False), encoding="utf-8")
    return path


def _run(tmp_path: Path, parameters: dict[str, str]) -> tuple[dict[str, dict[str, Any]], Path]:
    result = run_workflow(
        str(_onboard_and_register(tmp_path)),
        RunOptions(runs_dir=tmp_path / "runs", echo=False, parameters=parameters),
        argo_dir=ARGO,
    )
    assert result.phase == "Succeeded", result.tree
    found = {n["displayName"]: n for n in result.status["status"]["nodes"].values()}
    return found, Path(result.run_dir)


def _outputs(node: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in node.get("outputs", {}).get("parameters", [])}


def _published(run_dir: Path, name: str) -> Path:
    """The one file of that name the run's onboard pod published as an artifact."""
    found = [p for p in run_dir.rglob(name) if "onboard" in p.as_posix()]
    assert found, sorted(str(p) for p in run_dir.rglob("*"))[:40]
    return found[0]


def test_a_run_at_commit_a_evaluates_and_records_a_although_b_is_the_head(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """GIVEN releases/tiny.yaml committed at A (model tiny-a) and changed at B (tiny-b, environment stage)
    WHEN onboard and register run with git-repo=that repository, git-commit=A
    THEN A's spec is onboarded (tiny-a, dev), the spec artifact holds A's exact bytes, and the registered version
    records A as its git commit; nothing of B is used."""
    from registry import ModelRegistry

    nodes, run_dir = _run(
        tmp_path, {"git-repo": str(world["repo"]), "git-commit": world["a"], "release": "releases/tiny.yaml"}
    )
    onboard = _outputs(nodes["onboard"])
    assert (onboard["git-commit"], onboard["environment"]) == (world["a"], "dev")
    spec_bytes = _published(run_dir, "release.yaml").read_bytes()
    assert hashlib.sha256(spec_bytes).hexdigest() == world["a_sha256"]
    source = json.loads(_published(run_dir, "spec-source.json").read_text())
    assert source == {
        "repository": str(world["repo"]),
        "path": "releases/tiny.yaml",
        "commit": world["a"],
        "sha256": world["a_sha256"],
        "environment": "dev",
    }
    registry = ModelRegistry.from_env()
    version = _outputs(nodes["register"])["version"]
    tags = registry._client.get_model_version("tiny-a", version).tags  # reading back in a test
    assert tags["llmrelease.git_commit"] == world["a"]
    assert registry.get_alias("tiny-b", "candidate") is None


def test_a_webhook_push_of_b_maps_to_a_run_that_evaluates_b_in_the_specs_environment(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """GIVEN a signed push of commit B (the Sensor in argo/: release, git-commit=body.after, git-repo=clone_url, no
    environment) WHEN its Workflow's parameters run onboard and register THEN B is evaluated (tiny-b) and recorded,
    in the environment B's spec names (stage), not dev."""
    from workflows.events.webhook import Delivery, evaluate, event_data, load_trigger, resolve_workflow

    body = {
        "ref": "refs/heads/main",
        "after": world["b"],
        "deleted": False,
        "repository": {"full_name": "llmrelease/llmrelease", "clone_url": str(world["repo"])},
        "head_commit": {"id": world["b"], "added": [], "removed": [], "modified": ["releases/tiny.yaml"]},
    }
    sensor, _ = load_trigger(ARGO)
    data = event_data(Delivery(body=json.dumps(body).encode(), signature="x", delivery_id="d-1"))
    evaluate(sensor, data)
    workflow = resolve_workflow(sensor, data)
    parameters = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert parameters == {"release": "releases/tiny.yaml", "git-commit": world["b"], "git-repo": str(world["repo"])}

    nodes, _ = _run(tmp_path, parameters)
    onboard = _outputs(nodes["onboard"])
    assert (onboard["git-commit"], onboard["environment"]) == (world["b"], "stage")
    assert _outputs(nodes["register"])["model-name"] == "tiny-b"


def test_a_spec_not_committed_at_the_commit_fails_onboard_in_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    """GIVEN releases/other.yaml only in the working tree of the repository (never committed) WHEN a run asks for it
    THEN onboard fails with one line saying it is not in the repository at that commit, and nothing registers."""
    (world["repo"] / "releases" / "other.yaml").write_text((world["repo"] / "releases" / "tiny.yaml").read_text())
    result = run_workflow(
        str(_onboard_and_register(tmp_path)),
        RunOptions(
            runs_dir=tmp_path / "runs",
            echo=False,
            parameters={"git-repo": str(world["repo"]), "release": "releases/other.yaml"},
        ),
        argo_dir=ARGO,
    )
    assert result.phase == "Failed"
    assert "release releases/other.yaml is not in" in result.tree and "commit it there" in result.tree, result.tree
    phases = {n["displayName"]: n["phase"] for n in result.status["status"]["nodes"].values()}
    assert phases.get("register", "Omitted") in ("Omitted", "Skipped"), phases


@pytest.mark.parametrize(
    "release",
    ["releases/../../etc/passwd.yaml", "/etc/releases/x.yaml", "releases/sub/x.yaml", "../releases/x.yaml", "x/y"],
)
def test_a_release_path_outside_releases_is_refused_in_one_line(release: str, tmp_path: Path) -> None:
    """GIVEN a release path that is absolute, has '..' or a subfolder WHEN checked THEN one line naming the
    parameter and the fix, before anything is read."""
    with pytest.raises(SpecError) as info:
        release_path(release)
    message = str(info.value)
    assert "\n" not in message and message.startswith("parameter release=") and "pass releases/<name>.yaml" in message
    with pytest.raises(SpecError):
        checkout_spec(tmp_path, release)


def test_a_releases_directory_symlinked_out_of_the_checkout_is_refused(tmp_path: Path) -> None:
    """GIVEN a checkout whose releases/ is a symbolic link to a folder outside it WHEN the spec is read THEN one
    line, and the file it points to is not read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.yaml").write_text("apiVersion: llmrelease/v1\n")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "releases").symlink_to(outside)
    with pytest.raises(SpecError) as info:
        checkout_spec(checkout, "releases/x.yaml")
    assert "is a symbolic link" in str(info.value)
