"""The pieces of an artifact that are not the repository: http and git sources, and archives as Argo makes them.

Argo's executor tars an output (gzip) with the path's base name as the single top entry, and on input untars
it so that a single top entry becomes the input path itself; a tarball is detected when the archive is not
said. `http:` artifacts are fetched with httpx (headers, basicAuth from Secrets); `git:` artifacts are cloned
with the `git` command (repo: a URL or a local repository path; revision, depth, branch/singleBranch,
usernameSecret/passwordSecret, sshPrivateKeySecret). Local copies (no repository) are made here too.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError

__all__ = [
    "ArtifactError",
    "SecretLookup",
    "chmod",
    "copy_from",
    "copy_local",
    "fetch_git",
    "fetch_http",
    "pack",
    "remove",
    "unpacked",
]

SecretLookup = Callable[[Mapping[str, Any] | None, str], str | None]


class ArtifactError(WorkflowError):
    """An artifact cannot be loaded or saved (Argo ends the node in Error)."""


def fetch_http(spec: Mapping[str, Any], dest: Path, name: str, secret: SecretLookup) -> Path | None:
    """GET `spec.url` into `dest`; None on 404 (so an optional artifact is skipped).

    Raises:
        ArtifactError: the URL cannot be fetched, answers an error status, or a basicAuth Secret is missing.
    """
    import httpx

    url = str(spec.get("url", ""))
    what = f"artifact {name}"
    headers = {str(h["name"]): str(h.get("value", "")) for h in spec.get("headers", []) or []}
    basic = (spec.get("auth") or {}).get("basicAuth") or {}
    auth = (secret(basic.get("usernameSecret"), what) or "", secret(basic.get("passwordSecret"), what) or "")
    try:
        with httpx.stream(
            "GET", url, headers=headers, auth=auth if basic else None, follow_redirects=True, timeout=60
        ) as resp:
            if resp.status_code == 404:
                return None
            if resp.status_code >= 400:
                raise ArtifactError(f"{what}: GET {url} answered HTTP {resp.status_code}; fix http.url or its auth")
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as e:
        raise ArtifactError(f"{what}: GET {url} failed: {e}; fix http.url") from e
    return dest


def fetch_git(spec: Mapping[str, Any], dest: Path, name: str, secret: SecretLookup) -> Path:
    """Clone `spec.repo` into `dest` and check out `spec.revision` (as Argo's git driver does).

    Raises:
        ArtifactError: the repository does not exist or cannot be cloned, or the revision is not in it.
    """
    repo, what = str(spec.get("repo", "")), f"artifact {name}"
    url = _git_url(repo, what)
    depth = [f"--depth={int(spec['depth'])}"] if spec.get("depth") else []
    clone = ["clone", "-q", *depth]
    if spec.get("singleBranch") and spec.get("branch"):
        clone += ["--single-branch", "--branch", str(spec["branch"])]
    if not spec.get("disableSubmodules"):
        clone.append("--recurse-submodules")
    with tempfile.TemporaryDirectory(prefix="llmrelease-git-") as tmp:
        env, config = _git_auth(spec, Path(tmp), secret, what)
        run = _git_runner(config, env)
        failed = run([*clone, url, str(dest)])
        if failed:
            raise ArtifactError(f"{what}: git repository {repo} cannot be cloned: {failed}")
        revision = str(spec.get("revision") or "")
        if revision and run(["-C", str(dest), "checkout", "-q", revision]):
            failed = run(["-C", str(dest), "fetch", "-q", *depth, "origin", revision]) or run(
                ["-C", str(dest), "checkout", "-q", "FETCH_HEAD"]
            )
            if failed:
                raise ArtifactError(f"{what}: revision {revision} is not in git repository {repo}: {failed}")
    return dest


def _git_url(repo: str, what: str) -> str:
    """A URL as given; a local repository path as a file:// URL (so that --depth applies), if it exists."""
    remote = "://" in repo or (":" in repo.split("/")[0] and "@" in repo.split(":")[0])
    if remote:
        return repo
    path = Path(repo).expanduser()
    if not path.exists():
        raise ArtifactError(f"{what}: git repository {repo} does not exist; give an existing repository path or URL")
    return path.resolve().as_uri()


def _git_auth(spec: Mapping[str, Any], tmp: Path, secret: SecretLookup, what: str) -> tuple[dict[str, str], list[str]]:
    """The environment and `-c` options that carry the artifact's credentials to git (never a prompt)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    config: list[str] = []
    user = secret(spec.get("usernameSecret"), what)
    password = secret(spec.get("passwordSecret"), what)
    if user is not None or password is not None:
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        config = ["-c", f"http.extraHeader=Authorization: Basic {token}"]
    key = secret(spec.get("sshPrivateKeySecret"), what)
    if key is not None:
        key_file = tmp / "id"
        key_file.write_text(key if key.endswith("\n") else key + "\n")
        key_file.chmod(0o600)
        check = "no" if spec.get("insecureIgnoreHostKey") else "yes"
        env["GIT_SSH_COMMAND"] = f"ssh -i {key_file} -o IdentitiesOnly=yes -o StrictHostKeyChecking={check}"
    return env, config


def _git_runner(config: list[str], env: Mapping[str, str]) -> Callable[[list[str]], str]:
    """A function running `git ARGS`: it returns "" on success, else git's last line of stderr."""

    def run(args: list[str]) -> str:
        try:
            proc = subprocess.run(
                ["git", *config, *args], capture_output=True, text=True, env=dict(env), timeout=600, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"git could not run ({e}); install git"
        lines = proc.stderr.strip().splitlines()
        return "" if proc.returncode == 0 else (lines[-1] if lines else f"git exited {proc.returncode}")

    return run


def pack(source: Path, packed: Path, archive: str, level: int) -> None:
    """Archive `source` (file or folder) into `packed`: a gzip'd tar (`tar`, at `level`) or a zip."""
    if archive == "zip":
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in [source, *sorted(source.rglob("*"))] if source.is_dir() else [source]:
                zf.write(path, path.relative_to(source.parent).as_posix())
        return
    with tarfile.open(packed, "w:gz", compresslevel=level) as tf:
        tf.add(source, arcname=source.name)


def unpacked(download: Path | None, dest: Path, archive: str) -> Path | None:
    """Unarchive a downloaded file into `dest` as Argo does: a single top entry becomes `dest` itself.

    `archive` is "tar", "zip", "none", or "" (unknown: a gzip'd tarball is detected and unpacked).

    Raises:
        ArtifactError: the file says it is a tar or zip archive and is not.
    """
    if download is None:
        return None
    is_tar = archive == "tar" or (archive == "" and _is_tarball(download))
    if not is_tar and archive != "zip":
        download.rename(dest)
        return dest
    unpacked_dir = dest.with_suffix(".unpacked")
    unpacked_dir.mkdir()
    try:
        if is_tar:
            with tarfile.open(download, "r:*") as tf:
                tf.extractall(unpacked_dir, filter="data")
        else:
            with zipfile.ZipFile(download) as zf:
                zf.extractall(unpacked_dir)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise ArtifactError(
            f"{download.name}: not a {'tar' if is_tar else 'zip'} archive ({e}); fix its `archive` strategy"
        ) from e
    entries = list(unpacked_dir.iterdir())
    (entries[0] if len(entries) == 1 else unpacked_dir).rename(dest)
    return dest


def copy_local(art: Mapping[str, Any], source: Path, local_dir: Path) -> Path:
    """Today's local behaviour: the output copied into the run's folder (refusing to copy a folder into itself)."""
    stored = local_dir / str(art["name"])
    if stored.resolve().is_relative_to(source.resolve()):
        raise ArtifactError(
            f"output artifact {art['name']}: {art.get('path')} holds the runner's own folder "
            f"({local_dir}); declare a narrower path"
        )
    stored.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, stored)
    return stored


def copy_from(source: Path, dest: Path) -> Path | None:
    """Copy a local artifact (file or folder) to `dest`; None when it does not exist."""
    if not source.exists():
        return None
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest)
    return dest


def remove(path: Path) -> None:
    """Remove a file, link or folder if it is there (an input replaces what the image had at its path)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def chmod(path: Path, mode: int, recurse: bool) -> None:
    """Apply an artifact's `mode` (and `recurseMode`) as Argo's executor does."""
    for item in [path, *path.rglob("*")] if recurse and path.is_dir() else [path]:
        os.chmod(item, mode)


def _is_tarball(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:gz") as tf:
            return tf.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False
