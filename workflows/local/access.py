"""Reaching the local profile from this machine as a pod does: its environment, and models put into its S3 bucket.

`profile_env` is what every step gets from the cluster config `llmrelease local up` wrote (the `llmrelease-config`
ConfigMap and the `llmrelease-s3` and `llmrelease-ray` Secrets), for commands run outside a pod (`llmrelease
local env` prints it as shell `export` lines: `eval "$(llmrelease local env)"`). `upload_model` puts a model
folder at `s3://<bucket>/models/<name>/`, as a user uploads weights before writing `model.source: s3://...` in a
release spec (`llmrelease local upload DIR NAME`): under pod isolation a step sees no folder of this machine.
`commit_releases` writes release specs into a git repository and commits them, the `git-repo` and `git-commit` a
delivery reads its spec from (`make demo` keeps one under `<LLMRELEASE_HOME>/local/releases-repo`).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from workflows.local.config import CONFIG_MAP, RAY_SECRET, S3_SECRET
from workflows.local.services import BUCKET, Layout, LocalProfileError

__all__ = ["commit_releases", "profile_env", "upload_model"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def profile_env(home: Path) -> dict[str, str]:
    """The variables a step of the local profile gets from its ConfigMap and Secrets.

    LLMRELEASE_HOME is left out: the caller keeps its own.

    Raises:
        LocalProfileError: The cluster config is missing (the profile was never started) or lacks the ConfigMap.
    """
    folder = Layout(home).cluster_config
    documents: list[Any] = []
    try:
        for path in sorted(folder.glob("*.yaml")):
            documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        raise LocalProfileError(f"cluster config {folder}: unreadable ({e}); run `llmrelease local up`") from e
    found = {(d.get("kind"), (d.get("metadata") or {}).get("name")): d for d in documents}
    config = found.get(("ConfigMap", CONFIG_MAP))
    if config is None:
        raise LocalProfileError(f"no ConfigMap {CONFIG_MAP} in {folder}: start the profile with `llmrelease local up`")
    env = {str(k): str(v) for k, v in (config.get("data") or {}).items() if k != "LLMRELEASE_HOME"}
    for name in (S3_SECRET, RAY_SECRET):
        secret = found.get(("Secret", name)) or {}
        env.update({str(k): str(v) for k, v in (secret.get("stringData") or {}).items()})
    return env


def upload_model(home: Path, folder: Path, name: str, *, client: Any = None) -> str:
    """Upload every file under `folder` to `s3://<bucket>/models/<name>/` of the running profile; return that URI.

    Objects already there with the same size are kept (a second upload of the demo models copies nothing); the
    onboard step hashes what it downloads, so a changed file of equal size is still caught there.

    Args:
        home: LLMRELEASE_HOME of the profile.
        folder: the model folder (config.json, weights, tokenizer...).
        name: the name under models/ (letters, digits, `._-`, `/` between parts).
        client: a boto3 S3 client; None builds one from the profile's cluster config.

    Raises:
        LocalProfileError: `folder` is not a folder, `name` is not a plain name, or S3 refused an upload.
    """
    if not folder.is_dir():
        raise LocalProfileError(f"model folder {folder} does not exist: build it first (make demo-models)")
    if not _NAME.match(name):
        raise LocalProfileError(f"model name {name!r}: use letters, digits, '.', '_', '-' (and '/' between parts)")
    s3 = client or _client(profile_env(home))
    prefix = f"models/{name}/"
    try:
        stored = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                  Prefix=prefix) for o in page.get("Contents", [])}  # fmt: skip
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            if stored.get(key) != path.stat().st_size:
                s3.upload_file(str(path), BUCKET, key)
    except Exception as e:  # botocore's errors and the transfer manager's: one line
        raise LocalProfileError(
            f"upload of {folder} to s3://{BUCKET}/{prefix} failed ({type(e).__name__}: {str(e)[:200]}): "
            "check `llmrelease local status`"
        ) from e
    return f"s3://{BUCKET}/{prefix.rstrip('/')}"


def _client(env: Mapping[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def commit_releases(repo: Path, specs: Mapping[str, Mapping[str, Any]]) -> str:
    """Write each spec (path in the repository -> spec) into git repository `repo` and commit; return the commit.

    The repository is created when missing; specs equal to the committed ones make no new commit.

    Raises:
        LocalProfileError: git is missing or refused (one line with its message).
    """
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        _git(repo, "init", "-q", "-b", "main")
    for relative, spec in specs.items():
        target = repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(dict(spec), sort_keys=False), encoding="utf-8")
    _git(repo, "add", "-A")
    if _git(repo, "status", "--porcelain").strip():
        _git(repo, "commit", "-q", "-m", f"releases: {', '.join(sorted(specs))}")
    return _git(repo, "rev-parse", "HEAD").strip()


def _git(repo: Path, *args: str) -> str:
    name, email = "llmrelease", "llmrelease@localhost"
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email}
    env |= {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    try:
        done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    except OSError as e:
        raise LocalProfileError(f"git cannot run ({e}): install git (apt-get install git)") from e
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LocalProfileError(f"git {args[0]} in {repo} failed: {why}; fix the repository or remove it")
    return done.stdout
