"""One rule for model, release and environment names (a DNS-1123 label), and release paths confined to releases/.

The rule lives in registry/names.py; the release spec (pydantic), the registry's onboarding record, the approval
step and the release path all apply it, so a name like `-rf` or `..` is refused in one line wherever it enters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from registry import ModelRegistry
from registry.errors import SpecError
from registry.names import NAME_MAX_LENGTH, check_name, is_name
from steps.approval import Inputs as ApprovalInputs
from steps.approval import run as record_approval
from steps.release.spec import load_spec, resolve_spec_path

REPO = Path(__file__).resolve().parents[2]
BAD = ["-rf", ".", "..", "A", "a_b", "a" * 64, "", "demo-", "demo.qa", "demo\n", "../x", "a b"]
GOOD = ["demo-qa", "a", "7", "a" * 63, "m2-chat-v1"]
SPEC: dict[str, Any] = {
    "apiVersion": "llmrelease/v1",
    "name": "names",
    "model": {"name": "names", "source": "models/x", "card": {"license": "mit", "intended_use": "tests"}},
    "evals": {"suites": [{"name": "qa", "path": "qa.jsonl"}], "safety": {"name": "safety", "path": "s.jsonl"}},
}


def write_spec(folder: Path, *, model: str = "names", release: str = "names", file: str = "names.yaml") -> Path:
    data = json.loads(json.dumps(SPEC))
    data["name"], data["model"]["name"] = release, model
    path = folder / "releases" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def provider_record(name: str) -> dict[str, Any]:
    """An onboarding record of a provider model (no weights), as the onboard step writes it."""
    return {
        "name": name,
        "environment": "dev",
        "source_uri": "openai://api.example.test/v1/demo-chat",
        "kind": "provider",
        "local_path": None,
        "digest": "sha256:" + "0" * 64,
        "files": [],
        "card": {"license": "mit", "intended_use": "tests"},
    }


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelRegistry, MlflowClient]:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would land here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return ModelRegistry(client, tracking_uri=uri, artifact_root=tmp_path / "mlartifacts"), client


@pytest.mark.parametrize("name", BAD)
def test_the_rule_refuses_what_is_not_a_dns_label(name: str) -> None:
    """GIVEN a name with a leading '-', a dot, '..', a capital, '_', 64 characters, a trailing newline WHEN checked
    THEN refused in one line naming what it is and the rule."""
    assert not is_name(name)
    with pytest.raises(SpecError) as info:
        check_name(name, "model name")
    message = str(info.value)
    assert message.startswith("model name ") and "DNS-1123 label" in message and "\n" not in message


@pytest.mark.parametrize("name", GOOD)
def test_the_rule_accepts_dns_labels(name: str) -> None:
    """GIVEN lowercase labels of 1 to 63 characters WHEN checked THEN they pass unchanged."""
    assert is_name(name) and check_name(name, "model name") == name and len(name) <= NAME_MAX_LENGTH


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("field", ["model.name", "name"])
def test_the_spec_refuses_a_bad_model_or_release_name_naming_the_field(tmp_path: Path, field: str, name: str) -> None:
    """GIVEN a spec whose model.name (or release name) is not a DNS label WHEN loaded THEN one line naming the
    file, the field and the rule (the fix)."""
    path = write_spec(tmp_path, **({"model": name} if field == "model.name" else {"release": name}))
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: ") and "DNS-1123 label" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("name", GOOD)
def test_the_spec_accepts_a_good_name(tmp_path: Path, name: str) -> None:
    """GIVEN a spec named by a DNS label WHEN loaded THEN it loads with that model and release name."""
    spec = load_spec(str(write_spec(tmp_path, model=name, release=name)))
    assert spec.model.name == spec.name == name


def test_every_committed_release_spec_passes_the_rule() -> None:
    """GIVEN releases/*.yaml WHEN loaded by bare name, as the webhook's path does THEN each is valid."""
    files = sorted((REPO / "releases").glob("*.yaml"))
    assert files
    for file in files:
        spec = load_spec(str(file))
        assert is_name(spec.name) and is_name(spec.model.name) and is_name(file.stem)


def test_the_registry_refuses_a_record_with_a_bad_name_and_registers_nothing(
    registry: tuple[ModelRegistry, MlflowClient],
) -> None:
    """GIVEN onboarding records named '-rf' and '..' (a record edited after onboarding) WHEN registered THEN a
    SpecError names the field and nothing reaches MLflow; a record named 'demo-qa' registers."""
    facade, client = registry
    for name in ("-rf", ".."):
        with pytest.raises(SpecError, match=r"is invalid at name") as info:
            facade.register(provider_record(name), workflow_name="w", workflow_uid="u", git_commit="abc")
        assert "\n" not in str(info.value)
    assert client.search_registered_models() == []
    result = facade.register(provider_record("demo-qa"), workflow_name="w", workflow_uid="u", git_commit="abc")
    assert (result.name, str(result.version)) == ("demo-qa", "1")


def test_the_approval_step_refuses_a_bad_model_name_or_environment(
    registry: tuple[ModelRegistry, MlflowClient],
) -> None:
    """GIVEN an approval for model '-rf' or environment '..' WHEN recorded THEN one-line SpecErrors, no tag."""
    facade, client = registry
    facade.register(provider_record("demo-qa"), workflow_name="w", workflow_uid="u", git_commit="abc")
    good = {"model_name": "demo-qa", "version": "1", "environment": "prod", "approver": "alice"}
    for change, words in [
        ({"model_name": "-rf"}, "model-name '-rf' is not a DNS-1123 label"),
        ({"environment": ".."}, "environment '..' is not a lowercase name"),
    ]:
        with pytest.raises(SpecError, match=words):
            record_approval(ApprovalInputs(**{**good, **change}), facade)
    assert not any(k.startswith("llmrelease.approval") for k in client.get_model_version("demo-qa", "1").tags)
    record_approval(ApprovalInputs(**good), facade)
    assert "llmrelease.approval.prod" in client.get_model_version("demo-qa", "1").tags


# ---- release paths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "releases/../../x.yaml",
        "releases/../secret.yaml",
        "../releases/x.yaml",
        "releases/./x.yaml",
        "releases/sub/x.yaml",
        "releases//x.yaml",
        "releases/-rf.yaml",
        "releases/X.yaml",
        "releases/x.yaml.bak",
        "releases/x.yaml\n",
        "x.yaml",
        "other/x.yaml",
        "/etc/x.yaml",
        "/srv/repo/releases/../../etc/x.yaml",
        "/srv/./releases/x.yaml",
        "..",
        "-rf",
    ],
)
def test_release_paths_outside_the_releases_directory_are_refused(path: str) -> None:
    """GIVEN a release path with '..', a subfolder, an absolute path elsewhere or a bad name WHEN resolved THEN
    one line naming the path and what to pass."""
    with pytest.raises(SpecError) as info:
        resolve_spec_path(path)
    message = str(info.value)
    assert "\n" not in message and ("releases/<name>.yaml" in message or "DNS-1123 label" in message)


def test_the_step_does_not_read_a_spec_outside_releases_even_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a checkout with releases/ and a valid spec beside it (outside releases/) WHEN the onboard step is
    given releases/../outside.yaml THEN refused before reading it; releases/names.yaml itself loads."""
    from steps.onboard import Inputs, run

    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path)
    outside = tmp_path / "outside.yaml"
    outside.write_text((tmp_path / "releases" / "names.yaml").read_text())
    assert load_spec("releases/names.yaml").name == load_spec("names").name == "names"
    for release in ("releases/../outside.yaml", str(outside)):
        with pytest.raises(SpecError, match="is outside the releases directory") as info:
            run(Inputs(release=release, work_dir=str(tmp_path / "work")))
        assert "\n" not in str(info.value)
    assert not (tmp_path / "work").exists()


def test_a_spec_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    """GIVEN releases/x.yaml committed as a symbolic link to a file elsewhere WHEN loaded THEN refused."""
    target = write_spec(tmp_path / "elsewhere")
    link = tmp_path / "repo" / "releases" / "x.yaml"
    link.parent.mkdir(parents=True)
    os.symlink(target, link)
    with pytest.raises(SpecError, match="symbolic link"):
        load_spec(str(link))
