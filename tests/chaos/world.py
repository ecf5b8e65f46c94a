"""The chaos suite's world: a real MLflow store, two versions of a tiny GPT-2, the local serving plane, users.

Every process is real: `transformers serve` per version, HAProxy in front, the canary step's heartbeat watchdog,
and user traffic from the project's own load generator (`steps.rollout.loadgen`), whose records say which requests
failed and when they were sent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from registry.facade import ModelRegistry
from steps.release.spec import load_spec
from steps.rollout.loadgen import LoadResult, LoadSpec, run_load
from steps.rollout.operations import Deployment, deploy
from steps.rollout.serving.base import ServingPlane
from steps.rollout.serving.guard import read_heartbeat
from steps.rollout.serving.local import LocalServing
from steps.rollout.serving.remote import SERVING_URL_ENV
from tests.tiny_models import register_local_version

NAME = "tiny-qa"
REPO = Path(__file__).resolve().parents[2]


def fast_spec(steps: list[int]) -> Any:
    """releases/demo.yaml for NAME with `steps` and a fast analysis (2 measurements 0.2 s apart, 6 probes)."""
    demo = load_spec(str(REPO / "releases" / "demo.yaml"))
    analysis = demo.rollout.analysis.model_copy(update={"interval_s": 0.2, "count": 2, "probes": 6})
    return demo.model_copy(
        update={
            "model": demo.model.model_copy(update={"name": NAME}),
            "rollout": demo.rollout.model_copy(update={"steps": steps, "analysis": analysis}),
        }
    )


class World:
    """One test's registry (versions 1 and 2 of the same tiny weights), serving plane and home."""

    def __init__(self, root: Path, model_dir: Path) -> None:
        """Register two versions under `root` (MLflow sqlite store, LLMRELEASE_HOME = root/home)."""
        self.home = root / "home"
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.registry = ModelRegistry(self.client, tracking_uri=self.uri, artifact_root=root / "artifacts")
        self.client.create_registered_model(NAME)
        for version in ("1", "2"):
            weights = root / f"weights-v{version}"
            shutil.copytree(model_dir, weights)
            (weights / "release.txt").write_text(version)
            register_local_version(self.client, NAME, weights)
        self.plane = LocalServing(self.home)

    def deploy(self, version: str, uid: str, plane: ServingPlane | None = None) -> Deployment:
        """The deploy step's operation: lease, servers, router (on `plane`, default this process's `LocalServing`)."""
        plane, home = plane or self.plane, self.home
        return deploy(self.registry, self.client, plane, home, model=NAME, candidate=version, workflow_uid=uid)

    def weights(self) -> dict[str, int]:
        """The router's live split."""
        return self.plane.router(self.plane.state(NAME)).weights()

    def served_by(self, n: int) -> list[str]:
        """Who served `n` requests through the router now."""
        url = self.plane.router_url(self.plane.state(NAME)) + "/chat/completions"
        body = {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        return [httpx.post(url, json=body, timeout=30).headers.get("x-served-by", "?") for _ in range(n)]


class PlaneProcess:
    """The local profile's serving plane service (`python -m steps.rollout.serving.service`) over a world's home.

    As `llmrelease local up` runs it: its own session, the home and the registry in its environment (its canary
    watchdogs release a dead canary's lease through MLflow). The servers, routers and watchdogs it starts are its
    children, outside every pod; `stop` SIGTERMs it, which stops every router and model server it owns.
    """

    def __init__(self, home: Path, log: Path) -> None:
        """Start the service over `home` on a free loopback port, its output in `log`; wait for /healthz."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        env = {**os.environ, "LLMRELEASE_HOME": str(home), "PYTHONPATH": str(REPO)}
        env.pop(SERVING_URL_ENV, None)
        argv = [sys.executable, "-m", "steps.rollout.serving.service", "--home", str(home), "--port", str(port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self._healthy, 60, f"the serving plane service at {self.url}")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the serving plane service exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM the service and wait for it (it stops its routers and servers); SIGKILL after 60 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Users:
    """Open-loop user traffic through the router (the load generator in a thread) for `duration_s` seconds."""

    def __init__(self, router_url: str, duration_s: float, rate: float = 5.0) -> None:
        """Offer `rate` streaming requests/s to `router_url` for `duration_s` seconds, starting now."""
        self.spec = LoadSpec(
            base_url=router_url,
            model=NAME,
            rate=rate,
            requests=None,
            duration_s=duration_s,
            warmup=0,
            max_tokens=2,
            request_timeout_s=10,
            stall_timeout_s=5,
        )
        self.result: LoadResult | None = None
        self.started_at = time.time()  # the measured phase starts at or just after this (no warm-up)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.result = asyncio.run(run_load(self.spec))

    def figures(self, aborted_at: float) -> dict[str, int]:
        """Wait for the run to end; requests, failures, and requests/failures sent after `aborted_at` (epoch s)."""
        self._thread.join(timeout=self.spec.hard_deadline_s() + 30)
        assert self.result is not None, "the load generator did not finish"
        records = self.result.records
        after = [r for r in records if self.started_at + r.sent_s > aborted_at]
        errors = sorted({f"{r.error} {r.status} {r.detail[:80]}" for r in after if not r.ok})
        if errors:
            print(f"failed after the abort: {errors}")
        return {
            "requests": len(records),
            "failed": sum(1 for r in records if not r.ok),
            "after_abort": len(after),
            "failed_after_abort": sum(1 for r in after if not r.ok),
        }


def restored_beat(world: World, limit: float) -> Any:
    """The heartbeat once the watchdog restored the champion (within `limit` s of now) and then recorded what it did
    in the registry (within 30 s more: the detached watchdog imports MLflow only then, seconds on a busy machine)."""
    folder = world.plane.model_dir(NAME)
    wait_for(lambda: (b := read_heartbeat(folder)) and (b.restored_at or b.registry), limit, "restore")
    return wait_for(lambda: (b := read_heartbeat(folder)) and b.registry and b, 30, "the registry outcome")


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` every 50 ms until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
