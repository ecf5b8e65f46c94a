"""A small, real OpenAI-compatible streaming HTTP server for tests and benchmarks.

Hand-written HTTP/1.1 on `asyncio.start_server` (keep-alive, chunked transfer for SSE), so it costs little CPU
and its timing is known: the first token leaves `service_ms` after the request arrived, then one token every
`itl_ms`. Fault modes: every Nth request answers 503 (`fail_every`), every Nth request stalls mid-stream after
`stall_after` tokens (`stall_every`), one chosen request is held `slow_ms` longer (`slow_request`), and a refused
endpoint is just a closed port (`unused_port()`).

Routes: `POST /v1/chat/completions` (stream true/false), `GET /v1/ping` (one JSON body after `service_ms`, for
`wrk`), `GET /v1/models`.

Run it: `python tests/fake_openai_server.py --port 8001 --service-ms 50 --tokens 16 --itl-ms 5`.
Import it: `with FakeServer(FakeConfig(service_ms=50)) as server: server.base_url`.
"""

import argparse
import asyncio
import contextlib
import json
import socket
import threading
from dataclasses import dataclass, field

__all__ = ["FakeConfig", "FakeServer", "serve", "unused_port", "main"]


@dataclass(frozen=True)
class FakeConfig:
    """Timing and fault behaviour of the fake server."""

    service_ms: float = 50.0
    tokens: int = 8
    itl_ms: float = 0.0
    fail_every: int = 0
    stall_every: int = 0
    stall_after: int = 2
    stall_s: float = 3600.0
    slow_request: int = -1
    slow_ms: float = 0.0
    send_usage: bool = True


@dataclass
class _State:
    config: FakeConfig
    chat_count: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, target, headers, body


def _head(status: str, ctype: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{framing}\r\nConnection: keep-alive\r\n\r\n".encode()


def _json_response(status: str, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    return _head(status, "application/json", len(body)) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(payload: object) -> bytes:
    return _chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _delta(model: str, text: str | None, finish: str | None = None) -> dict[str, object]:
    delta = {"content": text} if text is not None else {}
    return {
        "id": "fake",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _stream_chat(writer: asyncio.StreamWriter, cfg: FakeConfig, model: str, stall: bool) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(_head("200 OK", "text/event-stream", None))
    for i in range(cfg.tokens):
        if stall and i == cfg.stall_after:
            await writer.drain()
            await asyncio.sleep(cfg.stall_s)
        if i:  # token i is due at start + i * itl (absolute schedule: no drift)
            await asyncio.sleep(max(0.0, start + i * cfg.itl_ms / 1000 - loop.time()))
        writer.write(_sse(_delta(model, f" t{i}")))
        await writer.drain()
    writer.write(_sse(_delta(model, None, "stop")))
    if cfg.send_usage:
        usage = {"prompt_tokens": 4, "completion_tokens": cfg.tokens, "total_tokens": 4 + cfg.tokens}
        writer.write(
            _sse({"id": "fake", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
        )
    writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


async def _chat(writer: asyncio.StreamWriter, state: _State, body: bytes) -> None:
    cfg = state.config
    index = state.chat_count
    state.chat_count += 1
    nth = index + 1
    req = json.loads(body or b"{}")
    model = str(req.get("model", "fake"))
    delay = cfg.service_ms + (cfg.slow_ms if index == cfg.slow_request else 0.0)
    await asyncio.sleep(delay / 1000)
    if cfg.fail_every and nth % cfg.fail_every == 0:
        writer.write(_json_response("503 Service Unavailable", {"error": {"message": "fake overload"}}))
        return
    stall = bool(cfg.stall_every and nth % cfg.stall_every == 0)
    if req.get("stream"):
        await _stream_chat(writer, cfg, model, stall)
        return
    await asyncio.sleep(max(0, cfg.tokens - 1) * cfg.itl_ms / 1000)
    text = "".join(f" t{i}" for i in range(cfg.tokens))
    writer.write(
        _json_response(
            "200 OK",
            {
                "id": "fake",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": cfg.tokens, "total_tokens": 4 + cfg.tokens},
            },
        )
    )


async def _route(writer: asyncio.StreamWriter, state: _State, method: str, target: str, body: bytes) -> None:
    path = target.split("?", 1)[0]
    if method == "POST" and path.endswith("/chat/completions"):
        await _chat(writer, state, body)
    elif method == "GET" and path.endswith("/ping"):
        await asyncio.sleep(state.config.service_ms / 1000)
        writer.write(_json_response("200 OK", {"ok": True}))
    elif method == "GET" and path.endswith("/models"):
        writer.write(_json_response("200 OK", {"object": "list", "data": [{"id": "fake", "object": "model"}]}))
    else:
        writer.write(_json_response("404 Not Found", {"error": {"message": f"no route {method} {path}"}}))


async def _handle(state: _State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    task = asyncio.current_task()
    if task is not None:
        state.tasks.add(task)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while (request := await _read_request(reader)) is not None:
            method, target, _, body = request
            await _route(writer, state, method, target, body)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
        pass
    finally:
        writer.close()
        if task is not None:
            state.tasks.discard(task)


async def serve(config: FakeConfig, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start serving on the running loop; returns the asyncio server (its socket holds the bound port)."""
    state = _State(config)
    server = await asyncio.start_server(lambda r, w: _handle(state, r, w), host, port, backlog=1024)
    server._fake_state = state  # type: ignore[attr-defined]  # so FakeServer can cancel stalled handlers
    return server


class FakeServer:
    """The fake server on its own event loop in a daemon thread; a context manager."""

    def __init__(self, config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or FakeConfig()
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "FakeServer":
        """Bind and start serving; returns self."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(serve(self.config, self.host, self.port), self._loop)
        self._server = fut.result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Close the listener, cancel handlers (stalled ones included) and stop the loop."""
        if self._server is not None:
            server = self._server

            async def _close() -> None:
                server.close()
                for task in list(server._fake_state.tasks):  # type: ignore[attr-defined]
                    task.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=5)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--service-ms", type=float, default=50.0)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--itl-ms", type=float, default=0.0)
    p.add_argument("--fail-every", type=int, default=0, help="answer 503 to every Nth chat request (1 = all)")
    p.add_argument("--stall-every", type=int, default=0, help="stall every Nth stream mid-way (1 = all)")
    p.add_argument("--stall-after", type=int, default=2)
    p.add_argument("--slow-request", type=int, default=-1, help="0-based index of the one request to slow")
    p.add_argument("--slow-ms", type=float, default=0.0)
    a = p.parse_args(argv)
    cfg = FakeConfig(
        service_ms=a.service_ms,
        tokens=a.tokens,
        itl_ms=a.itl_ms,
        fail_every=a.fail_every,
        stall_every=a.stall_every,
        stall_after=a.stall_after,
        slow_request=a.slow_request,
        slow_ms=a.slow_ms,
    )

    async def _forever() -> None:
        server = await serve(cfg, a.host, a.port)
        print(f"fake OpenAI server on http://{a.host}:{server.sockets[0].getsockname()[1]}/v1", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_forever())


if __name__ == "__main__":
    main()
