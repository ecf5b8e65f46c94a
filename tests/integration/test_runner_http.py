"""The local runner's `http` template (Argo's agent) against a real HTTP server on this machine.

Our own workflows; the server is Python's http.server in a thread, answering what each path says.
"""

from __future__ import annotations

import socket
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runner_support import run_text
from workflows.runner import RunResult


class _Handler(BaseHTTPRequestHandler):
    """/status/N answers N; /echo answers `METHOD token=<X-Token> body=<body>` with header X-Echo: yes."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if self.path.startswith("/status/"):
            code, text = int(self.path.rsplit("/", 1)[1]), f"status {self.path.rsplit('/', 1)[1]}"
        else:
            code, text = 200, f"{self.command} token={self.headers.get('X-Token', '')} body={body}"
        data = text.encode()
        self.send_response(code)
        self.send_header("X-Echo", "yes")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """Quiet."""


@pytest.fixture()
def server() -> Iterator[str]:
    """The base URL of a real HTTP server on 127.0.0.1."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


WORKFLOW = """
kind: Workflow
metadata: {{generateName: http-}}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - name: call
            template: call
        - - name: show
            template: show
            arguments: {{parameters: [{{name: got, value: "{{{{steps.call.outputs.result}}}}"}}]}}
    - name: call
      http:
{http}
    - name: show
      inputs: {{parameters: [{{name: got}}]}}
      container: {{image: busybox, command: [echo, "{{{{inputs.parameters.got}}}}"]}}
"""


def _run(tmp_path: Path, http: str) -> RunResult:
    """Run WORKFLOW with `http` as the call's http template; a Secret `api` (key token) in the cluster config."""
    config = tmp_path / "cluster"
    config.mkdir()
    (config / "api.yaml").write_text("kind: Secret\nmetadata: {name: api}\nstringData: {token: s3cret}\n")
    text = WORKFLOW.format(http=textwrap.indent(textwrap.dedent(http).strip(), " " * 8))
    return run_text(tmp_path, text, cluster_config=config)


def _node(result: RunResult, name: str) -> dict[str, Any]:
    return next(n for n in result.status["status"]["nodes"].values() if n["displayName"] == name)


def test_a_get_succeeds_and_its_body_is_the_result(server: str, tmp_path: Path) -> None:
    """GIVEN an http template that GETs /echo, WHEN it runs, THEN the HTTP node Succeeded with the body as result."""
    result = _run(tmp_path, f"url: {server}/echo")
    assert result.phase == "Succeeded", result.message
    call = _node(result, "call")
    assert call["type"] == "HTTP" and call["phase"] == "Succeeded"
    assert call["outputs"]["result"] == "GET token= body="
    assert "GET token= body=" in (result.run_dir / "nodes" / _node(result, "show")["id"] / "stdout").read_text()


def test_a_non_2xx_status_fails_without_a_condition(server: str, tmp_path: Path) -> None:
    """GIVEN no successCondition, WHEN the server answers 500, THEN the node is Failed with the agent's message."""
    result = _run(tmp_path, f"url: {server}/status/500")
    assert result.phase == "Failed"
    call = _node(result, "call")
    assert (call["phase"], call["message"]) == ("Failed", "received non-2xx response code: 500")
    assert call["outputs"]["result"] == "status 500"


def test_a_false_success_condition_fails_with_argos_message(server: str, tmp_path: Path) -> None:
    """GIVEN successCondition on the status, WHEN the server answers 201, THEN Failed "... evaluated false"."""
    result = _run(tmp_path, f'url: {server}/status/201\nsuccessCondition: "response.statusCode == 200"')
    call = _node(result, "call")
    assert call["phase"] == "Failed"
    assert call["message"] == "successCondition 'response.statusCode == 200' evaluated false"


def test_a_post_with_a_secret_header_and_a_condition_over_request_and_response(server: str, tmp_path: Path) -> None:
    """GIVEN a POST with a body and a header from Secret api, WHEN the condition reads both, THEN it Succeeded."""
    http = f"""
    url: {server}/echo
    method: POST
    body: hello
    headers:
      - name: X-Token
        valueFrom: {{secretKeyRef: {{name: api, key: token}}}}
      - {{name: X-Plain, value: p}}
    successCondition: >-
      request.method == "POST" && request.headers["X-Plain"][0] == "p" &&
      response.headers["X-Echo"][0] == "yes" && response.body contains "token=s3cret body=hello"
    """
    result = _run(tmp_path, http)
    assert result.phase == "Succeeded", result.message
    assert _node(result, "call")["outputs"]["result"] == "POST token=s3cret body=hello"


def test_a_missing_secret_fails_the_node_naming_it(server: str, tmp_path: Path) -> None:
    """GIVEN a header from Secret nope, WHEN the node runs, THEN it is Failed naming the Secret and where to add it."""
    http = f"url: {server}/echo\nheaders: [{{name: X-Token, valueFrom: {{secretKeyRef: {{name: nope, key: k}}}}}}]"
    call = _node(_run(tmp_path, http), "call")
    assert call["phase"] == "Failed"
    assert call["message"].startswith('secrets "nope" not found: add a Secret named nope to ')


def test_a_refused_connection_is_failed_in_gos_words(tmp_path: Path) -> None:
    """GIVEN a port nobody listens on, WHEN the node runs, THEN it is Failed as Go's client reports it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _run(tmp_path, f"url: http://127.0.0.1:{port}/x\ntimeoutSeconds: 5")
    call = _node(result, "call")
    assert call["phase"] == "Failed" and result.phase == "Failed"
    assert call["message"] == f'Get "http://127.0.0.1:{port}/x": dial tcp 127.0.0.1:{port}: connect: connection refused'
    assert "show" not in {n["displayName"] for n in result.status["status"]["nodes"].values()}
