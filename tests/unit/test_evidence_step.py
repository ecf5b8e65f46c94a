"""The evidence step through Hera's runner with a real MLflow store, the `evidence` CLI, and MLflow down."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steps.evidence import EvidenceParams, build_statement, verify_bundle
from tests.unit.test_evidence import NAME, REPO, UID, run_inputs, write_run_files
from workflows.cli.main import main


def _store(home: Path) -> object:
    from steps.core.tracking import mlflow_client

    client = mlflow_client({"LLMRELEASE_HOME": str(home)})
    client.create_registered_model(NAME)
    for v in ("1", "2", "3"):
        tags = {"llmrelease.digest": "sha256:" + hashlib.sha256(v.encode()).hexdigest()}
        if v == "3":
            approval = {
                "approver": "alice",
                "approved_at": "2026-11-23T11:58:00Z",
                "environment": "prod",
                "workflow_uid": UID,
            }
            tags["llmrelease.approval.prod"] = json.dumps(approval)
        client.create_model_version(NAME, source=(home / f"w{v}").as_uri(), tags=tags)
    return client


def _run_step(tmp_path: Path, files: dict[str, Path]) -> tuple[subprocess.CompletedProcess[str], Path]:
    params = {
        "model_name": NAME,
        "version": "3",
        "release": "releases/demo.yaml",
        "workflow_name": "golden-delivery-a",
        "workflow_uid": UID,
        "workflow_status": "Succeeded",
        "git_commit": "",
        "report_paths": ",".join(str(p) for p in files.values()) + f",{tmp_path}/missing.json",
        "approver": "alice",
        "started_at": "2026-11-23T11:40:00Z",
        "workflow_parameters": json.dumps([{"name": "environment", "value": "prod"}]),
        "pipeline": "golden-delivery",
        "work_dir": str(tmp_path / "work"),
    }
    (tmp_path / "params.json").write_text(json.dumps([{"name": k, "value": v} for k, v in params.items()]))
    outputs = tmp_path / "outputs"
    env = {**os.environ, "hera__outputs_directory": str(outputs), "LLMRELEASE_HOME": str(tmp_path / "home")}
    for var in ("MLFLOW_TRACKING_URI", "LLMRELEASE_PUSHGATEWAY", "LLMRELEASE_EVIDENCE_KEY"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "hera.workflows.runner",
        "-e",
        "steps.evidence:evidence_step",
        str(tmp_path / "params.json"),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done, outputs


def test_evidence_step_stores_the_bundle_locally_and_in_mlflow_and_tags_the_version(tmp_path: Path) -> None:
    """GIVEN a registered v3 (digest and prod approval tags) and the run's result files, one path missing
    WHEN the evidence step runs through Hera's runner
    THEN it publishes the digest, the report path and the bundle path; the bundle is in the local store; an MLflow
    run in llmrelease-evidence holds it; v3 is tagged llmrelease.evidence with that run and digest; the subject
    digest, git commit (HEAD) and approval time come from the registry and the checkout."""
    client = _store(tmp_path / "home")
    done, outputs = _run_step(tmp_path, write_run_files(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    digest = (outputs / "parameters/digest").read_text()
    bundle = Path((outputs / "parameters/bundle-path").read_text())
    assert bundle == (tmp_path / "home/evidence" / NAME / "3" / UID).resolve()
    assert Path((outputs / "parameters/report-path").read_text()) == bundle / "report.html"
    assert (tmp_path / "work/release-report.html").is_file() and (tmp_path / "work/bundle/statement.json").is_file()
    assert verify_bundle(bundle).digest == digest
    tag = json.loads(client.get_model_version(NAME, "3").tags["llmrelease.evidence"])  # type: ignore[attr-defined]
    assert tag["digest"] == digest and tag["workflow_uid"] == UID
    artifacts = Path(client.download_artifacts(tag["run_id"], "evidence", str(tmp_path / "dl")))  # type: ignore[attr-defined]
    assert verify_bundle(artifacts, expected_digest=digest).files == 7
    st = json.loads((bundle / "statement.json").read_text())
    assert st["subject"][0]["digest"]["sha256"] == hashlib.sha256(b"3").hexdigest()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert st["predicate"]["buildDefinition"]["externalParameters"]["gitCommit"] == head
    assert st["predicate"]["buildDefinition"]["externalParameters"]["workflow"]["parameters"] == {"environment": "prod"}
    res = st["predicate"]["runDetails"]["llmrelease_results"]
    assert res["approval"]["approved_at"] == "2026-11-23T11:58:00Z"
    assert [m["reason"] for m in res["missing"]] == ["file not found"]
    assert f"evidence: {digest}" in done.stdout


def test_cli_show_verify_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN the evidence of v3 stored by the step
    WHEN `evidence show`, `evidence verify` (store and MLflow copies), `report` run, and then a result is altered
    THEN show prints the digest and outcomes, verify passes on both copies, and after the change verify exits 1
    naming the file; with the local copy gone, verify still checks the MLflow copy."""
    _store(tmp_path / "home")
    done, outputs = _run_step(tmp_path, write_run_files(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    digest = (outputs / "parameters/digest").read_text()
    bundle = Path((outputs / "parameters/bundle-path").read_text())
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["evidence", "show", NAME, "3"]) == 0
    out = capsys.readouterr().out
    assert f"digest:    {digest}" in out and "canary:    aborted" in out and "results/canary-log.json" in out
    assert main(["evidence", "show", NAME, "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predicate"]["runDetails"]["metadata"]["invocationId"] == UID
    assert main(["evidence", "verify", NAME, "3"]) == 0
    out = capsys.readouterr().out
    assert out.count(f": {digest} (7 files") == 2 and "OK MLflow" in out and "OK artifact store" in out
    assert main(["report", NAME, "3", "--out", str(tmp_path / "r.html")]) == 0
    assert "<svg" in (tmp_path / "r.html").read_text()
    capsys.readouterr()
    (bundle / "results/latency-report.json").write_text("{}")
    assert main(["evidence", "verify", NAME, "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results/latency-report.json changed" in err
    assert main(["evidence", "verify", "--dir", str(bundle)]) == 1
    capsys.readouterr()
    import shutil

    shutil.rmtree(bundle)
    assert main(["evidence", "verify", NAME, "3"]) == 0
    assert "OK MLflow" in capsys.readouterr().out
    assert main(["evidence", "show", NAME, "9"]) == 1
    assert "no evidence for 'demo-qa' version 9" in capsys.readouterr().err


def test_step_params_have_defaults_for_everything_but_the_model() -> None:
    """GIVEN the Argo parameters WHEN only model_name is given THEN the rest default (a failed run has little)."""
    params = EvidenceParams(model_name=NAME)
    assert params.version == "" and params.report_paths == "" and params.work_dir.startswith("/tmp/llmrelease")
    statement = build_statement(run_inputs({}, release=""), None, [], {})
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["release"]["content"] is None


def test_mlflow_down_fails_the_step_in_one_line_and_keeps_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a tracking server nobody listens on
    WHEN the evidence is stored
    THEN a RegistryError of one line names the local bundle, which is complete and verifies."""
    import socket

    from registry.errors import RegistryError
    from steps.evidence import run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("LLMRELEASE_SERVICE_DEADLINE_S", "2")
    with pytest.raises(RegistryError, match="the bundle is kept at") as err:
        run(run_inputs(write_run_files(tmp_path / "run")))
    assert "\n" not in str(err.value)
    kept = tmp_path / "home/evidence" / NAME / "3" / UID
    assert verify_bundle(kept).files == 7 and (kept / "report.html").is_file()
