"""The nightly regression as bubblewrap pods against the local profile, its evals on the profile's Ray cluster.

The champion is delivered as the golden delivery does it up to its evals (onboard, register, batch-eval, safety
under `--isolation bwrap`, the spec from a releases repository at a commit, the weights in the profile's S3) and
promoted through the registry. The rendered nightly-regression then runs under `--isolation bwrap` with the
profile's cluster config: list-champions finds the champion and the commit it was released from, nightly-eval
re-evaluates it with that spec through Ray Client (RAY_ADDRESS=ray://...) and compares it with its promotion-time
evaluation. Helpers (profile, cut workflow, the view of the cluster's GCS) are test_ray_client_bwrap's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_ray_client_bwrap import (
    PROBLEM,
    RELEASE,
    Profile,
    cli,
    client_jobs_since,
    cut_delivery,
    node_outputs,
    pod_seconds,
    ray_view,
    run_bwrap,
    start_profile,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # local up with Ray, a delivery's evals and a nightly on 2 busy cores, local down
    pytest.mark.skipif(PROBLEM is not None, reason=f"bubblewrap cannot run here: {PROBLEM}"),
]


@pytest.fixture
def nightly_profile(tmp_path: Path, demo_models: Path) -> Iterator[Profile]:
    """A profile with Ray for this test; `local down` afterwards."""
    home = tmp_path / "home"
    try:
        yield start_profile(home, demo_models, tmp_path / "releases-repo")
    finally:
        down = cli(home, "local", "down")
        assert down.returncode == 0, down.stderr


def test_nightly_regression_runs_as_isolated_pods_on_the_profiles_ray_cluster(
    nightly_profile: Profile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN demo-qa version 1 delivered up to its evals under `--isolation bwrap` from the releases repository at
    a commit, and promoted champion
    WHEN nightly-regression runs under `--isolation bwrap` with the profile's cluster config
    THEN it succeeds: list-champions names version 1 with that repository and commit (source git), nightly-eval (the
    git one) succeeded, MLflow holds one nightly run of version 1 whose comparisons say the spec came from that
    commit and found a baseline for every suite; and the cluster's GCS shows one new Ray Client job that ran the
    nightly's ShardWorker actors."""
    from registry import ModelRegistry
    from steps.core.tracking import mlflow_client
    from tests.integration.test_nightly import nightly_runs

    profile = nightly_profile
    git = {"git-repo": str(profile.repo), "git-commit": profile.commit}
    monkeypatch.chdir(tmp_path)
    delivered = run_bwrap(profile, str(cut_delivery(tmp_path, evals=True)), tmp_path / "runs", release=RELEASE, **git)
    version = node_outputs(delivered, "register")["version"]
    for key, value in profile.env().items():
        monkeypatch.setenv(key, value)  # this process reaches the profile's MLflow as the pods do
    monkeypatch.setenv("LLMRELEASE_HOME", str(profile.home))
    ModelRegistry.from_env().promote("demo-qa", version, actor="test", reason="nightly under bwrap")
    before = ray_view(profile)

    nightly = run_bwrap(profile, "nightly-regression", tmp_path / "runs", model="demo-qa")
    print(f"\npods: {pod_seconds(nightly)}")

    champions = json.loads(node_outputs(nightly, "list-champions")["champions"])
    assert champions == [
        {
            "model_name": "demo-qa",
            "version": version,
            "release": RELEASE,
            "repository": str(profile.repo),
            "commit": profile.commit,
            "source": "git",
        }
    ]
    phases = {n["displayName"]: n["phase"] for n in nightly.status["status"]["nodes"].values()}
    evals = {name: phase for name, phase in phases.items() if name.startswith("nightly-eval") and "(" in name}
    ran = {name.split("(")[0]: phase for name, phase in evals.items() if phase != "Skipped"}
    assert ran == {"nightly-eval": "Succeeded"}, phases
    [night] = nightly_runs("demo-qa")
    comparisons = _artifact(mlflow_client(), night.info.run_id, "nightly/comparisons.json", tmp_path)
    assert f"spec {RELEASE} at {profile.commit[:12]} in {profile.repo} (as released)" in comparisons["notes"]
    assert not [n for n in comparisons["notes"] if "no baseline" in n], comparisons["notes"]

    after = ray_view(profile)
    jobs = client_jobs_since(before, after)
    assert len(jobs) == 1, jobs  # the nightly-eval pod's Ray Client session
    # Its workers are the warm ones (an earlier delivery's, or created by this session): alive on the cluster's nodes.
    alive = [a for a in after["actors"] if a["cls"] == "ShardWorker" and a["state"] == "ALIVE"]
    assert alive and {a["node"] for a in alive} <= set(after["nodes"]), after["actors"]


def _artifact(client: Any, run_id: str, path: str, folder: Path) -> Any:
    local = client.download_artifacts(run_id, path, str(folder / "downloaded"))
    return json.loads(Path(local).read_text())
