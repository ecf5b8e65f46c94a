"""An unknown model is an error with exit 1 in every per-model command, against a real MLflow registry.

Each test gets its own copy of a sqlite MLflow store holding one registered model, `demo-qa`, never served on
this machine. A name the registry does not hold fails in one line naming it, the closest registered names and
`llmrelease registry list`; the registered one gets the command's real answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workflows.cli.main import main

KNOWN = "demo-qa"
PER_MODEL = [
    ["serving", "status", "{}"],
    ["serving", "status", "{}", "--json"],
    ["serving", "stop", "{}"],
    ["rollout", "abort", "{}", "--actor", "alice"],
    ["rollback", "{}", "--actor", "alice"],
    ["canary", "resume", "{}", "--actor", "alice"],
    ["canary", "abort", "{}", "--actor", "alice"],
    ["registry", "history", "{}"],
    ["registry", "history", "{}", "--json"],
]


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("template-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model(KNOWN)
    return home / "mlflow.db"


@pytest.fixture
def home(template_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(template_store, home / "mlflow.db")
    monkeypatch.setenv("LLMRELEASE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LLMRELEASE_DEBUG", raising=False)
    return home


def _argv(template: list[str], name: str) -> list[str]:
    return [word.format(name) for word in template]


@pytest.mark.parametrize("template", PER_MODEL, ids=lambda t: " ".join(w for w in t if w != "{}"))
def test_an_unknown_model_is_exit_1_naming_it_and_how_to_list_models(
    home: Path, capsys: pytest.CaptureFixture[str], template: list[str]
) -> None:
    """GIVEN a registry holding demo-qa  WHEN a per-model command is given demo-qb (a typo)
    THEN it exits 1 with one line naming demo-qb, suggesting demo-qa and `llmrelease registry list`;
    nothing about the model is written on this machine."""
    code = main(_argv(template, "demo-qb"))

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "unknown model 'demo-qb'" in captured.err and "did you mean 'demo-qa'" in captured.err
    assert "llmrelease registry list" in captured.err
    assert captured.out == ""
    assert not (home / "serving" / "demo-qb" / "plane.json").exists()


def test_a_registered_model_gets_the_real_answer(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN demo-qa registered but never served here
    WHEN serving status/stop, rollout abort and registry history are asked about it
    THEN they answer (not served, nothing in flight, no moves yet) with exit 0, and rollback refuses for the real
    reason: there is no previous version."""
    assert main(["serving", "status", KNOWN, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"] == KNOWN and status["servers"] == {} and status["router_port"] is None
    assert main(["serving", "stop", KNOWN]) == 0
    assert main(["rollout", "abort", KNOWN, "--actor", "alice"]) == 0
    assert "no rollout in flight" in capsys.readouterr().out
    assert main(["registry", "history", KNOWN, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["rollback", KNOWN, "--actor", "alice"]) == 1
    err = capsys.readouterr().err
    assert "nothing to roll back to" in err and "unknown model" not in err


def test_registry_list_names_every_registered_model(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a registry holding demo-qa with a version and an alias  WHEN `registry list` (text and --json)
    THEN demo-qa is listed with its latest version and aliases."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_model_version(KNOWN, source=str(home), run_id=None)
    client.set_registered_model_alias(KNOWN, "champion", "1")

    assert main(["registry", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": KNOWN, "aliases": {"champion": "1"}, "latest_version": "1"}]
    assert main(["registry", "list"]) == 0
    assert capsys.readouterr().out == f"{KNOWN}: latest version 1; champion 1\n"
