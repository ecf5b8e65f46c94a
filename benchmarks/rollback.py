"""How fast `llmrelease rollout undo` puts all traffic back on `previous`, and how many requests fail meanwhile.

Real components: an MLflow sqlite store, two `transformers serve` processes (the demo champion and candidate
models; run `make demo-models` first), the model's HAProxy router, the real command line run as a child process.
Probe clients send chat completions through the router back to back (4 in parallel) and record (send time, version
that answered from HAProxy's `x-served-by`, ok).

Before each row v2 is champion with all traffic and v1 is `previous` (registry aliases and plane roles, as a
promotion leaves them). "time to 100%" runs from the moment the command starts (process start included) to the
send time of the first probe after which every probe was answered by v1. Rows, each repeated:

* `runtime API set weight` (the floor, the baseline of the ratios): the router's weights set in-process;
* `llmrelease rollout undo`, within the hot window: v1's server still runs (its `keep_previous_hot_s` window has
  not ended), so the command moves traffic before it even imports MLflow;
* `llmrelease rollback`, within the hot window: the same through the documented alias;
* `llmrelease rollout undo`, after the hot window: the plane reaped v1's server when its window ended (the plane's
  own `reap`), so the command starts v1, waits until it answers a real completion, and only then moves traffic.

Each command run is checked: exit 0, the path it reports (hot / cold) is the one the row arranged, and the
registry's `champion` is v1 afterwards; the script exits 1 when a check fails or a request failed.
The canary killed mid-analysis (kill -9 of the candidate) is covered by tests/chaos/test_canary_faults.py, not here.

Goals: under 1 s to 100% on `previous` within the hot window; 0 failed requests on every row.

    python benchmarks/rollback.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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
HOT_WINDOW_S = 600  # the spec's default keep_previous_hot_s
ROWS = {  # kind: (label, command after `llmrelease` or None for the in-process API, the path it must report)
    "api": ("runtime API set weight (baseline)", None, ""),
    "undo-hot": ("llmrelease rollout undo, hot window", ["rollout", "undo"], "hot previous"),
    "rollback-hot": ("llmrelease rollback (alias), hot window", ["rollback"], "hot previous"),
    "undo-cold": ("llmrelease rollout undo, after window", ["rollout", "undo"], "previous started cold"),
}
REPORTED = re.compile(r"all traffic on (\S+) (\d+\.\d+)s after the command started \(([^)]*)\)")


@dataclass
class Run:
    """One measured switch."""

    to_100: float  # seconds from the command's start to all traffic on v1 (nan: never)
    failed: int  # failed probe requests from the command's start to the end of the probes
    reported: float  # the switch time the command printed, from its own start (nan for the API row)


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
        time.sleep(1.0)
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
    """v2 champion serving 100%, v1 previous: hot (its window open), or reaped by the plane when `cold`."""
    if registry.get_alias(NAME, CHAMPION) != "1":
        registry.promote(NAME, "1", actor="bench", reason="arrange")
    registry.promote(NAME, "2", actor="bench", reason="arrange")
    with plane.locked(NAME) as state:
        servers = plane.ensure_servers(state, {"1": MODELS / "champion", "2": MODELS / "candidate"})
        router = plane.ensure_router(state, servers["2"])
        for version, server in servers.items():
            router.add_backend(server_name(version), server.address)
        router.set_weights({server_name("2"): 100})
        state.champion, state.previous, state.canary = "2", "1", None
        servers["1"].hot_until = time.time() + (-1 if cold else HOT_WINDOW_S)
        reaped = plane.reap(state)
    if reaped != (["1"] if cold else []):
        sys.exit(f"benchmarks/rollback.py: arranging {'cold' if cold else 'hot'} previous reaped {reaped}")


def _command(args: list[str], env: dict[str, str], path: str, checks: list[str]) -> float:
    """Run `llmrelease ARGS NAME`; return the switch time it reports; note failed checks."""
    command = [str(Path(sys.executable).parent / "llmrelease"), *args, NAME, "--actor", "bench"]
    done = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"benchmarks/rollback.py: {' '.join(command[1:])} failed: {done.stderr.strip()}")
    found = REPORTED.search(done.stdout)
    if found is None or found.group(1) != "1" or not found.group(3).startswith(path):
        checks.append(f"{' '.join(args)}: expected all traffic on 1 ({path}), the command said: {done.stdout.strip()}")
        return float("nan")
    return float(found.group(2))


def _measure(plane: LocalServing, registry: ModelRegistry, env: dict[str, str], kind: str, checks: list[str]) -> Run:
    _label, args, path = ROWS[kind]
    _arrange(plane, registry, cold=kind.endswith("cold"))
    reported = float("nan")
    with Probes(plane.router_url(plane.state(NAME))) as probes:
        started = time.perf_counter()
        if args is None:
            plane.router(plane.state(NAME)).set_weights({server_name("1"): 100})
        else:
            reported = _command(args, env, path, checks)
    to_100, failed = probes.switch_time(started, server_name("1"))
    if args is not None and registry.get_alias(NAME, CHAMPION) != "1":
        checks.append(f"{' '.join(args)}: champion is {registry.get_alias(NAME, CHAMPION)} afterwards, not 1")
    return Run(to_100, failed, reported)


def _world(home: Path) -> tuple[ModelRegistry, dict[str, str]]:
    """An MLflow sqlite store with v1 (champion model) and v2 (candidate), and the commands' environment."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "LLMRELEASE_HOME": str(home)}
    env.pop("LLMRELEASE_SERVING_URL", None)  # the commands drive this home's plane in-process, as this script does
    os.environ.pop("LLMRELEASE_SERVING_URL", None)
    os.environ.update(env)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for name in ("champion", "candidate"):  # with the onboarding manifest, so the serving plane can verify them
        register_local_version(client, NAME, MODELS / name)
    return ModelRegistry(client, tracking_uri=uri), env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (MODELS / "champion").is_dir() or not (MODELS / "candidate").is_dir():
        sys.exit("benchmarks/rollback.py: demo models missing: run `make demo-models` first")
    home = Path(tempfile.mkdtemp(prefix="llmrelease-bench-rollback-"))
    registry, env = _world(home)
    plane = LocalServing(home)
    rows: dict[str, list[Run]] = {kind: [] for kind in ROWS}
    checks: list[str] = []
    load = os.getloadavg()[0]
    try:
        for _ in range(args.repeat):
            for kind in rows:
                rows[kind].append(_measure(plane, registry, env, kind, checks))
    finally:
        plane.shutdown(NAME)
    _table(rows, load)
    for check in checks:
        print(f"CHECK FAILED: {check}")
    if checks or any(r.failed for runs in rows.values() for r in runs):
        sys.exit(1)


def _ms(values: list[float]) -> str:
    if any(v != v for v in values):  # nan: never switched / not reported
        return f"{'-':>9s} {'-':>7s}"
    return f"{statistics.median(values) * 1000:6.0f} ms {max(values) * 1000:4.0f} ms"


def _table(rows: dict[str, list[Run]], load: float) -> None:
    print(f"\n{os.cpu_count()} CPUs; 1-min load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"{'':40s} {'time to 100%':>17s} {'cmd reports':>17s}")
    print(f"{'path':40s} {'median':>9s} {'max':>7s} {'median':>9s} {'max':>7s} {'x base':>7s} {'failed':>6s}")
    base = statistics.median(r.to_100 for r in rows["api"])
    for kind, runs in rows.items():
        to_100 = [r.to_100 for r in runs]
        ratio = statistics.median(to_100) / base
        print(
            f"{ROWS[kind][0]:40s} {_ms(to_100)} {_ms([r.reported for r in runs])} "
            f"{ratio:6.1f}x {sum(r.failed for r in runs):6d}"
        )
    hot = max(r.to_100 for kind in ("undo-hot", "rollback-hot") for r in rows[kind])
    failed = sum(r.failed for runs in rows.values() for r in runs)
    print(
        f"\ngoal: within the hot window, all traffic on previous in under 1 s: "
        f"{'met' if hot < 1 else 'MISSED'} (worst {hot:.3f} s); failed requests over all rows: {failed} (goal 0)"
    )


if __name__ == "__main__":
    main()
