"""Outages: a real `mlflow server` stopped mid-run, and a closed port, under the one retry policy.

Each call fails within the deadline (LLMRELEASE_SERVICE_DEADLINE_S, plus generous slack) with one full-length
line naming the service, its URL and what to check; finalize still writes the evidence bundle locally.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry import ModelRegistry
from registry.errors import TRANSIENT_EXIT_CODE, RegistryError
from steps.core.tracking import mlflow_client
from tests.fake_openai_server import unused_port
from tests.integration.test_register_server import BIN, _free_port, _start, _stop

DEADLINE_S = 3
SLACK_S = 15  # process start, a last attempt in flight: never assert tighter than deadline + generous slack
REPO = Path(__file__).resolve().parents[2]


def _assert_full_line(message: str, uri: str) -> None:
    assert message.startswith(f"MLflow tracking server at {uri} unreachable after "), message
    assert f"deadline {DEADLINE_S} s, LLMRELEASE_SERVICE_DEADLINE_S" in message, message
    assert message.endswith("start it or set MLFLOW_TRACKING_URI") and "\n" not in message, message


def test_mlflow_stopped_mid_run_fails_within_the_deadline_with_one_full_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a real mlflow server that answers, then is stopped (its port closes)
    WHEN a step's client and the registry facade call it again
    THEN each fails within the deadline plus slack with the full line, not after MLflow's minutes of retries."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "served"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    server = _start(command, f"{uri}/health", tmp_path / "mlflow-server.log")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("LLMRELEASE_SERVICE_DEADLINE_S", str(DEADLINE_S))
        client, registry = mlflow_client(), ModelRegistry.from_env()
        assert client.get_experiment_by_name("absent") is None and registry.get_alias("absent", "champion") is None
    finally:
        _stop(server)
    assert _closed(port)

    for call in (lambda: client.get_experiment_by_name("absent"), lambda: registry.get_alias("absent", "champion")):
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            call()
        assert time.monotonic() - started < DEADLINE_S + SLACK_S
        _assert_full_line(str(caught.value), uri)


def _closed(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_finalize_with_mlflow_on_a_closed_port_writes_local_evidence_and_says_where(tmp_path: Path) -> None:
    """GIVEN MLFLOW_TRACKING_URI on a closed port and a failed run of releases/demo.yaml
    WHEN the finalize step runs (as its Hera entry does, through run_step)
    THEN it exits 75 (the code Argo retries: docs/outages.md) with one line that names MLflow, its URL and the local
    evidence folder, which holds the bundle; no traceback."""
    uri = f"http://127.0.0.1:{unused_port()}"
    home = tmp_path / "home"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "LLMRELEASE_HOME": str(home),
        "LLMRELEASE_SERVICE_DEADLINE_S": str(DEADLINE_S),
        "PYTHONPATH": str(REPO),
    }
    code = (
        "from steps.core.entry import run_step\n"
        "from steps.finalize import Inputs, _run_here\n"
        f"inputs = Inputs(release='releases/demo.yaml', workflow_name='wf', workflow_uid='uid-1', "
        f"workflow_status='Failed', reports_dir={str(tmp_path / 'reports')!r})\n"
        "run_step('finalize', lambda: _run_here(inputs))\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 3 * DEADLINE_S + 60  # a few MLflow calls at most, plus imports

    assert done.returncode == TRANSIENT_EXIT_CODE, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    line = done.stderr.strip()
    bundle = home / "evidence" / "demo-qa" / "unregistered" / "uid-1"
    assert line.startswith(f"finalize: MLflow tracking server at {uri} unreachable after "), line
    assert line.endswith(f"the evidence bundle is kept locally at {bundle}"), line
    assert (bundle / "statement.json").is_file() and (bundle / "manifest.json").is_file()
