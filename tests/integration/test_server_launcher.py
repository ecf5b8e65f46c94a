"""Model servers forked from the plane service's launcher: real `transformers serve` processes, the demo models.

Real components only: the launcher process (`python -m steps.rollout.serving.launcher`) with torch and transformers
imported, `transformers serve` forked from it, real chat completions. One launcher for the module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from steps.rollout.serving.base import ServingError
from steps.rollout.serving.launcher import ServerLauncher, server_env
from steps.rollout.serving.local import LocalServing, ready_check

MODEL = "demo-qa"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServing]:
    """A LocalServing whose servers the launcher forks; every server and the launcher stopped at the end."""
    plane = LocalServing(tmp_path_factory.mktemp("launcher-home"), start_timeout=240)
    launcher = plane.start_launcher()
    yield plane
    for model in plane.models():
        plane.shutdown(model)
    launcher.close()


def _gone(pid: int, timeout_s: float = 20.0) -> bool:
    """Whether `pid` has left the process table (not even a zombie) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.2)
    return False


def test_a_forked_server_answers_in_its_own_session_and_outlives_the_launcher(
    plane: LocalServing, demo_models: Path, tmp_path: Path
) -> None:
    """GIVEN a plane with a launcher WHEN a version is served THEN its server is the launcher's child, leads a
    session of its own, answers real completions, keeps answering after the launcher ends, and once stopped leaves
    no zombie behind (the launcher's children are reaped by the kernel)."""
    launcher = plane._launcher
    assert launcher is not None
    with plane.locked(MODEL) as state:
        server = plane.ensure_server(state, "1", demo_models / "champion")
    process = psutil.Process(server.pid)
    assert process.ppid() == launcher._process.pid
    assert os.getsid(server.pid) == server.pid
    assert ready_check(server.base_url, MODEL) is None
    assert "Uvicorn running" in (plane.model_dir(MODEL) / "v1" / "server.log").read_text()

    launcher.close()
    assert ready_check(server.base_url, MODEL) is None

    with plane.locked(MODEL) as state:
        plane.stop_server(state, "1")
    assert _gone(server.pid), f"server {server.pid} still in the process table: {psutil.Process(server.pid).status()}"


def test_a_plane_whose_launcher_ended_starts_a_plain_server(plane: LocalServing, demo_models: Path) -> None:
    """GIVEN the launcher has ended (the test above closed it) WHEN a version is served THEN the plane starts the
    server as its own plain process, which answers."""
    with plane.locked(MODEL) as state:
        server = plane.ensure_server(state, "2", demo_models / "candidate")
    assert psutil.Process(server.pid).ppid() == os.getpid()
    assert ready_check(server.base_url, MODEL) is None


def test_a_server_that_cannot_load_its_model_is_an_error_naming_its_log(tmp_path: Path) -> None:
    """GIVEN a launcher WHEN it forks a server for a folder that holds no model THEN the server exits and the plane
    says so in one error naming the version and the server's log."""
    plane = LocalServing(tmp_path / "home", start_timeout=120)
    launcher = plane.start_launcher()
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    try:
        with pytest.raises(ServingError, match=r"model server for demo-qa version 3 exited: .*server\.log"):
            with plane.locked(MODEL) as state:
                plane.ensure_server(state, "3", empty)
    finally:
        launcher.close()


def test_a_request_for_other_threads_is_refused_for_a_plain_start(tmp_path: Path) -> None:
    """GIVEN a launcher started for 1 compute thread WHEN asked to fork a server with OMP_NUM_THREADS=2 THEN it
    declines (the OpenMP runtime read its threads at import): the plane starts that one as a plain process."""
    env = server_env({**os.environ, "LLMRELEASE_SERVER_THREADS": "1"}, tmp_path / "hf-cache")
    launcher = ServerLauncher(env, tmp_path / "launcher.log")
    try:
        other = {**env, "OMP_NUM_THREADS": "2"}
        assert launcher.spawn(["transformers", "--help"], tmp_path, other, tmp_path / "server.log") is None
        assert launcher._process.poll() is None
    finally:
        launcher.close()
