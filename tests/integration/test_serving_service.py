"""The local serving plane as a service: steps drive it over HTTP (`RemoteServing`) and its servers outlive them.

Real components only: the service (`python -m steps.rollout.serving.service`) on loopback, `transformers serve`
with the demo models, HAProxy. One service and one set of model servers for the module (starting a server takes
most of the time); the tests run in file order and build on each other's state.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from steps.rollout.routing.base import RoutingError
from steps.rollout.serving.base import PlaneLocked, ServingError, server_name
from steps.rollout.serving.remote import RemoteServing

REPO = Path(__file__).resolve().parents[2]
MODEL = "demo-qa"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The plane service on a free loopback port, its home a fresh folder; SIGTERMed at the end."""
    home = tmp_path_factory.mktemp("plane-home")
    port = _free_port()
    log = (home / "service.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMRELEASE_SERVER_THREADS": "1"}
    command = [sys.executable, "-m", "steps.rollout.serving.service", "--home", str(home), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _accepts(port):
        assert process.poll() is None and time.monotonic() < deadline, (home / "service.log").read_text()
        time.sleep(0.1)
    info: dict[str, Any] = {"url": url, "home": home, "process": process, "log": home / "service.log"}
    yield info
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    log.close()


def _chat(router_url: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(router_url + "/chat/completions", json=body, timeout=60)


def test_a_step_deploys_through_the_service_and_the_server_outlives_it(
    service: dict[str, Any], demo_models: Path
) -> None:
    """GIVEN the plane service WHEN a separate step process deploys version 1 through RemoteServing and exits
    THEN the router keeps serving real completions from v1, and lists the served model at GET /v1/models."""
    step = textwrap.dedent(f"""
        from steps.rollout.serving.remote import RemoteServing
        plane = RemoteServing({service["url"]!r})
        with plane.locked({MODEL!r}) as state:
            server = plane.ensure_server(state, "1", {str(demo_models / "champion")!r})
            plane.ensure_router(state, server)
            state.champion = "1"
        print(plane.router_url(plane.state({MODEL!r})))
    """)
    done = subprocess.run(
        [sys.executable, "-c", step], cwd=REPO, capture_output=True, text=True, timeout=400, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    router_url = done.stdout.strip().splitlines()[-1]

    answer = _chat(router_url)
    assert answer.status_code == 200 and answer.headers["X-Served-By"] == "v1", answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    models = httpx.get(router_url + "/models", timeout=10)
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    assert RemoteServing(service["url"]).state(MODEL).champion == "1"


def test_a_split_set_through_the_service_is_the_live_split(service: dict[str, Any], demo_models: Path) -> None:
    """GIVEN v1 serving WHEN version 2 is served and the split set to 50/50 through the service
    THEN the router reads back 50/50 and real requests are answered by both versions."""
    plane = RemoteServing(service["url"])
    with plane.locked(MODEL) as state:
        server = plane.ensure_server(state, "2", demo_models / "candidate")
        router = plane.router(state)
        router.add_backend(server_name("2"), server.address)
        router.set_weights({"v1": 50, "v2": 50})
        state.canary = "2"
        assert set(router.backends) == {"v1", "v2"}
    assert plane.router(plane.state(MODEL)).weights() == {"v1": 50, "v2": 50}
    url = plane.router_url(plane.state(MODEL))
    served = Counter(_chat(url).headers["X-Served-By"] for _ in range(10))
    assert served["v1"] > 0 and served["v2"] > 0, served


def test_two_clients_contend_for_the_lock(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN client A holding the model's lock WHEN client B asks for it with a 1 s wait
    THEN B is refused in one line naming A; once A's block ends B gets the lock and sees A's change."""
    monkeypatch.setenv("LLMRELEASE_SERVING_LOCK_WAIT_S", "1")
    a = RemoteServing(service["url"], holder="client-A")
    b = RemoteServing(service["url"], holder="client-B")
    with a.locked(MODEL) as state:
        state.previous = "1"
        started = time.monotonic()
        with pytest.raises(PlaneLocked) as refused, b.locked(MODEL):
            pass
        assert 0.9 < time.monotonic() - started < 15
    assert "client-A" in str(refused.value) and "\n" not in str(refused.value)
    with b.locked(MODEL) as seen:
        assert seen.previous == "1"
        seen.previous = None


def test_a_holder_that_dies_loses_its_lease(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a holder that took the lock with a 1 s lease and vanished (never released)
    WHEN another client asks for the lock THEN it gets it once the lease lapsed."""
    taken = httpx.post(f"{service['url']}/v1/planes/{MODEL}/lock", json={"holder": "dead", "lease_s": 1}, timeout=30)
    assert taken.status_code == 200, taken.text
    monkeypatch.setenv("LLMRELEASE_SERVING_LOCK_WAIT_S", "10")
    started = time.monotonic()
    with RemoteServing(service["url"]).locked(MODEL) as state:
        assert state.champion == "1"
    assert 0.5 < time.monotonic() - started < 10


def test_service_errors_come_back_as_one_line(service: dict[str, Any]) -> None:
    """GIVEN the service WHEN a bad split, an unfetchable weights URI, a change without the lock, or a call to a
    service that is not there is made THEN each raises one line naming the object at fault and the fix."""
    plane = RemoteServing(service["url"])
    with plane.locked(MODEL) as state:
        with pytest.raises(RoutingError) as bad_split:
            plane.router(state).set_weights({"v9": 100})
        with pytest.raises(ServingError) as bad_uri:
            plane.ensure_server(state, "3", "s3://bucket/weights")
    with pytest.raises(ServingError) as unlocked:
        plane.stop_server(plane.state(MODEL), "2")
    with pytest.raises(ServingError) as absent:
        RemoteServing(f"http://127.0.0.1:{_free_port()}").state(MODEL)
    assert "unknown backend 'v9'" in str(bad_split.value)
    assert "s3://bucket/weights" in str(bad_uri.value)
    assert "not held by this caller" in str(unlocked.value)
    assert "llmrelease local up" in str(absent.value)
    for error in (bad_split, bad_uri, unlocked, absent):
        assert "\n" not in str(error.value)


class _OneWrite(socketserver.StreamRequestHandler):
    """The baseline: a kept-alive HTTP/1.1 server that sends each whole answer in one write (no ACK to wait for)."""

    def handle(self) -> None:
        while self.rfile.readline():
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def test_kept_alive_calls_do_not_wait_for_delayed_acks(service: dict[str, Any]) -> None:
    """GIVEN the service WHEN one client makes 20 calls on one kept-alive connection THEN they are about as fast as
    the same calls to a server that answers in one write. The service writes headers and body separately; with
    Nagle's algorithm on, the body of every call after the first waited for the client's delayed ACK (40 ms on
    Linux: 44 ms per canary heartbeat, ~8 s of every demo canary). A ratio of medians, not an absolute time."""

    def median_ms(url: str) -> float:
        times = []
        with httpx.Client() as kept:
            kept.get(url).raise_for_status()
            for _ in range(20):
                started = time.perf_counter()
                kept.get(url).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
        return sorted(times)[len(times) // 2]

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OneWrite) as baseline:
        baseline.daemon_threads = True
        threading.Thread(target=baseline.serve_forever, daemon=True).start()
        best = median_ms(f"http://127.0.0.1:{baseline.server_address[1]}/")
        ours = median_ms(service["url"] + f"/v1/planes/{MODEL}/state")
        baseline.shutdown()
    assert ours < 5 * best + 10, f"service {ours:.1f} ms per kept-alive call, one-write baseline {best:.1f} ms (median)"


def test_stopping_the_service_stops_its_routers_and_servers(service: dict[str, Any]) -> None:
    """GIVEN the service with a router and two model servers WHEN it gets SIGTERM (what `local down` sends)
    THEN it exits and nothing listens on the router's or the servers' ports any more."""
    state = RemoteServing(service["url"]).state(MODEL)
    ports = [state.router_port, *(s.port for s in state.servers.values())]
    assert len(ports) == 3 and all(p is not None and _accepts(p) for p in ports)
    service["process"].send_signal(signal.SIGTERM)
    assert service["process"].wait(timeout=60) == 0, service["log"].read_text()
    assert not any(_accepts(p) for p in ports if p is not None)
