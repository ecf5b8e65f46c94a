"""A stopped router leaves no folder behind: `/tmp/llmrelease-router-*` (the serving plane's, stopped by
`llmrelease serving stop`) and `/tmp/llmrelease-haproxy-*` (a router's own temporary one), with a real haproxy."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from steps.core.proc import alive
from steps.rollout.routing import HAProxyRouter
from steps.rollout.serving.base import ServerState
from steps.rollout.serving.local import LocalServing

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
BACKENDS = {"v1": "127.0.0.1:9"}  # never called: the router only has to start and stop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pid(workdir: Path) -> int:
    return int((workdir / "haproxy.pid").read_text().split()[0])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serving_stop_removes_the_planes_router_folder(tmp_path: Path) -> None:
    """GIVEN the local serving plane's router running detached in /tmp/llmrelease-router-<key> WHEN the plane shuts
    the model down (what `llmrelease serving stop` calls) THEN haproxy is gone and so is the folder."""
    plane = LocalServing(tmp_path / "home")
    with plane.locked("demo-qa") as state:
        first = ServerState(version="1", port=9, pid=0, model_dir=str(tmp_path), started_at=time.time())
        plane.ensure_router(state, first)
        port = state.router_port
    folder = plane._router_dir("demo-qa")
    assert folder.name.startswith("llmrelease-router-") and folder.parent == Path(tempfile.gettempdir())
    assert port is not None and _accepts(port) and folder.is_dir()
    pid = _pid(folder)
    plane.shutdown("demo-qa")
    assert not alive(pid) and not _accepts(port)
    assert not folder.exists()


def test_a_detached_temporary_router_stopped_from_another_handle_removes_its_folder() -> None:
    """GIVEN a router with its own temporary folder (llmrelease-haproxy-*), detached WHEN attached again (as another
    process does) and stopped THEN the folder is gone."""
    port = _free_port()
    router = HAProxyRouter(BACKENDS, port=port).start()
    folder = router.socket_path.parent
    assert folder.name.startswith("llmrelease-haproxy-")
    router.detach()
    HAProxyRouter.attach(folder, port).stop()
    assert not folder.exists() and not _accepts(port)


def test_a_given_folder_keeps_what_others_put_there(tmp_path: Path) -> None:
    """GIVEN a router in a folder that also holds someone else's file WHEN stopped THEN haproxy's files are gone,
    the other file and so its folder stay."""
    folder = tmp_path / "router"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with HAProxyRouter(BACKENDS, port=_free_port(), workdir=folder):
        assert (folder / "haproxy.cfg").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_haproxy_is_not_reported_gone_while_its_threads_still_hold_the_port() -> None:
    """GIVEN a real (multi-threaded) haproxy, a child of this process
    WHEN terminate() returns, twenty times over
    THEN its frontend refuses every time: a main thread that exited first (shown as a zombie while the other threads
    still hold the socket) is not taken for the end of the process (seen on a loaded machine, 9 times in 40)."""
    from steps.core.proc import started, terminate

    for _ in range(20):
        port = _free_port()
        router = HAProxyRouter(BACKENDS, port=port).start()
        assert router._process is not None
        pid = router._process.pid
        terminate(pid, created=started(pid))
        assert not alive(pid) and not _accepts(port)
        router.stop()
