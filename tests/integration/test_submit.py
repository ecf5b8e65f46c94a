"""`llmrelease submit`: a WorkflowTemplate submitted through Hera's WorkflowsService to an Argo Server.

No real Argo Server can run here (it needs Kubernetes), so each test starts a real HTTP server in-process that
speaks the two endpoints the command uses, as the Argo Server does: POST /api/v1/workflows/{ns}/submit (a
WorkflowSubmitRequest in, the created Workflow out) and GET /api/v1/workflows/{ns}/{name}, with bearer-token auth.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from workflows.cli.main import main

ARGO = Path(__file__).resolve().parents[2] / "argo"
TOKEN = "t0ken"


class FakeArgo(ThreadingHTTPServer):
    """Created workflows advance Pending -> Running -> <final> one GET at a time; every request is recorded."""

    def __init__(self, final: str = "Succeeded") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.final = final
        self.requests: list[dict[str, Any]] = []
        self.polls: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeArgo

    def log_message(self, format: str, *args: Any) -> None:  # the base class's name
        del format, args

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._reply(401, {"code": 16, "message": "token not valid"})
        return False

    def do_POST(self) -> None:  # http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append({"method": "POST", "path": self.path, "body": body})
        if not self._authorized():
            return
        parts = self.path.strip("/").split("/")  # api v1 workflows {ns} submit
        if parts[:3] != ["api", "v1", "workflows"] or parts[4:] != ["submit"]:
            return self._reply(404, {"code": 5, "message": "not found"})
        if body.get("resourceName") != "golden-delivery":
            return self._reply(404, {"code": 5, "message": f"workflowtemplates {body.get('resourceName')} not found"})
        params = [
            {"name": k, "value": v} for k, _, v in (p.partition("=") for p in body["submitOptions"]["parameters"])
        ]
        self._reply(200, _workflow("golden-delivery-x7k2p", parts[3], "Pending", params))

    def do_GET(self) -> None:  # http.server's name
        self.server.requests.append({"method": "GET", "path": self.path})
        if not self._authorized():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        name = parts[4]
        seen = self.server.polls[name] = self.server.polls.get(name, 0) + 1
        phase = ["Pending", "Running", self.server.final][min(seen, 3) - 1]
        self._reply(
            200, _workflow(name, parts[3], phase, [], message="child 'gate' failed" if phase == "Failed" else "")
        )


def _workflow(name: str, namespace: str, phase: str, params: list[dict[str, str]], message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, **({"message": message} if message else {})}
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": "3f1c-uid"},
        "spec": {"workflowTemplateRef": {"name": "golden-delivery"}, "arguments": {"parameters": params}},
        "status": status,
    }


def serve(final: str = "Succeeded") -> Iterator[FakeArgo]:
    server = FakeArgo(final)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def argo(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArgo]:
    for server in serve():
        monkeypatch.setenv("ARGO_SERVER", server.url)
        monkeypatch.setenv("ARGO_TOKEN", TOKEN)
        monkeypatch.setenv("ARGO_NAMESPACE", "ml-release")
        monkeypatch.delenv("ARGO_BASE_HREF", raising=False)
        yield server


def submit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["submit", "golden-delivery", *args, "--argo-dir", str(ARGO), "--interval", "0.01"])
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_sends_the_template_and_parameters_and_prints_name_and_link(
    argo: FakeArgo, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a fake Argo Server WHEN golden-delivery is submitted with two valid parameters THEN one submit request
    names the template and carries them as k=v, and the workflow's name and UI link are printed."""
    code, out, err = submit(capsys, "-p", "environment=stage", "-p", "release=releases/demo.yaml")
    assert (code, err) == (0, "")
    [request] = argo.requests
    assert request["path"] == "/api/v1/workflows/ml-release/submit"
    assert request["body"] == {
        "namespace": "ml-release",
        "resourceKind": "WorkflowTemplate",
        "resourceName": "golden-delivery",
        "submitOptions": {"parameters": ["environment=stage", "release=releases/demo.yaml"]},
    }
    assert "submitted workflow golden-delivery-x7k2p" in out
    assert f"{argo.url}/workflows/ml-release/golden-delivery-x7k2p" in out.splitlines()


def test_watch_polls_until_the_workflow_ends(argo: FakeArgo, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a workflow that goes Pending -> Running -> Succeeded WHEN submitted with --watch THEN every phase is
    printed once and the command exits 0."""
    code, out, _ = submit(capsys, "--watch")
    assert code == 0
    phases = [line.split(": ")[-1] for line in out.splitlines() if "golden-delivery-x7k2p: " in line]
    assert phases == ["Pending", "Running", "Succeeded"]
    assert argo.polls == {"golden-delivery-x7k2p": 3}


def test_watch_exits_1_with_the_message_when_the_workflow_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a workflow that fails WHEN watched THEN exit 1 and its status message is printed."""
    for server in serve(final="Failed"):
        monkeypatch.setenv("ARGO_SERVER", server.url)
        monkeypatch.setenv("ARGO_TOKEN", f"Bearer {TOKEN}")  # the argo CLI's form works too
        code, out, _ = submit(capsys, "--watch")
        assert code == 1 and "workflow golden-delivery-x7k2p Failed: child 'gate' failed" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["-p", "enviroment=prod"],
            "parameter 'enviroment' is not a parameter of WorkflowTemplate golden-delivery: "
            "allowed parameters are release, git-repo, git-commit, environment, eval-shards",
        ),
        (
            ["-p", "environment=qa"],
            "parameter environment='qa' is not allowed by WorkflowTemplate golden-delivery: "
            "allowed values are '' (empty), dev, stage, prod",
        ),
        (["-p", "eval-shards=3"], "allowed values are 1, 2, 4, 8, 16"),
        (["-p", "release"], "-p 'release': write it as NAME=VALUE"),
    ],
)
def test_a_bad_parameter_is_refused_before_anything_is_submitted(
    argo: FakeArgo, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    """GIVEN an unknown parameter or a value outside its enum WHEN submitted THEN exit 2 with one stderr line naming
    the parameter and what is allowed, and the server received nothing."""
    code, out, err = submit(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and words in err
    assert argo.requests == []


def test_server_refusals_and_an_unreachable_server_are_one_line(
    argo: FakeArgo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a wrong token, a template not rendered here, or no server WHEN submitting THEN one stderr line each."""
    monkeypatch.setenv("ARGO_TOKEN", "wrong")
    code, _, err = submit(capsys)
    assert code == 1 and "refused (Unauthorized" in err and err.count("\n") == 1
    code = main(["submit", "weekly-report", "--argo-dir", str(ARGO)])
    assert code == 2 and "WorkflowTemplate 'weekly-report' is not rendered" in capsys.readouterr().err
    monkeypatch.setenv("ARGO_SERVER", "127.0.0.1:9")  # no scheme: https, as the argo CLI assumes
    code, _, err = submit(capsys)
    assert code == 1 and "cannot reach the Argo Server at https://127.0.0.1:9" in err
