"""Reaching the local profile from this machine: its pods' environment, models uploaded to its bucket, a releases
repository committed for a delivery.

Real components: the cluster config `write_cluster_config` writes, moto's S3 server reached by boto3, git.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflows.local.access import commit_releases, profile_env, upload_model
from workflows.local.config import write_cluster_config
from workflows.local.services import BUCKET, LocalProfileError

boto3 = pytest.importorskip("boto3")

PORTS = {"s3": 9000, "mlflow": 5000, "pushgateway": 9091, "prometheus": 9090, "serving": 8790}
PORTS |= {"ray": 6379, "ray-client": 10001}
CREDENTIALS = {"s3_access_key": "ak", "s3_secret_key": "sk", "ray_token": "tok"}


def test_the_environment_is_what_the_pods_get_without_the_home(tmp_path: Path) -> None:
    """GIVEN the cluster config `local up` writes WHEN the profile's environment is read THEN it has the ConfigMap's
    addresses and the Secrets' keys, and no LLMRELEASE_HOME (the caller keeps its own)."""
    home = tmp_path / "home"
    write_cluster_config(home / "local" / "cluster-config", PORTS, CREDENTIALS, ray=True)
    env = profile_env(home)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["LLMRELEASE_SERVING_URL"] == "http://127.0.0.1:8790"
    assert env["RAY_ADDRESS"] == "ray://127.0.0.1:10001"  # Ray Client: what a pod can join
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["RAY_AUTH_TOKEN"]) == ("ak", "sk", "tok")
    assert "LLMRELEASE_HOME" not in env


def test_no_cluster_config_is_one_line_saying_to_start_the_profile(tmp_path: Path) -> None:
    """GIVEN a home where the profile never started WHEN its environment is read THEN one line naming `local up`."""
    with pytest.raises(LocalProfileError, match="llmrelease local up"):
        profile_env(tmp_path)


def test_a_model_folder_is_uploaded_once_under_models(tmp_path: Path, moto_endpoint: str) -> None:
    """GIVEN a model folder WHEN it is uploaded twice THEN its files sit under s3://<bucket>/models/<name>/ and the
    second upload copies nothing; a missing folder and a name with '..' are refused in one line."""
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="s"
    )
    s3.create_bucket(Bucket=BUCKET)
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "tokenizer.json").write_text('{"v": 1}')
    uri = upload_model(tmp_path, folder, "demo-qa/champion", client=s3)
    assert uri == f"s3://{BUCKET}/models/demo-qa/champion"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="models/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["models/demo-qa/champion/config.json",
                                                "models/demo-qa/champion/sub/tokenizer.json"]  # fmt: skip
    stamps = {o["Key"]: o["LastModified"] for o in listed}
    (folder / "config.json").write_text('{"changed": true}')  # another size: uploaded again
    upload_model(tmp_path, folder, "demo-qa/champion", client=s3)
    again = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="models/")["Contents"]}
    assert again["models/demo-qa/champion/sub/tokenizer.json"] == stamps["models/demo-qa/champion/sub/tokenizer.json"]
    body = s3.get_object(Bucket=BUCKET, Key="models/demo-qa/champion/config.json")["Body"].read()
    assert body == b'{"changed": true}'
    with pytest.raises(LocalProfileError, match="does not exist"):
        upload_model(tmp_path, tmp_path / "missing", "x", client=s3)
    with pytest.raises(LocalProfileError, match="model name"):
        upload_model(tmp_path, folder, "../x", client=s3)


def test_releases_are_committed_and_an_unchanged_spec_makes_no_commit(tmp_path: Path) -> None:
    """GIVEN specs WHEN committed to a new repository, again unchanged, then changed THEN the first commit holds
    them, the second call returns the same commit, the third a new one whose file has the change."""
    repo = tmp_path / "releases-repo"
    spec: dict[str, Any] = {"name": "demo-qa", "model": {"name": "demo-qa", "source": "s3://b/models/demo-qa/champion"}}
    first = commit_releases(repo, {"releases/demo.yaml": spec})
    assert commit_releases(repo, {"releases/demo.yaml": spec}) == first
    changed = {**spec, "model": {**spec["model"], "source": "s3://b/models/demo-qa/candidate"}}
    second = commit_releases(repo, {"releases/demo.yaml": changed})
    assert second != first
    shown = subprocess.run(["git", "show", f"{second}:releases/demo.yaml"], cwd=repo, capture_output=True, text=True)
    assert yaml.safe_load(shown.stdout) == changed
    old = subprocess.run(["git", "show", f"{first}:releases/demo.yaml"], cwd=repo, capture_output=True, text=True)
    assert yaml.safe_load(old.stdout) == spec
