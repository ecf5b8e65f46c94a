"""The driver behind `steps.evals.sharding.run_suite`: shards of one run key on a pool of Ray actors.

`ShardDriver` runs the shards of one run key that it claims (`steps.evals.shard_ledger`) on a `WorkerPool` of
`ShardWorker` actors (`steps.evals.worker_pool`: thread budget, one engine per actor; the step may keep the pool,
and the model it holds, across suites), persisting each shard as it finishes, resubmitting a shard whose worker
died, and waiting for (then taking) the shards another driver of the same run key stores. The pool starts
before any claim is taken and only when a pending shard is claimable, and is stopped while this driver has nothing
to run, so two drivers sharing a Ray cluster's resources never wait on each other (warm workers are only let go:
the other driver may be using them). ray and torch are imported lazily.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from steps.evals.cache import GenerationSettings
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import EvalError
from steps.evals.results import ExampleResult
from steps.evals.shard_ledger import ShardLedger
from steps.evals.suites import Suite
from steps.evals.worker_pool import FaultInjection, ShardOptions, ShardWorker, WorkerPool, cause_of

__all__ = ["FaultInjection", "ShardDriver", "ShardOptions", "ShardStats", "ShardWorker", "WorkerPool"]


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
        pool: WorkerPool,
    ) -> None:
        self.suite, self.engine, self.settings, self.ledger = suite, engine, settings, ledger
        self.shards, self.options, self.stats, self.pool = shards, options, stats, pool
        self.beat = min(1.0, options.claim_ttl_s / 3)
        self.started = False
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
        except BaseException:
            self._stop_actors()  # shards may still run on them: a kept pool must not serve the next suite
            raise
        finally:
            self.ledger.release_all()
        return self.done

    def _stop_actors(self) -> None:
        """Kill the pool (its resources may be what the driver holding the other claims waits for)."""
        self.pool.stop()
        self.started, self.idle = False, []

    def _ids(self, k: int) -> list[str]:
        return [self.suite.items[i].id for i in self.shards[k]]

    def _submit(self, pending: deque[int]) -> None:
        """Claim pending shards and hand them to idle actors.

        The pool starts before any claim is taken (while Ray starts or waits for resources, this driver holds no
        claim another driver could be waiting on), and only when some pending shard is claimable.
        """
        if not self.started:
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
            call = self.pool.submit(w, self.engine, self.suite.name, k, items, self.settings)
            self.running[call] = (w, k)

    def _start(self, wanted: int) -> None:
        """Start (or reuse) the pool for `wanted` shards pending, holding this engine; record the engine chosen."""
        size = self.pool.start(self.engine, wanted)
        self.started, self.idle = True, list(range(size))
        first = self.pool.where[0]
        self.stats.backend, self.stats.device = str(first["backend"]), str(first["device"])
        self.ledger.record_engine(self.stats.backend, self.stats.device)

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
            raise EvalError(f"suite {self.suite.name} shard {k}: {cause_of(e)}") from None
        except RayActorError as e:
            if self.stats.attempts[k] >= self.options.max_attempts:
                raise EvalError(
                    f"suite {self.suite.name} shard {k}: its worker died {self.stats.attempts[k]} times "
                    f"({cause_of(e)}): check the workers' memory and logs"
                ) from None
            self.pool.revive(w, f"suite {self.suite.name} shard {k}")
            pending.appendleft(k)
            return
        self.stats.nodes[k] = str(self.pool.where[w]["node"])
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
