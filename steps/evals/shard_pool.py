"""The pool behind `steps.evals.sharding.run_suite`: Ray actors that each hold one engine, and their driver.

`ShardDriver` runs the shards of one run key that it claims (`steps.evals.shard_ledger`) on a pool of
`ShardWorker` actors, persisting each shard as it finishes, resubmitting a shard whose worker died, and waiting
for (then taking) the shards another driver of the same run key stores. The pool starts before any claim is
taken and only when a pending shard is claimable, and is stopped while this driver has nothing to run, so two
drivers sharing a Ray cluster's resources never wait on each other. ray and torch are imported lazily.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from steps.evals.cache import GenerationSettings
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import EvalError
from steps.evals.evaluate import evaluate_items
from steps.evals.ray_connect import connect_ray
from steps.evals.results import ExampleResult
from steps.evals.shard_ledger import ShardLedger
from steps.evals.suites import Suite, SuiteItem

__all__ = ["FaultInjection", "ShardDriver", "ShardOptions", "ShardStats", "ShardWorker"]


@dataclass(frozen=True)
class FaultInjection:
    """Test hook: the worker that starts shard `shard` kills itself (SIGKILL) while `marker` exists."""

    shard: int
    marker: str

    @classmethod
    def from_env(cls, value: str | None) -> FaultInjection | None:
        """Parse `<k>:<marker path>` (LLMRELEASE_EVAL_KILL_SHARD); None when unset or empty."""
        if not value:
            return None
        shard, _, marker = value.partition(":")
        if not shard.isdigit() or not marker:
            raise EvalError(f"LLMRELEASE_EVAL_KILL_SHARD={value!r}: expected <shard index>:<marker path>")
        return cls(int(shard), marker)

    def maybe_die(self, shard: int) -> None:
        """SIGKILL this process when starting the chosen shard and the marker exists (removed first)."""
        if shard == self.shard and os.path.exists(self.marker):
            os.unlink(self.marker)
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class ShardOptions:
    """How a suite is sharded and run.

    Attributes:
        workers: Actors (each holds one engine).
        shard_size: Items per shard; None picks ~4 shards per worker, clamped to 16..64 items.
        max_attempts: Tries per shard before giving up when workers keep dying.
        cores: Cores to share among the workers; None means the machine's (or the Ray cluster's) CPUs.
        gpus_per_worker: GPUs each actor asks Ray for (explicit, so an autoscaler sees the demand); 0: CPU only.
        claim_ttl_s: A shard claim not renewed for this long (its driver died) is taken over.
        fault: Test-only fault injection.
    """

    workers: int = 2
    shard_size: int | None = None
    max_attempts: int = 3
    cores: int | None = None
    gpus_per_worker: float = 0.0
    claim_ttl_s: float = 30.0
    fault: FaultInjection | None = None


@dataclass
class ShardStats:
    """What a `run_suite` call did: shards skipped (already stored), run, and attempts per shard run.

    Attributes:
        shared: Shards another driver of the same run key ran and stored while this one waited for them.
        backend: The engine kind the workers chose ("" when no worker started and no engine.json was kept).
        device: The device they run it on (cpu, cuda, remote).
        nodes: The Ray node id of the worker that ran each shard run here.
    """

    total: int = 0
    skipped: list[int] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    backend: str = ""
    device: str = ""
    nodes: dict[int, str] = field(default_factory=dict)

    @property
    def retried(self) -> list[int]:
        """Shards that needed more than one attempt (their worker died)."""
        return sorted(k for k, n in self.attempts.items() if n > 1)


class ShardWorker:
    """The Ray actor body: one engine, built once; answers one shard per `run_shard` call."""

    def __init__(
        self,
        engine: EngineSpec,
        num_threads: int | None,
        settings: GenerationSettings,
        fault: FaultInjection | None = None,
        use_gpu: bool = False,
    ) -> None:
        concrete, self.device = engine.on_worker(use_gpu)
        self.backend = concrete.kind
        self.engine = concrete.build(num_threads)
        self.settings = settings
        self.fault = fault

    def ready(self) -> dict[str, Any]:
        """Where and what: pid, Ray node id, backend and device chosen here (also proves the engine loaded)."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        return {"pid": os.getpid(), "node": node, "backend": self.backend, "device": self.device}

    def run_shard(self, suite_name: str, index: int, items: list[SuiteItem]) -> list[dict[str, Any]]:
        """Evaluate one shard; the results as JSON-able dicts, in item order."""
        if self.fault is not None:
            self.fault.maybe_die(index)
        results = evaluate_items(self.engine, suite_name, items, self.settings)
        return [r.model_dump(mode="json") for r in results]


class ShardDriver:
    """Runs the shards of one run key that this driver claims, on a pool of actors started when first needed."""

    def __init__(
        self,
        suite: Suite,
        engine: EngineSpec,
        settings: GenerationSettings,
        ledger: ShardLedger,
        shards: list[range],
        options: ShardOptions,
        stats: ShardStats,
    ) -> None:
        self.suite, self.engine, self.settings, self.ledger = suite, engine, settings, ledger
        self.shards, self.options, self.stats = shards, options, stats
        self.beat = min(1.0, options.claim_ttl_s / 3)
        self.actors: list[Any] = []
        self.where: list[dict[str, Any]] = []
        self.idle: list[int] = []
        self.running: dict[Any, tuple[int, int]] = {}
        self.done: dict[int, list[ExampleResult]] = {}

    def run(self, todo: list[int]) -> dict[int, list[ExampleResult]]:
        """Every shard of `todo`: run here (claimed, persisted as each finishes) or stored by another driver."""
        pending = deque(todo)
        try:
            with self.ledger.keep_alive():
                while pending or self.running:
                    self._submit(pending)
                    if self.running:
                        self._collect(pending)
                    else:  # every pending shard is claimed by another live driver: free the workers, wait
                        self._stop_actors()
                        time.sleep(self.beat)
                        self._pick_up(pending)
        finally:
            self._stop_actors()
            self.ledger.release_all()
        return self.done

    def _stop_actors(self) -> None:
        """Kill the pool (its resources may be what the driver holding the other claims waits for)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.where, self.idle = [], [], []

    def _ids(self, k: int) -> list[str]:
        return [self.suite.items[i].id for i in self.shards[k]]

    def _submit(self, pending: deque[int]) -> None:
        """Claim pending shards and hand them to idle actors.

        The pool starts before any claim is taken (while Ray starts or waits for resources, this driver holds no
        claim another driver could be waiting on), and only when some pending shard is claimable.
        """
        if not self.actors:
            if not any(self.ledger.claimable(k) for k in pending):
                return
            self._start(len(pending))
        for k in list(pending):
            if not self.idle:
                return
            if not self.ledger.claim(k):
                continue
            pending.remove(k)
            stored = self.ledger.finished(k, self._ids(k))
            if stored is not None:  # another driver stored it before this claim
                self.ledger.release(k)
                self.done[k] = stored
                self.stats.shared.append(k)
                continue
            w = self.idle.pop()
            self.stats.attempts[k] = self.stats.attempts.get(k, 0) + 1
            items = [self.suite.items[i] for i in self.shards[k]]
            self.running[self.actors[w].run_shard.remote(self.suite.name, k, items)] = (w, k)

    def _start(self, wanted: int) -> None:
        """Start the pool (`wanted` shards pending) and record the engine its workers chose."""
        connect_ray(self.options.cores)
        n = min(self.options.workers, wanted)
        self.actors, self.where = _start_actors(self.engine, self.settings, self.options, n)
        self.idle = list(range(n))
        chosen = sorted({(str(w["backend"]), str(w["device"])) for w in self.where})
        if len(chosen) != 1:
            raise EvalError(
                f"eval workers chose different engines {chosen}: give the Ray worker group one image and GPU "
                "type, so every worker evaluates the same way"
            )
        self.stats.backend, self.stats.device = chosen[0]
        self.ledger.record_engine(*chosen[0])

    def _collect(self, pending: deque[int]) -> None:
        """Wait for a shard (picking up others' meanwhile); store it, or resubmit it when its worker died."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=self.beat)
        if not ready:
            self._pick_up(pending)
            return
        w, k = self.running.pop(ready[0])
        self.idle.append(w)
        try:
            rows = ray.get(ready[0])
        except RayTaskError as e:
            raise EvalError(f"suite {self.suite.name} shard {k}: {_cause(e)}") from None
        except RayActorError as e:
            if self.stats.attempts[k] >= self.options.max_attempts:
                raise EvalError(
                    f"suite {self.suite.name} shard {k}: its worker died {self.stats.attempts[k]} times "
                    f"({_cause(e)}): check the workers' memory and logs"
                ) from None
            self.where[w] = _await_restart(self.actors[w], f"suite {self.suite.name} shard {k}")
            pending.appendleft(k)
            return
        self.stats.nodes[k] = str(self.where[w]["node"])
        results = [ExampleResult.model_validate(r) for r in rows]
        self.done[k] = self.ledger.record(k, self._ids(k), results)
        self.stats.ran.append(k)

    def _pick_up(self, pending: deque[int]) -> None:
        """Take the pending shards another driver has stored meanwhile."""
        for k in list(pending):
            stored = self.ledger.finished(k, self._ids(k))
            if stored is not None:
                pending.remove(k)
                self.done[k] = stored
                self.stats.shared.append(k)


def _start_actors(
    engine: EngineSpec, settings: GenerationSettings, options: ShardOptions, n: int
) -> tuple[list[Any], list[dict[str, Any]]]:
    """`n` actors, each with an equal share of the cores and `options.gpus_per_worker` GPUs; and their `ready()`."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    cores = options.cores or int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    gpus = options.gpus_per_worker if engine.kind != "http" else 0.0
    threads = max(1, cores // options.workers)
    cpus: float = threads if cores >= options.workers else round(cores / options.workers, 4)
    remote: Any = ray.remote(max_restarts=options.max_attempts, max_task_retries=0)(ShardWorker)
    actors: list[Any] = [
        remote.options(num_cpus=cpus, num_gpus=gpus).remote(engine, threads, settings, options.fault, gpus > 0)
        for _ in range(n)
    ]
    try:
        where: list[dict[str, Any]] = ray.get([a.ready.remote() for a in actors])
    except (RayActorError, RayTaskError) as e:
        for actor in actors:
            ray.kill(actor)
        raise EvalError(f"eval workers ({engine.name}) failed to start: {_cause(e)}") from None
    return actors, where


def _await_restart(actor: Any, what: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Block until a restarting actor answers again (Ray refuses calls while it restarts); its `ready()`."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            where: dict[str, Any] = ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return where
        except (ActorUnavailableError, GetTimeoutError) as e:
            if time.monotonic() >= deadline:
                raise EvalError(
                    f"{what}: its worker did not come back within {timeout_s:.0f}s: check the Ray cluster"
                ) from e
            time.sleep(0.2)
        except ActorDiedError as e:
            raise EvalError(f"{what}: its worker died and cannot restart ({_cause(e)})") from None


def _cause(error: Exception) -> str:
    """The root cause of a Ray error in one line (a worker's EvalError message as it was raised)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(error)):
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error:" in ln or "Error(" in ln]
    return (named[-1] if named else lines[0] if lines else type(error).__name__)[:300]
