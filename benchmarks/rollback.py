"""How fast `llmrelease rollback` moves all traffic back to `previous`, and how many requests fail meanwhile.

Real components: an MLflow sqlite store, two `transformers serve` processes (the demo champion and candidate
models; run `make demo-models` first), the model's HAProxy router. Probe clients send requests through the
router back to back (4 in parallel) and record (send time, version that answered, ok).

"time to 100%" is measured from the moment the rollback command starts to the send time of the first probe after
which every probe was answered by `previous`. Rows, each repeated and reported as the median:

* `runtime API set weight` (the floor, the baseline of the ratios): the router's weights set in-process;
* `llmrelease rollback`, previous hot: the real command line, as an operator types it (process start included);
* `llmrelease rollback`, previous cold: its server was stopped (e.g. the hot window passed), so the command
  starts it and waits for a real completion before moving traffic.

Goal: under 1 s to 100% on `previous` with a hot previous, and 0 failed requests on every row.

    python benchmarks/rollback.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from registry.facade import ModelRegistry  # noqa: E402
from registry.tags import CHAMPION  # noqa: E402
from steps.rollout.serving.local import LocalServing, server_name  # noqa: E402
from tests.tiny_models import register_local_version  # noqa: E402

NAME = "bench-qa"
MODELS = REPO / "examples" / "models"


class Probes:
    """Back-to-back requests through the router from a few threads."""

    def __init__(self, url: str, workers: int = 4) -> None:
        self.url, self.workers = url + "/chat/completions", workers
        self.records: list[tuple[float, str, bool]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _loop(self) -> None:
        body = {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                sent = time.perf_counter()
                try:
                    response = client.post(self.url, json=body)
                    self.records.append((sent, response.headers.get("x-served-by", "?"), response.status_code == 200))
                except httpx.HTTPError:
                    self.records.append((sent, "?", False))

    def __enter__(self) -> Probes:
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def switch_time(self, started: float, target: str) -> tuple[float, int]:
        """(seconds from `started` to the send time of the first probe after the last one not served by target,
        failed requests after `started`)."""
        after = sorted(r for r in self.records if r[0] >= started)
        last_other = max((r[0] for r in after if r[1] != target), default=started)
        first_target = min((r[0] for r in after if r[1] == target and r[0] >= last_other), default=float("nan"))
        return first_target - started, sum(1 for r in after if not r[2])


def _arrange(plane: LocalServing, registry: ModelRegistry, *, cold: bool) -> None:
    """v2 champion serving 100%, v1 previous (hot, or stopped when `cold`)."""
    if registry.get_alias(NAME, CHAMPION) != "1":
        registry.promote(NAME, "1", actor="bench", reason="arrange")
    registry.promote(NAME, "2", actor="bench", reason="arrange")
    with plane.locked(NAME) as state:
        servers = plane.ensure_servers(state, {"1": MODELS / "champion", "2": MODELS / "candidate"})
        router = plane.ensure_router(state, servers["2"])
        for version, server in servers.items():
            router.add_backend(server_name(version), server.address)
        router.set_weights({"v2": 100})
        state.champion, state.previous, state.canary = "2", "1", None
        if cold:
            router.remove_backend("v1")
            plane.stop_server(state, "1")


def _rollback_cli(env: dict[str, str]) -> None:
    command = [str(Path(sys.executable).parent / "llmrelease"), "rollback", NAME, "--actor", "bench"]
    done = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"benchmarks/rollback.py: {done.stderr.strip()}")


def _measure(plane: LocalServing, registry: ModelRegistry, env: dict[str, str], kind: str) -> tuple[float, int]:
    _arrange(plane, registry, cold=kind == "cold")
    with Probes(plane.router_url(plane.state(NAME))) as probes:
        started = time.perf_counter()
        if kind == "api":
            plane.router(plane.state(NAME)).set_weights({"v1": 100})
        else:
            _rollback_cli(env)
    return probes.switch_time(started, "v1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (MODELS / "champion").is_dir():
        sys.exit("benchmarks/rollback.py: demo models missing: run `make demo-models` first")
    home = Path(tempfile.mkdtemp(prefix="llmrelease-bench-rollback-"))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LLMRELEASE_HOME": str(home)}
    os.environ.update(env)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for name in ("champion", "candidate"):  # with the onboarding manifest, so the serving plane can verify them
        register_local_version(client, NAME, MODELS / name)
    registry = ModelRegistry(client, tracking_uri=uri)
    plane = LocalServing(home)
    rows: dict[str, list[tuple[float, int]]] = {"api": [], "hot": [], "cold": []}
    try:
        for _ in range(args.repeat):
            for kind in rows:
                rows[kind].append(_measure(plane, registry, env, kind))
    finally:
        plane.shutdown(NAME)
    _table(rows)


def _table(rows: dict[str, list[tuple[float, int]]]) -> None:
    labels = {
        "api": "runtime API set weight (baseline)",
        "hot": "llmrelease rollback, previous hot",
        "cold": "llmrelease rollback, previous cold",
    }
    base = statistics.median(t for t, _ in rows["api"])
    print(f"\n{'path':38s} {'time to 100% (median)':>22s} {'min':>8s} {'max':>8s} {'x baseline':>11s} {'failed':>7s}")
    for kind, values in rows.items():
        times = [t for t, _ in values]
        med = statistics.median(times)
        print(
            f"{labels[kind]:38s} {med * 1000:19.0f} ms {min(times) * 1000:5.0f} ms {max(times) * 1000:5.0f} ms "
            f"{med / base:10.1f}x {sum(f for _, f in values):7d}"
        )
    hot = statistics.median(t for t, _ in rows["hot"])
    print(
        f"\ngoal: hot rollback under 1 s: {'met' if hot < 1 else 'MISSED'} ({hot:.3f} s); "
        f"failed requests during every switch: {sum(f for v in rows.values() for _, f in v)} (goal 0)"
    )


if __name__ == "__main__":
    main()
