"""Sharded batch evals on Ray: a suite's items split into contiguous shards, run by a pool of engine actors.

Design: an explicit pool of Ray actors, not Ray Data's `map_batches`. Each actor builds ONE engine when it
starts and answers one shard per call; the driver keeps the queue, hands a shard to each idle actor, waits for
the first to finish (`ray.wait`) and persists it at once to `<shard_dir>/shard-<k>.jsonl` (temporary file +
rename: a file that exists is complete). Explicit actors make the three things this step needs direct, where
Ray Data hides them inside its streaming executor:

* per-shard persistence as each shard finishes (Ray Data writes blocks with no stable name to skip on);
* skip-finished-shards: a re-run keeps the files that hold exactly their shard's item ids, submits the rest;
* kill-a-worker recovery: actors have `max_restarts`; when a worker dies mid-shard the call fails with
  `RayActorError`, the actor restarts (reloading its engine) and the driver resubmits exactly that shard (at
  most `max_attempts` times); shards already persisted are never redone.

The driver, not the workers, writes shard files (on KubeRay the workers' pods may not mount the work volume).
Ray runs locally (`ray.init(num_cpus=...)`) unless RAY_ADDRESS names a cluster (`steps.evals.ray_connect`).
Each actor gets an equal share of the cores: `num_cpus` = torch threads = cores // workers (at least 1), and
exactly `ShardOptions.gpus_per_worker` GPUs: the demand is stated, not read from the GPUs present, so a cluster
autoscaler scales a GPU worker group up from zero (0 on CPU-only runs). Each actor builds its engine on its own
node (`EngineSpec.on_worker`: weights fetched into that node's cache, engine kind chosen there) and reports
what it chose and where it runs; the run's `ShardStats` carries both (`backend`, `device`, `nodes`), and
`<shard_dir>/engine.json` keeps the choice for a re-run that finds every shard done.

Test-only fault injection: `FaultInjection(shard=k, marker=path)` (in the batch-eval step, the environment
variable `LLMRELEASE_EVAL_KILL_SHARD=<k>:<marker path>`) makes the worker starting shard k SIGKILL itself while
the marker file exists (deleting it first, so only the first attempt dies). ray and torch are imported lazily.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from steps.evals.cache import GenerationSettings
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import EvalError
from steps.evals.evaluate import evaluate_items, refuse_judge_items
from steps.evals.ray_connect import connect_ray
from steps.evals.results import ExampleResult, write_json_atomic
from steps.evals.suites import Suite, SuiteItem, check_supported

__all__ = [
    "EngineSpec",
    "FaultInjection",
    "ShardOptions",
    "ShardStats",
    "ShardWorker",
    "connect_ray",
    "evaluate_items",
    "plan_shards",
    "read_shard",
    "run_suite",
]


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
        fault: Test-only fault injection.
    """

    workers: int = 2
    shard_size: int | None = None
    max_attempts: int = 3
    cores: int | None = None
    gpus_per_worker: float = 0.0
    fault: FaultInjection | None = None


@dataclass
class ShardStats:
    """What a `run_suite` call did: shards skipped (already on disk), run, and attempts per shard run.

    Attributes:
        backend: The engine kind the workers chose ("" when no worker started and no engine.json was kept).
        device: The device they run it on (cpu, cuda, remote).
        nodes: The Ray node id of the worker that ran each shard run here.
    """

    total: int = 0
    skipped: list[int] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    backend: str = ""
    device: str = ""
    nodes: dict[int, str] = field(default_factory=dict)

    @property
    def retried(self) -> list[int]:
        """Shards that needed more than one attempt (their worker died)."""
        return sorted(k for k, n in self.attempts.items() if n > 1)


def plan_shards(n_items: int, workers: int, shard_size: int | None = None) -> list[range]:
    """Contiguous index ranges covering `range(n_items)`, each of `shard_size` items (the last may be shorter)."""
    if shard_size is None:
        shard_size = min(64, max(16, math.ceil(n_items / max(1, workers * 4))))
    if shard_size < 1:
        raise EvalError(f"shard size {shard_size}: must be at least 1 item")
    return [range(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


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


def read_shard(path: Path, expected_ids: Sequence[str]) -> list[ExampleResult] | None:
    """The shard file's results if it holds exactly `expected_ids` in order, else None (missing or stale)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        results = [ExampleResult.model_validate_json(line) for line in lines if line.strip()]
    except (OSError, ValidationError, ValueError):
        return None
    return results if [r.id for r in results] == list(expected_ids) else None


def run_suite(
    suite: Suite, engine: EngineSpec, settings: GenerationSettings, shard_dir: str | Path, options: ShardOptions
) -> tuple[list[ExampleResult], ShardStats]:
    """Evaluate every item of `suite` on Ray actors, shard by shard, skipping shards already on disk.

    Returns:
        One result per item in suite order, and what was run.

    Raises:
        EvalError: The engine cannot run a task of the suite (before Ray starts), the workers cannot start,
            a shard failed, a shard's worker died `max_attempts` times, or the results are not one per item.
    """
    check_supported(suite, engine)  # type: ignore[arg-type]  # needs only .name and .capabilities
    refuse_judge_items(suite.name, suite.items)
    began = time.perf_counter()
    shards = plan_shards(len(suite.items), options.workers, options.shard_size)
    folder = Path(shard_dir)
    stats = ShardStats(total=len(shards))
    found: dict[int, list[ExampleResult]] = {}
    for k, span in enumerate(shards):
        cached = read_shard(folder / f"shard-{k}.jsonl", [suite.items[i].id for i in span])
        if cached is not None:
            found[k] = cached
            stats.skipped.append(k)
    todo = [k for k in range(len(shards)) if k not in found]
    if todo:
        found.update(_run_on_ray(suite, engine, settings, folder, shards, todo, options, stats))
    else:
        stats.backend, stats.device = _read_engine(folder)
    results = [r for k in range(len(shards)) for r in found[k]]
    _check_complete(suite, results)
    stats.seconds = time.perf_counter() - began
    return results, stats


def _run_on_ray(
    suite: Suite,
    engine: EngineSpec,
    settings: GenerationSettings,
    folder: Path,
    shards: list[range],
    todo: list[int],
    options: ShardOptions,
    stats: ShardStats,
) -> dict[int, list[ExampleResult]]:
    """Run shards `todo` on a pool of actors; persist each as it finishes; resubmit one whose worker died."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    connect_ray(options.cores)
    actors, where = _start_actors(engine, settings, options, min(options.workers, len(todo)))
    _record_engine(where, folder, stats)
    pending, idle = deque(todo), list(range(len(actors)))
    running: dict[Any, tuple[int, int]] = {}
    done: dict[int, list[ExampleResult]] = {}
    try:
        while pending or running:
            while pending and idle:
                w, k = idle.pop(), pending.popleft()
                stats.attempts[k] = stats.attempts.get(k, 0) + 1
                items = [suite.items[i] for i in shards[k]]
                running[actors[w].run_shard.remote(suite.name, k, items)] = (w, k)
            ready, _ = ray.wait(list(running), num_returns=1)
            w, k = running.pop(ready[0])
            idle.append(w)
            try:
                rows = ray.get(ready[0])
            except RayTaskError as e:
                raise EvalError(f"suite {suite.name} shard {k}: {_cause(e)}") from None
            except RayActorError as e:
                if stats.attempts[k] >= options.max_attempts:
                    raise EvalError(
                        f"suite {suite.name} shard {k}: its worker died {stats.attempts[k]} times "
                        f"({_cause(e)}): check the workers' memory and logs"
                    ) from None
                where[w] = _await_restart(actors[w], f"suite {suite.name} shard {k}")
                pending.appendleft(k)
                continue
            stats.nodes[k] = str(where[w]["node"])
            done[k] = [ExampleResult.model_validate(r) for r in rows]
            _write_shard(folder / f"shard-{k}.jsonl", done[k])
            stats.ran.append(k)
    finally:
        for actor in actors:
            ray.kill(actor)
    return done


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


def _record_engine(where: list[dict[str, Any]], folder: Path, stats: ShardStats) -> None:
    """Put the engine the workers chose in `stats` and `<folder>/engine.json`; refuse workers that disagree."""
    chosen = sorted({(str(w["backend"]), str(w["device"])) for w in where})
    if len(chosen) != 1:
        raise EvalError(
            f"eval workers chose different engines {chosen}: give the Ray worker group one image and GPU "
            "type, so every worker evaluates the same way"
        )
    stats.backend, stats.device = chosen[0]
    write_json_atomic(folder / "engine.json", json.dumps({"backend": stats.backend, "device": stats.device}))


def _read_engine(folder: Path) -> tuple[str, str]:
    """The (backend, device) a previous run's workers chose for this shard folder; ("", "") when unknown."""
    try:
        raw = json.loads((folder / "engine.json").read_text(encoding="utf-8"))
        return str(raw["backend"]), str(raw["device"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", ""


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


def _write_shard(path: Path, results: list[ExampleResult]) -> None:
    """Write one shard as JSONL, atomically (a file that exists is complete)."""
    write_json_atomic(path, "\n".join(r.model_dump_json() for r in results))


def _check_complete(suite: Suite, results: list[ExampleResult]) -> None:
    """Every item of the suite exactly once, in suite order."""
    got, want = [r.id for r in results], [i.id for i in suite.items]
    if got == want:
        return
    seen: set[str] = set()
    dupes = sorted({i for i in got if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    missing = sorted(set(want) - set(got))
    raise EvalError(
        f"suite {suite.name}: sharded results are not one per item (missing {missing[:5]}, repeated {dupes[:5]}): "
        "delete the suite's shard folder and re-run"
    )
