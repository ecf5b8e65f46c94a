"""Evals in bubblewrap pods score their suites on the local profile's Ray cluster, reached through Ray Client.

`llmrelease local up` (with Ray: a head serving Ray Client and a second node, token authentication on) writes
`RAY_ADDRESS=ray://127.0.0.1:<port>` into the ConfigMap. The golden delivery, cut after its two eval pods
(onboard, register, batch-eval and safety), runs under `--isolation bwrap` from a spec committed in a releases
repository, the weights in the profile's S3. The pods have their own /tmp, so they cannot be Ray drivers by the
GCS address: what they join is the head's Ray Client server. The proof is read from Ray's side, in the cluster's
GCS (a driver on this machine joins it by the GCS address): the Ray Client jobs the head started for the pods, and
the eval actors (`ShardWorker`) those jobs ran on the cluster's nodes.

One profile for the module (`local up` with Ray costs ~45-80 s on 2 cores); `local down` at the end.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflows.local.access import commit_releases
from workflows.runner import RunOptions, run_workflow
from workflows.runner.cluster import ClusterConfig
from workflows.runner.sandbox import bwrap_problem

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
RELEASE = "releases/demo-champion.yaml"
PROBLEM = bwrap_problem()
_VIEW_MARK = "llmrelease-test-ray-view"  # names the inspecting driver's own job, to leave it out

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # local up with Ray, two evals on 2 busy cores, local down
    pytest.mark.skipif(PROBLEM is not None, reason=f"bubblewrap cannot run here: {PROBLEM}"),
]


@dataclass(frozen=True)
class Profile:
    """A running local profile with Ray, the champion's weights uploaded and its spec committed."""

    home: Path
    cluster: Path
    repo: Path
    commit: str
    up_s: float

    def env(self) -> dict[str, str]:
        """The ConfigMap and the Secrets a pod gets (for this process's MLflow calls and the Ray view)."""
        config = ClusterConfig.load(self.cluster)
        return {**config.config_map("llmrelease-config"), **config.secret("llmrelease-ray")}

    def gcs_address(self) -> str:
        """The head's GCS address (recorded in the profile's state): for a driver on this machine only."""
        ports = json.loads((self.home / "local" / "state.json").read_text())["ports"]
        return f"127.0.0.1:{ports['ray']}"


def cli(home: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """`llmrelease ARGS` with LLMRELEASE_HOME=home, none of this process's service addresses."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    command = [sys.executable, "-m", "workflows.cli.main", *args]
    env["LLMRELEASE_HOME"] = str(home)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def start_profile(home: Path, demo_models: Path, repo: Path, *up_args: str) -> Profile:
    """`local up` (with Ray unless `--no-ray` in `up_args`), the champion uploaded to its S3, its spec (source:
    that URI) committed in `repo`."""
    started = time.monotonic()
    up = cli(home, "local", "up", "--json", *up_args)
    up_s = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    done = cli(home, "local", "upload", str(demo_models / "champion"), "demo-qa/champion")
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load((REPO / RELEASE).read_text())
    spec["model"]["source"] = done.stdout.strip()
    commit = commit_releases(repo, {RELEASE: spec})
    return Profile(home, home / "local" / "cluster-config", repo, commit, up_s)


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[Profile]:
    """One profile with Ray (without the eval warm-up) for the module; `local down` afterwards."""
    root = tmp_path_factory.mktemp("ray-client")
    home = root / "home"
    try:
        # no warm-up: the eval pods must create the workers themselves, which is what this module proves
        yield start_profile(home, demo_models, root / "releases-repo", "--no-warm-evals")
    finally:
        down = cli(home, "local", "down")
        assert down.returncode == 0, down.stderr


def cut_delivery(folder: Path, *, evals: bool) -> Path:
    """The rendered golden-delivery as a Workflow file, cut after register, or after its two eval pods (`evals`)."""
    spec = yaml.safe_load((ARGO / "golden-delivery.workflowtemplate.yaml").read_text())["spec"]
    templates = {t["name"]: copy.deepcopy(t) for t in spec["templates"]}
    deliver, release = templates["deliver"], templates["release-model"]
    keep = ("onboard", "register", "release") if evals else ("onboard", "register")
    deliver["dag"]["tasks"] = [t for t in deliver["dag"]["tasks"] if t["name"] in keep]
    release["dag"]["tasks"] = [t for t in release["dag"]["tasks"] if t["name"] in ("batch-eval", "safety")]
    names = ["deliver", "onboard", "register", *(["release-model", "batch-eval"] if evals else [])]
    cut = {k: v for k, v in spec.items() if k not in ("onExit", "templates")}
    cut["templates"] = [templates[n] for n in names]
    path = folder / ("deliver-evals.yaml" if evals else "deliver-register.yaml")
    manifest = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "cut-"}}
    path.write_text(yaml.safe_dump({**manifest, "spec": cut}, sort_keys=False), encoding="utf-8")
    return path


def run_bwrap(profile: Profile, workflow: str, runs: Path, **parameters: str) -> Any:
    """Run `workflow` with every pod in bubblewrap and the profile's cluster config; it must succeed."""
    options = RunOptions(
        runs_dir=runs, echo=False, cluster_config=profile.cluster, isolation="bwrap", parameters=parameters
    )
    result = run_workflow(workflow, options, argo_dir=ARGO)
    assert result.phase == "Succeeded", result.tree
    return result


_VIEW = f"""# {_VIEW_MARK}
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], log_to_driver=False)
jobs = [{{"id": j["JobID"], "entrypoint": j.get("Entrypoint", ""), "dead": j["IsDead"]}} for j in state.jobs()]
actors = [{{"cls": a["ActorClassName"], "job": a["JobID"], "node": a["Address"]["NodeID"], "state": a["State"]}}
          for a in state.actors().values()]
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
print(json.dumps({{"jobs": jobs, "actors": actors, "nodes": nodes}}))
"""


def ray_view(profile: Profile) -> dict[str, Any]:
    """What the cluster's GCS knows: jobs (but this view's own), actors (class, job, node), the live nodes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {k: v for k, v in profile.env().items() if k.startswith("RAY_AUTH")}
    done = subprocess.run(
        [sys.executable, "-c", _VIEW, profile.gcs_address()],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    view: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    view["jobs"] = [j for j in view["jobs"] if _VIEW_MARK not in j["entrypoint"]]
    return view


def client_jobs_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, set[str]]:
    """Jobs new since `before`, each a Ray Client session the head ran (else the test fails): job -> nodes of its
    ShardWorker actors."""
    old = {j["id"] for j in before["jobs"]}
    new = [j for j in after["jobs"] if j["id"] not in old]
    for job in new:
        assert "ray.util.client.server" in job["entrypoint"] and "specific-server" in job["entrypoint"], job
    workers = [a for a in after["actors"] if a["cls"] == "ShardWorker"]
    return {j["id"]: {a["node"] for a in workers if a["job"] == j["id"]} for j in new}


def pod_seconds(result: Any) -> dict[str, float]:
    """Each pod's wall time (Argo's one-second resolution), by node name."""
    from datetime import datetime

    def at(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    nodes = result.status["status"]["nodes"].values()
    pods = [n for n in nodes if n.get("type") == "Pod" and n.get("startedAt") and n.get("finishedAt")]
    return {n["displayName"]: (at(n["finishedAt"]) - at(n["startedAt"])).total_seconds() for n in pods}


def node_outputs(result: Any, node: str) -> dict[str, str]:
    """The output parameters of the node named `node`."""
    [found] = [n for n in result.status["status"]["nodes"].values() if n["displayName"] == node]
    return {p["name"]: p["value"] for p in found.get("outputs", {}).get("parameters", [])}


def test_eval_pods_score_on_the_profiles_ray_cluster_through_ray_client(
    profile: Profile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN `local up` with Ray (RAY_ADDRESS=ray://..., token auth) and no eval actor in its cluster yet
    WHEN the golden delivery, cut after batch-eval and safety, runs under `--isolation bwrap` from the committed spec
    THEN it succeeds with both suites scored, and the cluster's GCS shows two new jobs, each a Ray Client session of
    the head, and ShardWorker actors (warm, shared by both pods) created by them on both of the cluster's nodes."""
    assert profile.env()["RAY_ADDRESS"].startswith("ray://127.0.0.1:")
    before = ray_view(profile)
    assert len(before["nodes"]) == 2
    assert not [a for a in before["actors"] if a["cls"] == "ShardWorker"]
    monkeypatch.chdir(tmp_path)  # nothing of the checkout through the working directory

    began = time.monotonic()
    result = run_bwrap(
        profile,
        str(cut_delivery(tmp_path, evals=True)),
        tmp_path / "runs",
        release=RELEASE,
        **{"git-repo": str(profile.repo), "git-commit": profile.commit},
    )
    took = time.monotonic() - began
    print(f"\nlocal up with Ray: {profile.up_s:.1f}s; onboard, register and both evals: {took:.1f}s")
    print(f"pods: {pod_seconds(result)}")

    assert node_outputs(result, "register")["version"] == "1"
    assert node_outputs(result, "batch-eval")["summary"].startswith("golden-qa: accuracy ")
    assert "attack_success_rate" in node_outputs(result, "safety")["summary"]
    after = ray_view(profile)
    jobs = client_jobs_since(before, after)
    assert len(jobs) == 2, after["jobs"]  # one Ray Client session per eval pod
    # The eval workers are warm (named, detached): the first pod to reach the cluster creates them, the other pod
    # uses the same ones, so the actors belong to one session or the other, depending on which came first.
    assert any(jobs.values()), jobs
    assert set().union(*jobs.values()) == set(after["nodes"]), (jobs, after["nodes"])
