"""The golden delivery against the local profile's services, as the pods of a cluster reach theirs: through the
`llmrelease-config` ConfigMap, the Secrets and the `artifact-repositories` ConfigMap that `llmrelease local up`
writes (`--cluster-config`), not through this machine's environment.

Real services only: `llmrelease local up --no-ray` (an MLflow tracking server whose artifacts go to moto's S3
server, Pushgateway, Prometheus), the local runner, the demo models, `transformers serve` and HAProxy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml

from steps.core.images import STEPS_IMAGE
from workflows.local.access import commit_releases
from workflows.pipelines.controls import CONFIG_MAP as CONFIG
from workflows.runner import RunOptions, run_workflow
from workflows.runner.sandbox import bwrap_problem

REPO = Path(__file__).resolve().parents[2]


def _cli(home: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMRELEASE_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "workflows.cli.main", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_golden_delivery_registers_in_the_profiles_mlflow_and_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_models: Path
) -> None:
    """GIVEN `llmrelease local up --no-ray` and no MLflow address in this process's environment
    WHEN golden-delivery runs releases/demo-champion.yaml with the profile's cluster config
    THEN it succeeds; the version is registered on the profile's MLflow server, its weights sit once in the
    profile's S3 bucket at their digest-addressed store location (its source; no copy in MLflow's artifacts), the
    run's step artifacts went to the bucket too, the steps served
    through the profile's serving plane service (LLMRELEASE_SERVING_URL), and `down` stops all."""
    home = tmp_path / "home"
    up = _cli(home, "local", "up", "--no-ray", "--json")
    try:
        assert up.returncode == 0, up.stderr
        monkeypatch.setenv("LLMRELEASE_HOME", str(home))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.chdir(REPO)
        cluster = home / "local" / "cluster-config"
        options = RunOptions(
            runs_dir=tmp_path / "runs",
            echo=False,
            cluster_config=cluster,
            parameters={"release": "releases/demo-champion.yaml", "git-repo": str(REPO)},  # the committed spec
        )
        result = run_workflow("golden-delivery", options, argo_dir=REPO / "argo")
        assert result.phase == "Succeeded", result.tree

        docs = _yaml_docs(cluster)
        config = next(d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == CONFIG)
        found = httpx.get(
            f"{config['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/get", params={"name": "demo-qa"}
        )
        assert found.status_code == 200, found.text
        aliases = {a["alias"]: a["version"] for a in found.json()["registered_model"].get("aliases", [])}
        assert aliases.get("champion") == "1"

        # the steps served through the profile's plane service: it holds the state, its router lists the model
        plane = httpx.get(f"{config['LLMRELEASE_SERVING_URL']}/v1/planes/demo-qa/state", timeout=10).json()
        assert plane["champion"] == "1" and plane["router_port"], plane
        listed = httpx.get(f"http://127.0.0.1:{plane['router_port']}/v1/models", timeout=10).json()
        assert [m["id"] for m in listed["data"]] == ["demo-qa"]

        secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        keys = secrets["llmrelease-s3"].get("stringData") or {}
        s3 = boto3.client(
            "s3",
            endpoint_url=config["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        objects = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="llmrelease-local")
                   for o in page.get("Contents", [])]  # fmt: skip
        version = httpx.get(
            f"{config['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/model-versions/get",
            params={"name": "demo-qa", "version": "1"},
        ).json()["model_version"]
        digest = next(t["value"] for t in version["tags"] if t["key"] == "llmrelease.digest")
        location = f"weights/sha256/{digest.removeprefix('sha256:')}"  # the digest-addressed weights store
        assert version["source"] == f"s3://llmrelease-local/{location}", version
        assert f"{location}/manifest.json" in objects and f"{location}/files/model.safetensors" in objects
        assert not any(k.startswith("mlartifacts/") and k.endswith("model.safetensors") for k in objects)
        assert any(k.startswith("argo/") for k in objects), objects[:20]
    finally:
        _cli(home, "serving", "stop", "demo-qa")
        down = _cli(home, "local", "down")
    assert down.returncode == 0, down.stderr


def _yaml_docs(folder: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


PROBLEM = bwrap_problem()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two deliveries and a rollback: about 10 minutes on 2 busy cores
@pytest.mark.skipif(PROBLEM is not None, reason=f"bubblewrap cannot run here: {PROBLEM}")
def test_golden_delivery_and_rollback_run_as_isolated_pods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_models: Path
) -> None:
    """GIVEN `llmrelease local up --no-ray`, the demo models uploaded to its S3 (`llmrelease local upload`) and a
    releases repository in a temp folder whose specs name them by s3:// URI
    WHEN golden-delivery runs under `--isolation bwrap` for the champion, then for the better candidate, then the
    rollback template
    THEN all three succeed with the spec from that repository at its commit: version 2 was promoted and the
    rollback put version 1 back (champion 1, previous unset), both versions' sources are store URIs; and a pod
    started afterwards finds neither the delivery's files in its /tmp nor the checkout or the demo models."""
    home = tmp_path / "home"
    up = _cli(home, "local", "up", "--no-ray", "--json")
    try:
        assert up.returncode == 0, up.stderr
        sources = {}
        for folder in ("champion", "candidate"):
            done = _cli(home, "local", "upload", str(demo_models / folder), f"demo-qa/{folder}")
            assert done.returncode == 0, done.stderr
            sources[folder] = done.stdout.strip()
        assert sources["candidate"] == "s3://llmrelease-local/models/demo-qa/candidate"
        specs = {}
        for release, folder in (("releases/demo-champion.yaml", "champion"), ("releases/demo.yaml", "candidate")):
            spec = yaml.safe_load((REPO / release).read_text())
            specs[release] = {**spec, "model": {**spec["model"], "source": sources[folder]}}
        repo = tmp_path / "releases-repo"
        commit = commit_releases(repo, specs)
        monkeypatch.setenv("LLMRELEASE_HOME", str(home))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.chdir(tmp_path)  # nothing of the checkout is reachable through the working directory either
        cluster = home / "local" / "cluster-config"

        def run(template: str, **parameters: str) -> Any:
            options = RunOptions(
                runs_dir=tmp_path / "runs", echo=False, cluster_config=cluster, isolation="bwrap", parameters=parameters
            )
            result = run_workflow(template, options, argo_dir=REPO / "argo")
            assert result.phase == "Succeeded", result.tree
            return result

        git = {"git-repo": str(repo), "git-commit": commit}
        first = run("golden-delivery", release="releases/demo-champion.yaml", **git)
        run("golden-delivery", release="releases/demo.yaml", **git)
        docs = _yaml_docs(cluster)
        config = next(d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == CONFIG)
        assert (_aliases(config).get("champion"), _aliases(config).get("previous")) == ("2", "1")
        run("rollback", model="demo-qa", actor="test", reason="bwrap rollback")
        assert (_aliases(config).get("champion"), _aliases(config).get("previous")) == ("1", None)
        for version in ("1", "2"):
            assert _version(config, version)["source"].startswith("s3://llmrelease-local/weights/sha256/")
        evaluated = _node_output(first, "onboard", "record-path")
        assert evaluated.startswith("/tmp/"), evaluated  # a path of the onboard pod's own /tmp
        probe = _probe_workflow(tmp_path, [evaluated, "/tmp/llmrelease", "/app/examples", str(REPO / "examples")])
        looked = run_workflow(str(probe), RunOptions(runs_dir=tmp_path / "runs", echo=False, cluster_config=cluster,
                                                     isolation="bwrap"), argo_dir=REPO / "argo")  # fmt: skip
        assert looked.phase == "Succeeded", looked.tree
        assert _node_result(looked, "look").split() == ["absent"] * 4
    finally:
        _cli(home, "serving", "stop", "demo-qa")
        down = _cli(home, "local", "down")
    assert down.returncode == 0, down.stderr


def _aliases(config: dict[str, str]) -> dict[str, str]:
    found = httpx.get(
        f"{config['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/get", params={"name": "demo-qa"}
    ).json()
    return {a["alias"]: a["version"] for a in found["registered_model"].get("aliases", [])}


def _version(config: dict[str, str], version: str) -> dict[str, Any]:
    got = httpx.get(
        f"{config['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/model-versions/get",
        params={"name": "demo-qa", "version": version},
    )
    return dict(got.json()["model_version"])


def _nodes(result: Any) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


def _node_output(result: Any, node: str, name: str) -> str:
    parameters = _nodes(result)[node]["outputs"]["parameters"]
    return str(next(p["value"] for p in parameters if p["name"] == name))


def _node_result(result: Any, node: str) -> str:
    return str(_nodes(result)[node]["outputs"]["result"])


def _probe_workflow(folder: Path, paths: list[str]) -> Path:
    """A one-pod workflow of the steps image (with the profile's ConfigMap) that says, per path, whether it exists."""
    checks = "; ".join(f"test -e {p} && echo present || echo absent" for p in paths)
    template = {
        "name": "look",
        "container": {
            "image": STEPS_IMAGE,
            "command": ["sh", "-c", checks],
            "envFrom": [{"configMapRef": {"name": CONFIG}}],
        },
    }
    main = {"name": "main", "steps": [[{"name": "look", "template": "look"}]]}
    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "probe-"},
        "spec": {"entrypoint": "main", "templates": [main, template]},
    }
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
