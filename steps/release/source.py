"""Where a release spec comes from: a file under `releases/` of a git repository, at a commit.

The golden delivery's onboard step gets the releases repository as an Argo `git` input artifact, checked out at
the workflow's `git-commit` (`RELEASE_REPO_IN`). `checkout_spec` finds `releases/<name>.yaml` in it (the path
confined: relative, directly in `releases/`, no `..`, no symbolic link), validates it, and says which commit was
actually checked out (`git rev-parse HEAD` there). `publish_spec` writes the exact bytes it validated as the
`spec` output artifact and the provenance (`SpecSource`) beside it; every later step reads the spec from that
artifact (`SPEC_IN`), never from a path in its image, so what is evaluated, deployed and recorded is the
committed spec.

The target environment is the run's `environment` parameter when it is set, else the spec's `environment`
field, else dev (`target_environment`): a merged spec says where it goes, and the webhook passes no environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from registry.errors import SpecError
from steps.core.artifacts import ONBOARD_DIR, ROOT
from steps.core.git import head_commit
from steps.release.spec import ReleaseSpec, load_spec

__all__ = [
    "RELEASE_REPO_IN",
    "SOURCE_FILE",
    "SOURCE_OUT",
    "SPEC_FILE",
    "SPEC_IN",
    "SPEC_OUT",
    "SpecSource",
    "checkout_spec",
    "publish_spec",
    "read_source",
    "release_path",
    "target_environment",
]

RELEASE_REPO_IN = f"{ROOT}/inputs/release-repo"
"""Where the onboard step's `git` input artifact (the releases repository at the commit) is checked out."""
SPEC_FILE = "releases/release.yaml"
"""The validated spec inside the `spec` artifact (a `releases/` path, as `load_spec` requires)."""
SPEC_OUT = f"{ONBOARD_DIR}/spec/{SPEC_FILE}"
SPEC_IN = f"{ROOT}/inputs/spec/{SPEC_FILE}"
"""Where a later step gets the `spec` artifact; its `release` parameter names this path."""
SOURCE_FILE = "spec-source.json"
SOURCE_OUT = f"{ONBOARD_DIR}/{SOURCE_FILE}"
DEFAULT_ENVIRONMENT = "dev"
_IN_REPO = re.compile(r"releases/[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\.ya?ml")
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class SpecSource:
    """Where the validated spec came from: repository, path in it, commit checked out, its digest, environment."""

    repository: str
    path: str
    commit: str
    sha256: str
    environment: str


def release_path(release: str) -> str:
    """The release as a path in the repository: `releases/<name>.yaml` (a bare `<name>` means that file).

    Raises:
        SpecError: The path is absolute, has `..`, or is not directly in `releases/`; names the parameter and fix.
    """
    path = release if ("/" in release or release.endswith((".yaml", ".yml"))) else f"releases/{release}.yaml"
    if _IN_REPO.fullmatch(path) is None:
        shown = repr(release) if len(release) <= 100 else f"{release[:97]!r}..."
        raise SpecError(
            f"parameter release={shown} is not a spec in the repository's releases/ directory: pass "
            "releases/<name>.yaml (relative, no '..', <name> lowercase letters, digits and '-')"
        )
    return path


def target_environment(given: str, spec: ReleaseSpec | None) -> str:
    """The environment a run delivers to: `given` (the run's parameter), else the spec's, else dev."""
    if given.strip():
        return given.strip()
    return (spec.environment if spec is not None else None) or DEFAULT_ENVIRONMENT


def checkout_spec(
    checkout: Path, release: str, *, repository: str = "", requested: str = "", environment: str = ""
) -> tuple[Path, ReleaseSpec, SpecSource]:
    """The spec file `release` in the git checkout `checkout`, validated, and where it came from.

    Args:
        checkout: The repository's working tree at the commit (the `git` input artifact).
        release: The spec's path in the repository (`releases/<name>.yaml`).
        repository: The repository's URL or path, as the run was given it (recorded).
        requested: The commit the run asked for (`git-commit`; a branch, a tag, a sha or "" for the head).
        environment: The run's `environment` parameter ("" means the spec's).

    Raises:
        SpecError: The path leaves `releases/`, the file is not in the repository at that commit, is a symbolic
            link or invalid, or the checkout is not the commit asked for.
    """
    path = release_path(release)
    where = f"{repository or checkout} at {requested or 'its head'}"
    releases = checkout / "releases"
    if releases.is_symlink() or not releases.resolve().is_relative_to(checkout.resolve()):
        raise SpecError(f"releases/ in {where} is a symbolic link: commit the releases directory itself")
    spec_file = checkout / path
    if not spec_file.is_file() and not spec_file.is_symlink():
        raise SpecError(
            f"release {path} is not in {where}: commit it there, or pass the commit that has it (git-commit)"
        )
    spec = load_spec(str(spec_file))
    commit = _checked_out(checkout, requested, where)
    digest = hashlib.sha256(spec_file.read_bytes()).hexdigest()
    source = SpecSource(repository, path, commit, digest, target_environment(environment, spec))
    return spec_file, spec, source


def _checked_out(checkout: Path, requested: str, where: str) -> str:
    """The commit of the checkout (`git rev-parse HEAD`), which must be `requested` when that is a full sha."""
    commit = head_commit(checkout) if (checkout / ".git").exists() else None  # never an enclosing repository's
    wanted = requested.strip().lower()
    if commit is None:
        if _FULL_SHA.fullmatch(wanted):
            return wanted
        raise SpecError(f"{where}: the checkout has no git metadata, so its commit is unknown: pass a full sha")
    if _FULL_SHA.fullmatch(wanted) and commit != wanted:
        raise SpecError(f"{where}: the checkout is at {commit}, not {wanted}: check the git artifact's revision")
    return commit


def publish_spec(spec_file: Path, source: SpecSource, work_dir: Path) -> Path:
    """Write the validated bytes as `<work_dir>/spec/releases/release.yaml` and the source beside; that path."""
    out = work_dir / "spec" / SPEC_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, spec_file.read_bytes())
    _write_atomic(work_dir / SOURCE_FILE, json.dumps(asdict(source), indent=2, sort_keys=True).encode())
    return out


def read_source(path: Path) -> SpecSource | None:
    """The `SpecSource` in a `spec-source.json`, or None when there is none (the onboard step did not finish).

    Raises:
        SpecError: The file is there but not a spec source.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SpecSource(**{k: str(data[k]) for k in SpecSource.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a spec source written by the onboard step ({e}); re-run the delivery") from e


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
