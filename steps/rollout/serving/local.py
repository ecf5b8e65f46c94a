"""The local serving plane: one OpenAI-compatible server per model version and one HAProxy router per model.

This is what a cluster gives the pipeline in production (a vLLM Deployment + Service per version behind a Gateway
API HTTPRoute), made of real processes on this machine so that the same steps run in the demo and in CI:

* a **model server** per version is `transformers serve --device cpu <served-name>`, started detached (it outlives
  the step that started it, as a Deployment outlives the pod that applied it). It runs in its own folder where
  `<served-name>` is a symlink to the weights, so every version answers to the same model name, the registered
  model's name (what vLLM's `--served-model-name` does). It is *ready* only when a real chat completion
  succeeded, never merely because its port opened.
* a **router** per model is a detached `HAProxyRouter`; model versions are servers named `v<version>` added and
  removed live, and every response names the version that served it (`X-Served-By: v<version>`).
* a **canary guard** (`steps.rollout.serving.guard`): while a canary is in flight its step renews a heartbeat
  (`guard.json`) and a detached watchdog puts all traffic back on the champion when the heartbeat lapses.
* a small **state file** per model (`plane.json`) records the router port, the server of each version and which
  version plays which role (champion, previous, canary): what `llmrelease rollback` reads to move traffic back
  within a second, before it even imports MLflow.

Everything lives under `$LLMRELEASE_HOME/serving/<model>/`; concurrent steps on one machine serialise their
changes with a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from registry.errors import ReleaseError
from steps.core.proc import alive, started, terminate
from steps.rollout.routing.haproxy import HAProxyRouter
from steps.rollout.serving.base import PlaneState, Served, ServerState, ServingError, server_name
from steps.rollout.serving.guard import FileCanaryGuard
from steps.rollout.serving.launcher import Forked, ServerLauncher, server_env

__all__ = ["LocalServing", "ready_check"]

_READY_PROMPT = [{"role": "user", "content": "ping"}]
Started = subprocess.Popen[bytes] | Forked
"""A model server being started: a plain process, or one forked by the plane service's launcher."""


def ready_check(base_url: str, model: str, *, timeout: float = 10.0) -> str | None:
    """Send one real chat completion; return None when it succeeded, else why it did not."""
    try:
        response = httpx.post(
            base_url.rstrip("/") + "/chat/completions",
            json={"model": model, "messages": _READY_PROMPT, "max_tokens": 1},
            timeout=timeout,
        )
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        choices = response.json()["choices"]
        choices[0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {response.text[:200]}"
    return None


class LocalServing:
    """Start, find, route and stop the model servers of this machine: a `ServingPlane` (see the module docstring)."""

    def __init__(
        self,
        home: Path,
        *,
        start_timeout: float = 180.0,
        clock: Any = time.time,
        launcher: ServerLauncher | None = None,
    ) -> None:
        """Keep state under `home/serving/`.

        Args:
            home: LLMRELEASE_HOME.
            start_timeout: seconds a new model server may take to answer its first completion.
            clock: epoch seconds (tests pass a fake one to expire hot windows).
            launcher: Fork model servers from this warm process (the plane service's); None: plain processes.
        """
        self._root = home / "serving"
        self._start_timeout = start_timeout
        self._clock = clock
        self._launcher = launcher

    def start_launcher(self) -> ServerLauncher:
        """Start a launcher (`steps.rollout.serving.launcher`) for this plane's servers and use it from now on."""
        self._root.mkdir(parents=True, exist_ok=True)
        env = server_env(os.environ, self._root / "hf-cache")
        self._launcher = ServerLauncher(env, self._root / "launcher.log")
        return self._launcher

    # --- state -------------------------------------------------------------------------------------------------
    def model_dir(self, model: str) -> Path:
        """Where one model's router, servers and state live."""
        if not model or "/" in model or model.startswith("."):
            raise ServingError(f"model name {model!r} cannot name a folder: use the registered model's name")
        return self._root / model

    @contextlib.contextmanager
    def locked(self, model: str) -> Iterator[PlaneState]:
        """Hold the model's lock; yield its state and write it back when the block ends (even by an error)."""
        with self.lock_file(model).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state(model)
            try:
                yield state
            finally:  # also after an error: the file must name every process the block started
                self.record(state)

    def lock_file(self, model: str) -> Path:
        """The file whose `flock` is the model's lock (the plane service holds it for a remote lock's lease)."""
        folder = self.model_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / ".lock"

    def record(self, state: PlaneState) -> None:
        """Write the model's state file (atomically; call with the model's lock held)."""
        folder = self.model_dir(state.model)
        tmp = folder / "plane.json.tmp"
        tmp.write_text(state.model_dump_json(indent=2))
        os.replace(tmp, folder / "plane.json")

    def models(self) -> list[str]:
        """The models that have a recorded state under this home."""
        return sorted(p.parent.name for p in self._root.glob("*/plane.json")) if self._root.is_dir() else []

    def state(self, model: str) -> PlaneState:
        """The model's recorded state (empty when nothing was ever served)."""
        path = self.model_dir(model) / "plane.json"
        if not path.is_file():
            return PlaneState(model=model)
        return PlaneState.model_validate_json(path.read_text())

    # --- model servers -----------------------------------------------------------------------------------------
    def ensure_server(self, state: PlaneState, version: str, model_dir: Path | str | Served) -> ServerState:
        """Return the version's ready server, starting it when it is not running (call inside `locked`)."""
        return self.ensure_servers(state, {version: model_dir})[version]

    def ensure_servers(self, state: PlaneState, wanted: Mapping[str, Path | str | Served]) -> dict[str, ServerState]:
        """Ready servers for several served versions; those not running start together (call inside `locked`).

        `wanted` maps a served version to its weights: a folder, or its weights-store URI, which is fetched into
        this home's model cache and verified first (`steps.rollout.serving.weights.weights_folder`); or to a
        `Served`, those weights with a prompt (served from an overlay folder: `steps.rollout.serving.prompted`).
        """
        ready: dict[str, ServerState] = {}
        starting: list[tuple[ServerState, Started, Path]] = []
        for version, location in wanted.items():
            current = state.servers.get(version)
            if current is not None and self._still_answers(state, current):
                current.hot_until = None
                ready[version] = current
                continue
            if current is not None:
                terminate(current.pid, created=current.pid_created, group=True)
            starting.append(self._spawn(state.model, version, *self._served(state.model, version, location)))
        try:
            for server, process, log in starting:
                self._wait_ready(server, state.model, process, log)
        except BaseException:
            for _server, process, _log in starting:
                terminate(process.pid, group=True)
            raise
        for server, _process, _log in starting:
            state.servers[server.version] = ready[server.version] = server
        return ready

    def _served(self, model: str, version: str, location: Path | str | Served) -> tuple[Path, Path, str | None]:
        """(the folder to serve, the weights folder, the prompt's label) for one served version."""
        if not isinstance(location, Served):
            weights = self._folder(location)
            return weights, weights, None
        weights = self._folder(location.weights)
        prompt = location.prompt
        if prompt is None:
            return weights, weights, None
        from steps.rollout.serving.prompted import overlay_folder

        overlay = overlay_folder(weights, prompt, self.model_dir(model) / server_name(version) / "overlay")
        return overlay, weights, f"{prompt.name} v{prompt.version} ({prompt.digest})"

    def _folder(self, location: Path | str) -> Path:
        if isinstance(location, Path):
            return location
        from steps.rollout.serving.weights import weights_folder  # numpy and the eval cache: only when fetching

        return weights_folder(location, self._root.parent)

    def is_ready(self, state: PlaneState, server: ServerState) -> bool:
        """Whether the server's process runs and it answers a real completion now."""
        return self._still_answers(state, server, tries=1)

    def _still_answers(self, state: PlaneState, server: ServerState, tries: int = 3) -> bool:
        """Whether a running server answers a real completion within `tries` checks, a second apart.

        One slow answer on a busy machine is no reason to restart a server that may carry users' traffic (CI once
        restarted a hot champion that way); a process that is gone is not waited for.
        """
        for attempt in range(tries):
            if not alive(server.pid, server.pid_created):
                return False
            if ready_check(server.base_url, state.model) is None:
                return True
            if attempt + 1 < tries:
                time.sleep(1.0)
        return False

    def _spawn(
        self, model: str, version: str, served_dir: Path, model_dir: Path, prompt: str | None
    ) -> tuple[ServerState, Started, Path]:
        executable = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
        if not Path(executable).exists():
            raise ServingError("`transformers` CLI not found: install the project with `pip install -e .[ml]`")
        folder = self.model_dir(model) / server_name(version)
        (folder / "hf-cache").mkdir(parents=True, exist_ok=True)
        link = folder / model
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(served_dir.resolve(), target_is_directory=True)
        port = _free_port()
        # One compute thread per server: on a small machine the servers share the cores with the eval workers,
        # and oversubscribed threads made both slower than running them one after the other.
        env = server_env(os.environ, folder / "hf-cache")
        command = [executable, "serve", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
        command += [*_batching(), model]
        process: Started | None = None
        if self._launcher is not None:
            process = self._launcher.spawn(["transformers", *command[1:]], folder, env, folder / "server.log")
        if process is None:
            with (folder / "server.log").open("wb") as log:
                process = subprocess.Popen(
                    command,
                    cwd=folder,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        server = ServerState(
            version=version,
            port=port,
            pid=process.pid,
            pid_created=started(process.pid),
            model_dir=str(model_dir),
            started_at=self._clock(),
            prompt=prompt,
        )
        return server, process, folder / "server.log"

    def _wait_ready(self, server: ServerState, model: str, process: Started, log: Path) -> None:
        deadline = time.monotonic() + self._start_timeout
        why: str | None = "not started"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                code = f" with code {process.returncode}" if process.returncode != -1 else ""
                raise ServingError(
                    f"model server for {model} version {server.version} exited{code}: {_tail(log)} (see {log})"
                )
            why = ready_check(server.base_url, model, timeout=30.0)
            if why is None:
                return
            time.sleep(0.2)
        terminate(process.pid, group=True)
        raise ServingError(
            f"model server for {model} version {server.version} answered no completion within "
            f"{self._start_timeout:g}s (last: {why}); see {log}"
        )

    def stop_server(self, state: PlaneState, version: str) -> None:
        """Stop a version's server (call inside `locked`; take it out of the router first)."""
        server = state.servers.pop(version, None)
        if server is not None:
            terminate(server.pid, created=server.pid_created, group=True)

    def reap(self, state: PlaneState) -> list[str]:
        """Stop servers whose hot window ended and that play no role; return their versions."""
        now = self._clock()
        roles = {state.champion, state.canary}
        stale = [
            v for v, s in state.servers.items() if v not in roles and s.hot_until is not None and s.hot_until <= now
        ]
        router = self.router(state) if stale and state.router_port else None
        for version in stale:
            if router is not None:
                with contextlib.suppress(ReleaseError):
                    router.remove_backend(server_name(version))
            self.stop_server(state, version)
            if state.previous == version:
                state.previous = None
        return stale

    # --- canary guard ------------------------------------------------------------------------------------------
    def canary_guard(self, model: str, workflow_uid: str, candidate: str, deadline: float) -> FileCanaryGuard:
        """The heartbeat guard of `workflow_uid`'s canary of `candidate` (see `steps.rollout.serving.guard`)."""
        return FileCanaryGuard(
            self.model_dir(model),
            self._root.parent,
            model=model,
            workflow_uid=workflow_uid,
            candidate=candidate,
            deadline=deadline,
        )

    # --- router ------------------------------------------------------------------------------------------------
    def router(self, state: PlaneState) -> HAProxyRouter:
        """The model's running router (call inside `locked`)."""
        if state.router_port is None:
            raise ServingError(f"{state.model} has no router: deploy a version first (the deploy step does)")
        return HAProxyRouter.attach(self._router_dir(state.model), state.router_port)

    def ensure_router(self, state: PlaneState, first: ServerState) -> HAProxyRouter:
        """Attach to the model's router, or start it with `first` taking all traffic (call inside `locked`)."""
        if state.router_port is not None:
            try:
                return self.router(state)
            except ReleaseError:
                pass  # it died (killed, machine restart): start a fresh one below, on its port when still free
        port = state.router_port if state.router_port is not None and _bindable(state.router_port) else _free_port()
        router = HAProxyRouter(
            {server_name(first.version): first.address},
            port=port,
            workdir=self._router_dir(state.model),
            served_model=state.model,
        ).start()
        router.detach()
        state.router_port = port
        return router

    def _router_dir(self, model: str) -> Path:
        """The router's folder: short and fixed per model folder (a unix socket path must stay under ~100 bytes)."""
        key = hashlib.sha256(str(self.model_dir(model).resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"llmrelease-router-{key}"

    def router_url(self, state: PlaneState) -> str:
        """The OpenAI-compatible base URL clients call (…/v1)."""
        if state.router_port is None:
            raise ServingError(f"{state.model} has no router: deploy a version first")
        return f"http://127.0.0.1:{state.router_port}/v1"

    def shutdown(self, model: str) -> None:
        """Stop the model's router and every server (tests and `llmrelease serving stop`)."""
        with self.locked(model) as state:
            if state.router_port is not None:
                with contextlib.suppress(ReleaseError):
                    self.router(state).stop()
            for version in list(state.servers):
                self.stop_server(state, version)
            state.router_port = None
            state.champion = state.previous = state.canary = None


def _batching() -> list[str]:
    """`transformers serve`'s continuous batching: concurrent requests share forward passes, as vLLM's do.

    16 requests from 8 clients took 0.78 s against 1.27 s one at a time (demo candidate, 2 cores). The KV cache is
    sized explicitly (LLMRELEASE_SERVER_KV_BLOCKS blocks of 32 tokens, default 256: 8,192 tokens): left to itself
    on CPU it is sized from the machine's memory (14 GB for the demo model). LLMRELEASE_SERVER_BATCHING=0: off.
    """
    if os.environ.get("LLMRELEASE_SERVER_BATCHING", "1") == "0":
        return []
    blocks = os.environ.get("LLMRELEASE_SERVER_KV_BLOCKS", "256")
    return ["--continuous-batching", "--cb-block-size", "32", "--cb-num-blocks", blocks, "--cb-max-batch-tokens", "512"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])[:400]
    return "no log"
