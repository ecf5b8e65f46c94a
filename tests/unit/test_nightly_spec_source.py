"""Where the nightly regression gets a champion's release spec: recorded at registration, listed, fetched at the commit.

Real components: an MLflow sqlite store per test, the register step's `run` on the real registry facade, real git
repositories under tmp_path, and the rendered argo/ files.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import SpecError
from registry.tags import GIT_COMMIT_TAG, SPEC_REPOSITORY_TAG
from steps import list_champions, register
from steps.nightly_eval import Inputs, release_spec
from tests.unit.test_registry import Store, make_record

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
SPEC = (REPO / "releases" / "demo.yaml").read_text(encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)
    return Store(tmp_path)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _commit(repo: Path, text: str) -> str:
    (repo / "releases").mkdir(parents=True, exist_ok=True)
    (repo / "releases" / "demo.yaml").write_text(text, encoding="utf-8")
    _git(repo, "add", "releases/demo.yaml")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "spec")
    return _git(repo, "rev-parse", "HEAD")


def _register(store: Store, tmp_path: Path, *, payload: bytes, repo: str, commit: str) -> register.Outputs:
    path = tmp_path / f"record-{payload.decode()}.json"
    path.write_text(json.dumps(make_record(tmp_path, payload)))
    inputs = register.Inputs(record_path=path, workflow_name="wf", workflow_uid="u", git_commit=commit, git_repo=repo)
    return register.run(inputs, store.registry)


def test_registration_records_the_repository_of_a_new_version_only(store: Store, tmp_path: Path) -> None:
    """GIVEN a record registered with the releases repository WHEN it is registered, then again from another
    repository THEN the new version is tagged with the first repository and commit; the reused one keeps them."""
    first = _register(store, tmp_path, payload=b"w1", repo="https://git.example/releases.git", commit="a" * 40)
    again = _register(store, tmp_path, payload=b"w1", repo="https://git.example/other.git", commit="b" * 40)

    assert (first.created, again.created, again.version) == (True, False, first.version)
    tags = store.client.get_model_version(first.name, first.version).tags
    assert (tags[SPEC_REPOSITORY_TAG], tags[GIT_COMMIT_TAG]) == ("https://git.example/releases.git", "a" * 40)


def test_champions_are_listed_with_their_spec_source_or_the_image(store: Store, tmp_path: Path) -> None:
    """GIVEN three champions: one registered with a repository and a full commit, one before repositories were
    recorded, one with a repository but no usable commit WHEN list-champions runs THEN only the first is `git`
    (repository, commit, path), the others `image`, and the printed lines say which."""
    versions = {}
    for name, payload, repo, commit in (
        ("alpha", b"a1", "https://git.example/releases.git", "c" * 40),
        ("beta", b"b1", "", "c0ffee"),
        ("gamma", b"g1", "https://git.example/releases.git", "unknown"),
    ):
        record = make_record(tmp_path, payload, name=name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record))
        inputs = register.Inputs(record_path=path, git_commit=commit, git_repo=repo)
        versions[name] = register.run(inputs, store.registry).version
        store.registry.promote(name, versions[name], actor="t", reason="test")

    out = list_champions.run(list_champions.Inputs(), store.client)

    assert [(c.model_name, c.source, c.repository, c.commit, c.release) for c in out.champions] == [
        ("alpha", "git", "https://git.example/releases.git", "c" * 40, "releases/demo.yaml"),
        ("beta", "image", "", "", "releases/demo.yaml"),
        ("gamma", "image", "", "", "releases/demo.yaml"),
    ]
    lines = list_champions.describe(out).splitlines()
    assert (
        lines[0]
        == f"alpha: champion version 1 (release releases/demo.yaml at {'c' * 12} in https://git.example/releases.git)"
    )
    assert lines[1].endswith("from the image: no repository recorded)")


def _inputs(**kw: Any) -> Inputs:
    return Inputs(model_name="demo-qa", version="3", release="releases/demo.yaml", work_dir="/tmp/n", **kw)


def test_the_spec_is_read_in_the_checkout_at_the_recorded_commit(tmp_path: Path) -> None:
    """GIVEN a releases repository at commit A, moved on to commit B WHEN the spec of a champion registered at A
    is resolved in a checkout of A THEN it is A's file; in a checkout of B it is refused in one line naming both."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    a = _commit(repo, SPEC)
    b = _commit(repo, SPEC.replace("golden-qa", "golden-qa-b"))
    checkout = tmp_path / "checkout"
    _git(tmp_path, "clone", "-q", str(repo), str(checkout))
    _git(checkout, "checkout", "-q", a)

    path, line = release_spec(_inputs(repository=str(repo), commit=a), checkout)

    assert Path(path) == checkout / "releases" / "demo.yaml" and Path(path).read_text() == SPEC
    assert line == f"spec releases/demo.yaml at {a[:12]} in {repo} (as released)"
    _git(checkout, "checkout", "-q", b)
    with pytest.raises(SpecError) as info:
        release_spec(_inputs(repository=str(repo), commit=a), checkout)
    assert f"is at {b}, not {a}" in str(info.value) and "\n" not in str(info.value)


def test_without_a_recorded_repository_the_image_copy_is_used_with_a_warning(tmp_path: Path) -> None:
    """GIVEN a champion with no recorded repository WHEN its spec is resolved THEN the image's path as recorded and
    one warning line; GIVEN a recorded repository but no checkout THEN one line asking for the git artifact."""
    path, line = release_spec(_inputs(), None)
    assert path == "releases/demo.yaml"
    assert line.startswith("warning: demo-qa version 3 has no recorded releases repository: evaluating the image's")
    assert "\n" not in line
    with pytest.raises(SpecError, match="the release-repo artifact .* is not there: give nightly-eval that git"):
        release_spec(_inputs(repository="https://git.example/r.git", commit="a" * 40), tmp_path / "absent")


def test_rendered_nightly_gives_each_git_champion_its_repository_at_its_commit() -> None:
    """GIVEN the rendered nightly-regression WHEN its DAG is read THEN `nightly-eval` fans out over the git
    champions with a full-history git artifact at the item's repository and commit, `nightly-eval-image` over the
    others without one, and the template's release-repo input is optional; register defaults git_repo to the
    golden delivery's git-repo."""
    cron = yaml.safe_load((ARGO / "nightly-regression.cronworkflow.yaml").read_text())
    templates = {t["name"]: t for t in cron["spec"]["workflowSpec"]["templates"]}
    tasks = {t["name"]: t for t in templates["nightly"]["dag"]["tasks"]}
    git, image = tasks["nightly-eval"], tasks["nightly-eval-image"]
    assert git["when"] == "'{{item.source}}' == 'git'" and image["when"] == "'{{item.source}}' == 'image'"
    assert git["arguments"]["artifacts"] == [
        {"name": "release-repo", "git": {"repo": "{{item.repository}}", "revision": "{{item.commit}}"}}
    ]
    assert "artifacts" not in image["arguments"] and git["withParam"] == image["withParam"]
    assert templates["nightly-eval"]["inputs"]["artifacts"][0]["optional"] is True
    golden = yaml.safe_load((ARGO / "golden-delivery.workflowtemplate.yaml").read_text())
    [reg] = [t for t in golden["spec"]["templates"] if t["name"] == "register"]
    params = {p["name"]: p.get("default") for p in reg["inputs"]["parameters"]}
    assert params["git_repo"] == "{{workflow.parameters.git-repo}}"
