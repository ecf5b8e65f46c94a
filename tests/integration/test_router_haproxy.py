"""HAProxyRouter against a real HAProxy and two real HTTP model servers on 127.0.0.1.

Each fake model version is a stdlib ThreadingHTTPServer that answers with its own name, so a response body and
the `X-Served-By` header HAProxy adds both say which version served it. Weights are read back from HAProxy's
runtime API, never from the router's memory.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from steps.rollout.routing import HAProxyRouter, Router, RoutingError, canary_split

if shutil.which("haproxy") is None:
    if os.environ.get("CI"):
        pytest.fail(
            "haproxy is not on PATH in CI: .ci/install-system-packages.sh must run before the tests", pytrace=False
        )
    pytest.skip(
        "haproxy not on PATH: run .ci/install-system-packages.sh as root (Debian puts it in /usr/sbin)",
        allow_module_level=True,
    )

STABLE, CANARY = "stable", "canary"


def _version_server(version: str) -> ThreadingHTTPServer:
    body = version.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), name=f"model-{version}", daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def model_servers() -> Iterator[dict[str, str]]:
    servers = {version: _version_server(version) for version in (STABLE, CANARY)}
    try:
        yield {version: f"127.0.0.1:{server.server_port}" for version, server in servers.items()}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def router(model_servers: dict[str, str]) -> Iterator[HAProxyRouter]:
    for attempt in range(3):  # another test run may grab the free port between picking and binding it
        candidate = HAProxyRouter(model_servers, port=_free_port(), weights={STABLE: 100, CANARY: 0})
        try:
            candidate.start()
            break
        except RoutingError:
            if attempt == 2:
                raise
    try:
        yield candidate
    finally:
        candidate.stop()


@pytest.fixture
def client(router: HAProxyRouter) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url, timeout=10.0) as http:
        yield http


def _served_by(client: httpx.Client, requests: int) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(requests):
        response = client.get("/v1/chat/completions")
        assert response.status_code == 200
        assert response.headers["X-Served-By"] == response.text  # the header names the version that answered
        served[response.text] += 1
    return served


def _live_weight(router: HAProxyRouter, server: str) -> int:
    return int(router.runtime(f"get weight models/{server}").split()[0])


def test_router_implements_the_interface(router: HAProxyRouter) -> None:
    assert isinstance(router, Router)


def test_starts_with_everything_on_stable(router: HAProxyRouter, client: httpx.Client) -> None:
    # GIVEN a router started at 100/0  WHEN requests arrive  THEN every one is served by stable
    assert router.weights() == {STABLE: 100, CANARY: 0}
    assert _served_by(client, 100) == Counter({STABLE: 100})


def test_live_split_then_back_to_stable(router: HAProxyRouter, client: httpx.Client) -> None:
    pid = router.runtime("show info").split("Pid: ")[1].split()[0]

    # WHEN the split moves to 75/25 live  THEN about a quarter of requests reach the canary
    router.set_weights(canary_split(25))
    assert router.weights() == {STABLE: 75, CANARY: 25}
    served = _served_by(client, 200)
    assert 15 <= 100 * served[CANARY] / 200 <= 35, served

    # WHEN it goes back to 100/0  THEN the canary gets nothing, and the same haproxy process did it all (no reload)
    router.set_weights({STABLE: 100, CANARY: 0})
    assert _live_weight(router, CANARY) == 0
    assert _served_by(client, 100) == Counter({STABLE: 100})
    assert router.runtime("show info").split("Pid: ")[1].split()[0] == pid


def test_full_shift_to_canary(router: HAProxyRouter, client: httpx.Client) -> None:
    router.set_weights(canary_split(100))
    assert router.weights() == {STABLE: 0, CANARY: 100}
    assert _served_by(client, 50) == Counter({CANARY: 50})


def test_live_weight_changes_drop_no_request(router: HAProxyRouter) -> None:
    # GIVEN continuous traffic from two client threads
    stop = threading.Event()
    served: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=router.url, timeout=10.0) as http:
            while not stop.is_set():
                try:
                    response = http.get("/")
                    outcome = response.text if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as e:
                    outcome = f"{type(e).__name__}: {e}"
                with lock:
                    if outcome in (STABLE, CANARY):
                        served[outcome] += 1
                    else:
                        failures.append(outcome)

    def wait_for_more(requests: int) -> None:
        with lock:
            target = sum(served.values()) + len(failures) + requests
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if sum(served.values()) + len(failures) >= target:
                    return
            time.sleep(0.01)
        raise AssertionError(f"load made no progress: {served} {failures}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        # WHEN the weights change live several times, including full shifts both ways
        for split in (canary_split(10), canary_split(50), canary_split(100), canary_split(5), {STABLE: 100}):
            router.set_weights(split)
            wait_for_more(40)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    # THEN no request failed and both versions served some
    assert failures == []
    assert served[STABLE] > 0 and served[CANARY] > 0, served


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({STABLE: 80, CANARY: 30}, "sum to 110"),
        ({STABLE: 50, "ghost": 50}, "unknown backend 'ghost'"),
        ({STABLE: 110, CANARY: -10}, "from 0 to 100"),
        ({STABLE: 60, CANARY: -10}, "'canary' is -10"),
        ({STABLE: 75.0, CANARY: 25}, "integer"),
        ({}, "empty"),
    ],
)
def test_bad_weights_are_refused_and_change_nothing(
    router: HAProxyRouter, weights: dict[str, int], message: str
) -> None:
    # GIVEN a live 90/10 split
    router.set_weights(canary_split(10))

    # WHEN bad weights are asked for  THEN RoutingError names the bad weight, and HAProxy still holds 90/10
    with pytest.raises(RoutingError, match=message):
        router.set_weights(weights)
    assert (_live_weight(router, STABLE), _live_weight(router, CANARY)) == (90, 10)


def test_stop_ends_haproxy_and_cleans_up(model_servers: dict[str, str]) -> None:
    port = _free_port()
    with HAProxyRouter(model_servers, port=port) as router:
        socket_dir = router.socket_path.parent
        assert router.running
        assert router.weights() == {STABLE: 100, CANARY: 0}  # default: the first backend gets everything
    assert not router.running
    assert not socket_dir.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(router.url, timeout=2.0)
    router.stop()  # idempotent


def test_busy_port_is_reported(model_servers: dict[str, str]) -> None:
    """GIVEN a port another process listens on WHEN a router starts there THEN one line says it is in use, and no
    haproxy runs (the other listener is never taken for a ready router, however slow haproxy is to fail)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        router = HAProxyRouter(model_servers, port=port)
        with pytest.raises(RoutingError, match=f"127.0.0.1:{port} is already in use: stop what listens there"):
            router.start()
        assert not router.running


def test_a_config_haproxy_refuses_is_reported_with_its_log(model_servers: dict[str, str]) -> None:
    """GIVEN a server name haproxy cannot resolve WHEN the router starts THEN it says haproxy exited, with the log."""
    router = HAProxyRouter({"v1": "no-such-host.invalid:8001"}, port=_free_port())
    with pytest.raises(RoutingError, match="haproxy exited with code"):
        router.start()
    assert not router.running


def test_missing_haproxy_names_the_package(
    model_servers: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a PATH on which no haproxy can be found
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    # WHEN the router starts  THEN the error names the Debian package to install
    router = HAProxyRouter(model_servers, port=_free_port())
    with pytest.raises(RoutingError, match=r"haproxy not found: install the Debian package `haproxy`"):
        router.start()
    assert not router.running


def test_the_router_lists_its_served_model_like_vllm(model_servers: dict[str, str]) -> None:
    """GIVEN a router started with served_model="demo-qa" (what the local plane passes)
    WHEN GET /v1/models is asked THEN HAProxy answers it itself with that one model in vLLM's shape, while every
    other request still goes to the backends; a name that cannot be quoted safely is refused before anything runs."""
    with HAProxyRouter(model_servers, port=_free_port(), served_model="demo-qa") as router:
        listed = httpx.get(f"{router.url}/v1/models", timeout=5)
        assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
        assert listed.json()["object"] == "list"
        assert [(m["id"], m["object"]) for m in listed.json()["data"]] == [("demo-qa", "model")]
        assert httpx.get(f"{router.url}/v1/other", timeout=5).text == STABLE
    with pytest.raises(RoutingError, match='served model name "demo\'qa" is not a plain name'):
        HAProxyRouter(model_servers, port=_free_port(), served_model="demo'qa")
