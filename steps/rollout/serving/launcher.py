"""Model servers forked from a warm process: torch, transformers and the server's web stack imported once.

Of the ~10 s a `transformers serve` takes on 2 cores to answer its first completion, ~9 s are imports (torch,
transformers, its web stack, its handlers and what they pull in: cProfile of one server), the same in every server.
The plane service (`steps.rollout.serving.service`) therefore keeps one `ServerLauncher`: a child process
(`python -m steps.rollout.serving.launcher`) that imports them once (`_SERVER_MODULES`) and then forks one server
per request, each in a session of its own with its own folder, log and environment, so a server answers in
~0.6-0.8 s (the model's load and first completion; docs/performance.md). This is the "preload, then
fork" pattern of gunicorn's `preload_app` and of multiprocessing's forkserver; multiprocessing's forkserver itself
is not used because its children are the parent's managed workers (joined or terminated when the parent exits),
while a model server must outlive the process that started it, as a Deployment outlives the pod that applied it.

What a forked server cannot change: settings its libraries read when they are imported. OMP_NUM_THREADS (read by
the OpenMP runtime when torch loads) and the Hugging Face hub settings (HF_HUB_OFFLINE, HF_HUB_CACHE) are the
launcher's, given when it starts; a request whose OMP_NUM_THREADS differs from the launcher's is refused, and
`LocalServing` starts that server as a plain process instead. The launcher never runs a tensor operation itself, so
no OpenMP thread pool exists when it forks (what makes forking after `import torch` safe, as torch's DataLoader
workers rely on). Its children are reaped by the kernel (SIGCHLD ignored): a server that exits leaves no zombie.

Protocol, JSON lines on the launcher's stdin and stdout: it prints `{"ready": true}` once imported, then answers
each `{"argv", "cwd", "env", "log"}` with `{"pid": <server pid>}` or `{"error": "<one line>"}`; it exits when its
stdin closes (the plane service ended). LLMRELEASE_SERVER_PRELOAD=0 turns it off (every server a plain process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from steps.core.proc import alive, started, terminate

__all__ = ["Forked", "ServerLauncher", "preload_enabled", "server_env"]

THREADS_ENV = "LLMRELEASE_SERVER_THREADS"
"""Compute threads per model server (default 1): on a small machine the servers share the cores with the evals."""
_PRELOAD_ENV = "LLMRELEASE_SERVER_PRELOAD"
_READY_TIMEOUT_S = 120.0


def preload_enabled() -> bool:
    """Whether the plane service forks servers from a launcher (LLMRELEASE_SERVER_PRELOAD, default on)."""
    return os.environ.get(_PRELOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def server_env(base: Mapping[str, str], hf_cache: Path) -> dict[str, str]:
    """The environment of a model server: offline hub, its cache, its compute threads (OMP_NUM_THREADS)."""
    return {
        **base,
        "HF_HUB_CACHE": str(hf_cache),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": base.get(THREADS_ENV, "1"),
    }


class Forked:
    """A server the launcher forked: its pid, creation time and `poll()` like a `Popen`'s (the exit code unknown)."""

    returncode: int | None = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.created = started(pid)

    def poll(self) -> int | None:
        """None while it runs; -1 once it has exited (the launcher, its parent, reaped it: the code is lost)."""
        if self.returncode is None and not alive(self.pid, self.created):
            self.returncode = -1
        return self.returncode


class ServerLauncher:
    """The plane service's handle on its launcher process: started at once, used for every server it can fork."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        """Start the launcher (it imports in the background); `env` as `server_env` gives it, `log` its output."""
        self.threads = env.get("OMP_NUM_THREADS", "1")
        self._lock = threading.Lock()
        self._ready = False
        with log.open("ab") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "steps.rollout.serving.launcher"],
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )

    def spawn(self, argv: list[str], cwd: Path, env: Mapping[str, str], log: Path) -> Forked | None:
        """Fork a server running `argv` (a `transformers` CLI command line) in `cwd`, output to `log`.

        Returns None when the launcher cannot fork this one (another OMP_NUM_THREADS, or the launcher failed or
        ended): the caller starts a plain process instead.
        """
        if env.get("OMP_NUM_THREADS", "1") != self.threads:
            return None
        request = {"argv": argv, "cwd": str(cwd), "env": dict(env), "log": str(log)}
        with self._lock:
            if self._process.poll() is not None or not self._await_ready():
                return None
            answer = self._exchange(request)
        if answer is None or "pid" not in answer:
            return None
        return Forked(int(answer["pid"]))

    def _await_ready(self) -> bool:
        if not self._ready:
            answer = self._read(_READY_TIMEOUT_S)
            self._ready = bool(answer and answer.get("ready"))
        return self._ready

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any] | None:
        stdin = self._process.stdin
        if stdin is None:
            return None
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
        except OSError:
            return None
        return self._read(30.0)

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        """The launcher's next line as JSON; None when it ended, wrote no JSON, or said nothing for `timeout_s`."""
        stdout = self._process.stdout
        if stdout is None:
            return None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0]:
            if reader.is_alive():  # stuck: end it, so no later answer is read as another request's
                self.close()
            return None
        try:
            answer = json.loads(line[0])
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    def close(self) -> None:
        """Stop the launcher (the servers it forked keep running: they are in sessions of their own)."""
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        terminate(self._process.pid, timeout=5.0)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _preload() -> Any:
    """Import what every server imports (its CLI, its handlers, the model classes); return the CLI's main.

    The modules `transformers serve` imports only once it runs (its handlers, the model manager, continuous
    batching, the Auto classes and what they pull in: torch's compiler, the hub kernels) are most of its start.
    """
    import importlib

    import torch  # noqa: F401
    from transformers.cli.transformers import main

    for name in _SERVER_MODULES:
        importlib.import_module(name)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, ContinuousBatchingConfig

    del AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, ContinuousBatchingConfig  # resolved: imported
    return main


_SERVER_MODULES = (
    "uvicorn",
    "fastapi",
    "transformers.cli.serve",
    "transformers.cli.serving.chat_completion",
    "transformers.cli.serving.completion",
    "transformers.cli.serving.model_manager",
    "transformers.cli.serving.response",
    "transformers.cli.serving.server",
    "transformers.cli.serving.systemone",
    "transformers.cli.serving.transcription",
    "transformers.cli.serving.utils",
    "transformers.integrations.hub_kernels",
    "transformers.generation.continuous_batching",
    "transformers.modeling_utils",
)
"""Modules a `transformers serve` process imports on its way to its first completion (measured with cProfile)."""


def _fork(main: Any, request: dict[str, Any]) -> int:
    """Fork one server for `request`; the child never returns (it runs the server, then `os._exit`)."""
    argv, cwd, env, log = request["argv"], request["cwd"], request["env"], request["log"]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(fd)
        return pid
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(argv)
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reply(out: IO[str], answer: dict[str, Any]) -> None:
    out.write(json.dumps(answer) + "\n")
    out.flush()


def main() -> int:
    """The launcher: import once, say ready, fork a server per request line until stdin closes."""
    out = sys.stdout
    try:
        cli = _preload()
    except Exception as e:
        _reply(out, {"error": f"cannot import the model server: {type(e).__name__}: {e}"})
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the servers: no zombies
    _reply(out, {"ready": True})
    for line in sys.stdin:
        try:
            _reply(out, {"pid": _fork(cli, json.loads(line))})
        except (OSError, ValueError, KeyError, TypeError) as e:
            _reply(out, {"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
