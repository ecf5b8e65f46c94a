"""The eval workers of a step: Ray actors with an explicit share of the cores, ephemeral or kept warm across steps.

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

Warm workers across steps. On a cluster reached by address (RAY_ADDRESS; `ShardOptions.warm` overrides), the
workers are named, detached actors in the `llmrelease-evals` namespace, one name per slot and shape (threads, CPUs,
GPUs, and the eval code's hash), got or created with `get_if_exists`: the next step (another driver process,
e.g. the safety step running beside batch-eval, or the next delivery) finds them started, with up to
`warm_engines` models loaded (`steps.evals.engine_cache`), and every call names its engine, so two steps can
share them at once. `stop` leaves them running; a warm worker with no call for `idle_s` (LLMRELEASE_EVAL_IDLE_S,
default 600) ends itself, and the next step starts it again under the same name. Without RAY_ADDRESS (a Ray
started in the step) the workers are the step's own: one engine each, killed by `stop`, as before.
ray and torch are imported lazily.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from steps.evals.cache import GenerationSettings
from steps.evals.engine_cache import idle_seconds, warm_engines
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import EvalError
from steps.evals.ray_connect import connect_ray, ray_address
from steps.evals.shard_worker import FaultInjection, ShardWorker
from steps.evals.suites import SuiteItem

__all__ = [
    "WARM_NAMESPACE",
    "FaultInjection",
    "ShardOptions",
    "ShardWorker",
    "WorkerPool",
    "cause_of",
    "thread_budget",
    "warm_name",
]

WARM_NAMESPACE = "llmrelease-evals"
_WARM_PREFIX = "shard-worker-"
"""The Ray namespace of the warm workers (named, detached actors kept on a cluster across steps)."""


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
        warm: Named, detached workers kept on the cluster across steps; None: when RAY_ADDRESS names a cluster,
            unless LLMRELEASE_EVAL_WARM=0.
        warm_engines: Engines a warm worker keeps loaded; None: LLMRELEASE_EVAL_WARM_ENGINES, else 2.
        idle_s: A warm worker with no call for this long ends itself; None: LLMRELEASE_EVAL_IDLE_S, else 600.
    """

    workers: int = 2
    shard_size: int | None = None
    max_attempts: int = 3
    cores: int | None = None
    gpus_per_worker: float = 0.0
    claim_ttl_s: float = 30.0
    fault: FaultInjection | None = None
    warm: bool | None = None
    warm_engines: int | None = None
    idle_s: float | None = None

    @property
    def is_warm(self) -> bool:
        """Whether the workers are warm: `warm`, else RAY_ADDRESS names a cluster and LLMRELEASE_EVAL_WARM is not 0."""
        if self.warm is not None:
            return self.warm
        off = os.environ.get("LLMRELEASE_EVAL_WARM", "").strip().lower() in ("0", "false", "no", "off")
        return bool(ray_address()) and not off


def warm_name(slot: int, threads: int, cpus: float, gpus: float, code: str = "") -> str:
    """The name of warm worker `slot` of a shape (threads, Ray CPUs, GPUs), for the code it runs."""
    return f"{_WARM_PREFIX}{slot}-{_shape(threads, cpus, gpus, code)}"


def _shape(threads: int, cpus: float, gpus: float, code: str) -> str:
    """What follows the slot in a warm worker's name: its shape and code."""
    return f"t{threads}-c{cpus:g}-g{gpus:g}" + (f"-{code}" if code else "")


def code_tag() -> str:
    """8 hex of the eval package's sources: a warm worker started from other code is not reused."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


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


class WorkerPool:
    """The actors of a step, got on first use and kept (with the engines they hold) until `stop`."""

    def __init__(self, options: ShardOptions) -> None:
        self.options = options
        self.warm = options.is_warm
        self.actors: list[Any] = []
        self.where: list[dict[str, Any]] = []
        self.engine: EngineSpec | None = None
        self.shape: tuple[int, float, float] = (1, 1.0, 0.0)
        self.starts = 0
        """Actor handles got over the pool's life (warm ones may be reused; restarts by Ray not counted)."""
        self.loads = 0
        """Engine loads asked of the actors (one per actor and engine)."""
        self.hits = 0
        """Loads a warm actor answered from the engines it held (no model loaded)."""
        self._code = ""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, engine: EngineSpec, wanted: int) -> int:
        """Actors for `wanted` shards (got or grown as needed), each holding `engine`; the pool's size.

        Raises:
            EvalError: Ray cannot be reached, the workers failed to start or to load the engine, or they chose
                different engines.
        """
        connect_ray(self.options.cores)
        remote = engine.kind == "http"
        size, threads, cpus = thread_budget(self._cores(), self.options.workers, remote)
        missing = min(size, max(1, wanted)) - len(self.actors)
        if missing > 0 or engine != self.engine:
            if not self.actors:
                self.shape = (threads, cpus, 0.0 if remote else self.options.gpus_per_worker)
            if self.warm and missing > 0:
                self._make_room(missing * self.shape[1])
            self.actors += [self._actor(len(self.actors) + i) for i in range(max(0, missing))]
            self.starts += max(0, missing)
            self.where = self._load(engine)
            self.engine = engine
        return len(self.actors)

    def prepare(self) -> int:
        """Start the warm workers a CPU step of these options will get, each with its libraries imported; how many.

        Nothing is loaded: a warm-up (`steps.evals.warm`) runs this when the cluster comes up, so the first eval
        step finds its workers started instead of starting them.

        Raises:
            EvalError: The pool is not warm (its workers would end with it), Ray cannot be reached, or a worker
                failed to start.
        """
        from ray.exceptions import RayActorError, RayTaskError

        if not self.warm:
            raise EvalError(
                "eval workers: a warm-up needs warm workers: set RAY_ADDRESS to the cluster "
                "(LLMRELEASE_EVAL_WARM unset)"
            )
        connect_ray(self.options.cores)
        size, threads, cpus = thread_budget(self._cores(), self.options.workers)
        self.shape = (threads, cpus, self.options.gpus_per_worker)
        self._make_room(size * cpus)
        self.actors = [self._actor(slot) for slot in range(size)]
        self.starts += size
        try:
            self.where = [self._prepared(w) for w in range(size)]
        except (RayActorError, RayTaskError) as e:
            raise EvalError(f"eval workers failed to start: {cause_of(e)}") from None
        return size

    def _cores(self) -> int:
        """The cores the pool shares: `ShardOptions.cores`, else the Ray cluster's CPUs (call after `connect_ray`)."""
        import ray

        return self.options.cores or int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))

    def _prepared(self, w: int) -> dict[str, Any]:
        """Worker `w`'s `prepare()`; one whose creation lost a race to a step's is taken by name first."""
        import ray

        try:
            return cast(dict[str, Any], ray.get(self.actors[w].prepare.remote()))
        except ValueError:  # ActorAlreadyExistsError at first use: a step created it at the same moment
            self.actors[w] = self._named(w)
            return cast(dict[str, Any], ray.get(self.actors[w].prepare.remote()))

    def submit(
        self,
        w: int,
        engine: EngineSpec,
        suite_name: str,
        index: int,
        items: list[SuiteItem],
        settings: GenerationSettings,
    ) -> Any:
        """Shard `index` on actor `w` with `engine` (named in the call); the Ray object ref of its results."""
        return self.actors[w].run_shard.remote(engine, suite_name, index, items, settings, self.options.fault)

    def _actor(self, slot: int) -> Any:
        """Actor `slot` of the pool's shape: the step's own, or the warm one of that name (created if absent)."""
        import ray

        threads, cpus, gpus = self.shape
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        remote: Any = ray.remote(max_restarts=self.options.max_attempts, max_task_retries=0)(ShardWorker)
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "runtime_env": {"env_vars": env}}
        if not self.warm:
            return remote.options(**options).remote(threads, gpus > 0)
        self._code = self._code or code_tag()
        engines = self.options.warm_engines or warm_engines()
        idle = self.options.idle_s or idle_seconds()
        name = warm_name(slot, threads, cpus, gpus, self._code)
        options |= {"name": name, "namespace": WARM_NAMESPACE, "lifetime": "detached", "get_if_exists": True}
        for attempt in range(5):
            try:
                return remote.options(**options).remote(threads, gpus > 0, engines, idle)
            except ValueError:  # ActorAlreadyExistsError: another step created it at the same moment (Ray Client)
                try:
                    return ray.get_actor(name, namespace=WARM_NAMESPACE)
                except ValueError:  # it ended meanwhile (idle timeout): create it
                    time.sleep(0.2 * (attempt + 1))
        raise EvalError(f"eval worker {name}: neither created nor found in namespace {WARM_NAMESPACE}: check Ray")

    def _call_load(self, w: int, engine: EngineSpec) -> Any:
        """Ask worker `w` to hold `engine`; a warm one whose creation lost a race is taken by name first."""
        try:
            return self.actors[w].load.remote(engine)
        except ValueError:  # ActorAlreadyExistsError: another step created it at the same moment
            if not self.warm:
                raise
            self.actors[w] = self._named(w)
            return self.actors[w].load.remote(engine)

    def _named(self, w: int) -> Any:
        """The warm worker of slot `w` by its name (another step created it); waits up to ~10 s for its name.

        Raises:
            EvalError: No worker has that name.
        """
        import ray

        name = warm_name(w, *self.shape, self._code or code_tag())
        for attempt in range(20):
            try:
                return ray.get_actor(name, namespace=WARM_NAMESPACE)
            except ValueError:
                time.sleep(min(1.0, 0.1 * (attempt + 1)))
        raise EvalError(f"eval worker {name}: its name is taken but no worker has it in {WARM_NAMESPACE}: check Ray")

    def _make_room(self, cpus: float) -> None:
        """Free `cpus` Ray CPUs held by idle warm workers of another shape or code, when the cluster has too few.

        Warm workers keep their CPUs while idle; a step of another shape (another `shards`, an http engine) or of
        newer eval code would otherwise wait for their idle timeout. One answering within a second and idle for
        more than a second is ended; one that is busy (a shard of another step in progress) is left alone.
        """
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
        from ray.util import list_named_actors

        if ray.available_resources().get("CPU", 0.0) >= cpus:
            return
        ours = _shape(*self.shape, self._code or code_tag())
        warm = [str(e["name"]) for e in list_named_actors(all_namespaces=True) if e["namespace"] == WARM_NAMESPACE]
        for name in (n for n in warm if n.startswith(_WARM_PREFIX) and n.split("-", 3)[3] != ours):
            try:
                actor = ray.get_actor(name, namespace=WARM_NAMESPACE)
                if float(cast(Any, ray.get(actor.idle_for.remote(), timeout=1.0))) > 1.0:
                    ray.kill(actor, no_restart=True)
            except (GetTimeoutError, RayActorError, RayTaskError, AttributeError, ValueError):
                continue

    def _load(self, engine: EngineSpec) -> list[dict[str, Any]]:
        """Every actor holding `engine`; their `ready()`; one engine kind and device among them."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        refs = [self._call_load(w, engine) for w in range(len(self.actors))]
        where: list[dict[str, Any]] = []
        for w, ref in enumerate(refs):
            try:
                try:
                    where.append(ray.get(ref))
                except ValueError:  # ActorAlreadyExistsError at first use: another step's creation of it won
                    if not self.warm:
                        raise
                    self.actors[w] = self._named(w)
                    where.append(ray.get(self.actors[w].load.remote(engine)))
            except RayActorError:  # died while loading: Ray restarts it (max_restarts); load once more, then give up
                try:
                    self._recover(w, f"eval worker {w} ({engine.name})", 300.0)
                    where.append(ray.get(self.actors[w].load.remote(engine)))
                    self.loads += 1
                except (EvalError, RayActorError, RayTaskError) as e:
                    self.stop()
                    raise EvalError(f"eval workers ({engine.name}) failed to start: {cause_of(e)}") from None
            except RayTaskError as e:
                self.stop()
                raise EvalError(f"eval workers ({engine.name}) failed to start: {cause_of(e)}") from None
        self.loads += len(self.actors)
        self.hits += sum(1 for w in where if w.get("hit"))
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

        self._recover(w, what, timeout_s)
        try:
            self.where[w] = ray.get(self.actors[w].load.remote(self.engine))
        except (RayActorError, RayTaskError) as e:
            raise EvalError(f"{what}: its restarted worker cannot load the engine again: {cause_of(e)}") from None
        self.loads += 1
        return self.where[w]

    def _recover(self, w: int, what: str, timeout_s: float) -> None:
        """Worker `w` answering again: restarted by Ray, or (a warm one that ended) a new actor under its name.

        A warm worker ends for good when its idle timeout ends it between a driver getting it and calling it, or
        when it ran out of restarts.

        Raises:
            EvalError: It did not come back within `timeout_s`, or it died for good and is not a warm worker.
        """
        died = _await_restart(self.actors[w], what, timeout_s)
        if died is not None and self.warm:
            self.actors[w] = self._actor(w)
            self.starts += 1
            died = _await_restart(self.actors[w], what, timeout_s)
        if died is not None:
            raise EvalError(f"{what}: its worker died and cannot restart ({cause_of(died)})")

    def stop(self) -> None:
        """Let go of the actors: the step's own killed, warm ones left running for the next step.

        The step's own may hold resources another driver waits for; warm ones may be in use by another step.
        The next start begins anew.
        """
        if not self.actors:
            return
        if not self.warm:
            import ray

            for actor in self.actors:
                ray.kill(actor)
        self.actors, self.where, self.engine = [], [], None


def _await_restart(actor: Any, what: str, timeout_s: float) -> Exception | None:
    """Block until a restarting actor answers again (Ray refuses calls while it restarts).

    Returns None, or the `ActorDiedError` when the actor has ended for good.

    Raises:
        EvalError: It did not answer within `timeout_s`.
    """
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return None
        except (ActorUnavailableError, GetTimeoutError) as e:
            if time.monotonic() >= deadline:
                raise EvalError(
                    f"{what}: its worker did not come back within {timeout_s:.0f}s: check the Ray cluster"
                ) from e
            time.sleep(0.2)
        except ActorDiedError as e:
            return e


def cause_of(error: Exception) -> str:
    """The root cause of a Ray error in one line (a worker's EvalError message as it was raised)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(error)):
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error:" in ln or "Error(" in ln]
    return (named[-1] if named else lines[0] if lines else type(error).__name__)[:300]
