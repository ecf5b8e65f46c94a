"""The eval workers of one step: Ray actors that each hold one engine and an explicit share of the cores.

Thread budget. A pool for `ShardOptions.workers` workers on C cores (`ShardOptions.cores`, else the Ray cluster's
CPUs) runs at most n = min(workers, C) CPU-bound actors: a worker on a fraction of a core only oversubscribes it.
Each actor asks Ray for `num_cpus = C // n` and runs that many threads: OMP_NUM_THREADS and MKL_NUM_THREADS in its
`runtime_env` (set before the process imports torch), torch intra-op threads = C // n and inter-op threads = 1
(`steps.evals.engines.transformers_engine.set_torch_threads`). So the threads of a pool never exceed C. Workers of a
remote engine (http) do no tensor work: `workers` of them share the cores (fractional `num_cpus`, 1 thread each).

Start-up out of the hot path. The step keeps one pool for all its suites (`WorkerPool` is a context manager the
batch-eval step opens once): an actor starts once (its process, torch and transformers imported once) and loads an
engine only when asked for one it does not hold, so the candidate's suites share one model load and the champion's
another. A worker that died and restarted (Ray re-runs its constructor) is given its engine again (`revive`).
ray and torch are imported lazily.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from steps.evals.cache import GenerationSettings
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import Engine, EvalError
from steps.evals.evaluate import evaluate_items
from steps.evals.ray_connect import connect_ray
from steps.evals.suites import SuiteItem

__all__ = ["FaultInjection", "ShardOptions", "ShardWorker", "WorkerPool", "cause_of", "thread_budget"]


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
        workers: Actors (each holds one engine); CPU-bound pools run at most one per core.
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


def thread_budget(cores: int, workers: int, remote: bool = False) -> tuple[int, int, float]:
    """(actors, threads per actor, Ray num_cpus per actor) for `workers` workers on `cores` cores.

    CPU-bound (local engines): min(workers, cores) actors of cores // actors threads and as many CPUs, so the
    threads never exceed the cores. Remote (http) engines: every worker, 1 thread each, the cores shared.
    """
    cores, workers = max(1, cores), max(1, workers)
    if remote:
        return workers, 1, min(1.0, round(cores / workers, 4))
    actors = min(workers, cores)
    threads = cores // actors
    return actors, threads, float(threads)


class ShardWorker:
    """The Ray actor body: an explicit thread share; one engine at a time, loaded on demand; one shard per call."""

    def __init__(self, num_threads: int, fault: FaultInjection | None = None, use_gpu: bool = False) -> None:
        self.num_threads, self.fault, self.use_gpu = num_threads, fault, use_gpu
        self.spec: EngineSpec | None = None
        self.engine: Engine | None = None
        self.backend = self.device = ""

    def load(self, engine: EngineSpec) -> dict[str, Any]:
        """Build `engine` here unless it is the one held (weights fetched on this node); then `ready()`."""
        if engine != self.spec:
            self.engine = None  # free the previous model before loading the next
            concrete, self.device = engine.on_worker(self.use_gpu)
            self.backend = concrete.kind
            self.engine = concrete.build(self.num_threads)
            self.spec = engine
        return self.ready()

    def ready(self) -> dict[str, Any]:
        """Where and what: pid, Ray node, backend, device, and the threads this process runs (torch, OMP)."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        torch = sys.modules.get("torch")
        return {
            "pid": os.getpid(),
            "node": node,
            "backend": self.backend,
            "device": self.device,
            "loaded": self.spec is not None,
            "torch_threads": torch.get_num_threads() if torch else 0,
            "interop_threads": torch.get_num_interop_threads() if torch else 0,
            "omp_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "mkl_threads": os.environ.get("MKL_NUM_THREADS", ""),
        }

    def run_shard(
        self, suite_name: str, index: int, items: list[SuiteItem], settings: GenerationSettings
    ) -> list[dict[str, Any]]:
        """Evaluate one shard with the engine held; the results as JSON-able dicts, in item order."""
        if self.fault is not None:
            self.fault.maybe_die(index)
        if self.engine is None:
            raise EvalError(f"suite {suite_name} shard {index}: the worker holds no engine: load one first")
        results = evaluate_items(self.engine, suite_name, items, settings)
        return [r.model_dump(mode="json") for r in results]


class WorkerPool:
    """The actors of one step, started on first use and kept (with the engine they hold) until `stop`."""

    def __init__(self, options: ShardOptions) -> None:
        self.options = options
        self.actors: list[Any] = []
        self.where: list[dict[str, Any]] = []
        self.engine: EngineSpec | None = None
        self.starts = 0
        """Actors started over the pool's life (restarts by Ray not counted): what a test checks."""
        self.loads = 0
        """Engine loads asked of the actors (one per actor and engine)."""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, engine: EngineSpec, wanted: int) -> int:
        """Actors for `wanted` shards (started or grown as needed), each holding `engine`; the pool's size.

        Raises:
            EvalError: Ray cannot be reached, the workers failed to start or to load the engine, or they chose
                different engines.
        """
        import ray

        connect_ray(self.options.cores)
        remote = engine.kind == "http"
        cores = self.options.cores or int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        size, threads, cpus = thread_budget(cores, self.options.workers, remote)
        missing = min(size, max(1, wanted)) - len(self.actors)
        if missing > 0 or engine != self.engine:
            gpus = 0.0 if remote else self.options.gpus_per_worker
            self.actors += [self._actor(threads, cpus, gpus) for _ in range(max(0, missing))]
            self.starts += max(0, missing)
            self.where = self._load(engine)
            self.engine = engine
        return len(self.actors)

    def _actor(self, threads: int, cpus: float, gpus: float) -> Any:
        import ray

        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        remote: Any = ray.remote(max_restarts=self.options.max_attempts, max_task_retries=0)(ShardWorker)
        return remote.options(num_cpus=cpus, num_gpus=gpus, runtime_env={"env_vars": env}).remote(
            threads, self.options.fault, gpus > 0
        )

    def _load(self, engine: EngineSpec) -> list[dict[str, Any]]:
        """Every actor holding `engine`; their `ready()`; one engine kind and device among them."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        refs = [a.load.remote(engine) for a in self.actors]
        where: list[dict[str, Any]] = []
        for w, ref in enumerate(refs):
            try:
                where.append(ray.get(ref))
            except RayActorError:  # died while loading: Ray restarts it (max_restarts); load once more, then give up
                try:
                    _await_restart(self.actors[w], f"eval worker {w} ({engine.name})", 300.0)
                    where.append(ray.get(self.actors[w].load.remote(engine)))
                    self.loads += 1
                except (EvalError, RayActorError, RayTaskError) as e:
                    self.stop()
                    raise EvalError(f"eval workers ({engine.name}) failed to start: {cause_of(e)}") from None
            except RayTaskError as e:
                self.stop()
                raise EvalError(f"eval workers ({engine.name}) failed to start: {cause_of(e)}") from None
        self.loads += len(self.actors)
        chosen = sorted({(str(w["backend"]), str(w["device"])) for w in where})
        if len(chosen) != 1:
            self.stop()
            raise EvalError(
                f"eval workers chose different engines {chosen}: give the Ray worker group one image and GPU "
                "type, so every worker evaluates the same way"
            )
        return where

    def revive(self, w: int, what: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """Wait for worker `w` to restart after dying (Ray refuses calls meanwhile); load its engine again."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        _await_restart(self.actors[w], what, timeout_s)
        try:
            self.where[w] = ray.get(self.actors[w].load.remote(self.engine))
        except (RayActorError, RayTaskError) as e:
            raise EvalError(f"{what}: its restarted worker cannot load the engine again: {cause_of(e)}") from None
        self.loads += 1
        return self.where[w]

    def stop(self) -> None:
        """Kill the actors (their resources may be what another driver waits for); the next start begins anew."""
        if not self.actors:
            return
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.where, self.engine = [], [], None


def _await_restart(actor: Any, what: str, timeout_s: float) -> None:
    """Block until a restarting actor answers again (Ray refuses calls while it restarts)."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (ActorUnavailableError, GetTimeoutError) as e:
            if time.monotonic() >= deadline:
                raise EvalError(
                    f"{what}: its worker did not come back within {timeout_s:.0f}s: check the Ray cluster"
                ) from e
            time.sleep(0.2)
        except ActorDiedError as e:
            raise EvalError(f"{what}: its worker died and cannot restart ({cause_of(e)})") from None


def cause_of(error: Exception) -> str:
    """The root cause of a Ray error in one line (a worker's EvalError message as it was raised)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(error)):
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error:" in ln or "Error(" in ln]
    return (named[-1] if named else lines[0] if lines else type(error).__name__)[:300]
