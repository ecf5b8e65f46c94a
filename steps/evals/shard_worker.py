"""The body of an eval worker (a Ray actor): an explicit thread share, a cache of loaded engines, one shard a call.

Every call names its engine (an `EngineSpec`, keyed by `steps.evals.engine_cache.engine_key`): `load` builds it
unless held (and says whether it was a hit), `run_shard` runs a shard on it, building it again when it was dropped
meanwhile. So one worker can serve two steps at once (Ray runs an actor's calls one at a time), each on its own
model. A step's own worker holds one engine (the previous one freed before the next loads); a warm worker
(`steps.evals.worker_pool`) holds up to `capacity` and, given `idle_s`, ends itself (`ray.kill` with no restart)
once no call has run for that long. ray and torch are imported lazily.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from steps.evals.cache import GenerationSettings
from steps.evals.engine_cache import EngineCache, Loaded, engine_key
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import EvalError
from steps.evals.evaluate import evaluate_items
from steps.evals.suites import SuiteItem

__all__ = ["FaultInjection", "ShardWorker"]


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


class ShardWorker:
    """The Ray actor body: an explicit thread share; engines loaded on demand and kept; one shard per call."""

    def __init__(self, num_threads: int, use_gpu: bool = False, capacity: int = 1, idle_s: float = 0.0) -> None:
        self.num_threads, self.use_gpu, self.idle_s = num_threads, use_gpu, idle_s
        self.engines = EngineCache(capacity)
        self.backend = self.device = ""
        self.last_call, self.busy = time.monotonic(), False
        if idle_s > 0:
            threading.Thread(target=self._watch_idle, name="idle-timeout", daemon=True).start()

    def load(self, engine: EngineSpec) -> dict[str, Any]:
        """Hold `engine` (built here, weights fetched on this node, unless held); `ready()` and `hit`."""
        with self._call():
            _, hit = self._engine(engine)
            return {**self.ready(), "hit": hit}

    def prepare(self) -> dict[str, Any]:
        """Import the local engines' libraries (torch, transformers' models) and set the threads; `ready()`.

        What a warm-up (`python -m steps.evals.warm`) asks of a new worker, so the first step's `load` pays only
        the model's load (`transformers_engine.preload`). A GPU worker imports the same: vLLM is imported when a
        vLLM engine is built.
        """
        with self._call():
            from steps.evals.engines.transformers_engine import preload, set_torch_threads

            preload()
            set_torch_threads(self.num_threads)
            return self.ready()

    def ready(self) -> dict[str, Any]:
        """Where and what: pid, Ray node, backend, device, engines built and held, threads (torch, OMP, MKL)."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        torch = sys.modules.get("torch")
        return {
            "pid": os.getpid(),
            "node": node,
            "backend": self.backend,
            "device": self.device,
            "loaded": len(self.engines) > 0,
            "held": self.engines.keys(),
            "builds": self.engines.builds,
            "torch_threads": torch.get_num_threads() if torch else 0,
            "interop_threads": torch.get_num_interop_threads() if torch else 0,
            "omp_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "mkl_threads": os.environ.get("MKL_NUM_THREADS", ""),
        }

    def idle_for(self) -> float:
        """Seconds since the last call ended (0 during a call; a call queues behind a running shard anyway)."""
        return 0.0 if self.busy else time.monotonic() - self.last_call

    def run_shard(
        self,
        engine: EngineSpec,
        suite_name: str,
        index: int,
        items: list[SuiteItem],
        settings: GenerationSettings,
        fault: FaultInjection | None = None,
    ) -> list[dict[str, Any]]:
        """Evaluate one shard with `engine` (built again if it was dropped); JSON-able results in item order."""
        with self._call():
            if fault is not None:
                fault.maybe_die(index)
            loaded, _ = self._engine(engine)
            results = evaluate_items(loaded.engine, suite_name, items, settings)
            return [r.model_dump(mode="json") for r in results]

    @contextmanager
    def _call(self) -> Iterator[None]:
        """A call in progress: not idle while it runs; the idle time counts from its end."""
        self.busy, self.last_call = True, time.monotonic()
        try:
            yield
        finally:
            self.busy, self.last_call = False, time.monotonic()

    def _engine(self, engine: EngineSpec) -> tuple[Loaded, bool]:
        loaded, hit = self.engines.get(engine_key(engine), lambda: self._build(engine))
        self.backend, self.device = loaded.backend, loaded.device
        return loaded, hit

    def _build(self, engine: EngineSpec) -> Loaded:
        concrete, device = engine.on_worker(self.use_gpu)
        return Loaded(concrete.build(self.num_threads), concrete.kind, device)

    def _watch_idle(self) -> None:
        """End this actor for good (`ray.kill`, no restart) once no call has run for `idle_s`.

        A call arriving at that very moment fails as if the worker had died; the pool then gets a new worker under
        the same name (`WorkerPool.revive`). (An actor calling itself to exit would be simpler, but a worker waits
        for the calls it has made before it exits: it would never end.)
        """
        import ray

        me = ray.get_runtime_context().current_actor
        while True:
            time.sleep(max(0.2, min(30.0, self.idle_s / 4)))
            if not self.busy and time.monotonic() - self.last_call >= self.idle_s:
                ray.kill(me, no_restart=True)
                return
