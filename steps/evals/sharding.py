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
Ray runs locally (`ray.init(num_cpus=...)`) unless RAY_ADDRESS names a cluster. Each actor gets an equal share
of the cores: `num_cpus` = torch threads = cores // workers (at least 1).

Test-only fault injection: `FaultInjection(shard=k, marker=path)` (in the batch-eval step, the environment
variable `LLMRELEASE_EVAL_KILL_SHARD=<k>:<marker path>`) makes the worker starting shard k SIGKILL itself while
the marker file exists (deleting it first, so only the first attempt dies). ray and torch are imported lazily.
"""

from __future__ import annotations

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
from steps.evals.engines.base import (
    GENERATE,
    LOGLIKELIHOOD,
    Engine,
    EvalError,
    required_capability,
)
from steps.evals.engines.factory import make_engine
from steps.evals.results import ExampleResult, write_json_atomic
from steps.evals.scoring import score_item
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
class EngineSpec:
    """How a worker builds its engine (picklable: the engine itself is built inside the worker).

    Attributes:
        kind: transformers, vllm or http.
        options: Keyword arguments of the engine's constructor (model_dir, device, batch_size / base_url, model).
    """

    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, kind: str, **options: Any) -> EngineSpec:
        """An engine spec from keyword options."""
        return cls(kind, tuple(sorted(options.items())))

    @property
    def capabilities(self) -> frozenset[str]:
        """What the engine will be able to do, known without building it."""
        if self.kind == "http" and not dict(self.options).get("logprobs", False):
            return frozenset({GENERATE})
        return frozenset({GENERATE, LOGLIKELIHOOD})

    @property
    def name(self) -> str:
        """The backend name, for messages."""
        return self.kind

    def build(self, num_threads: int | None = None) -> Engine:
        """Build the engine; transformers engines get `num_threads` torch threads."""
        options = dict(self.options)
        if self.kind == "transformers" and num_threads is not None:
            options["num_threads"] = num_threads
        return make_engine(self.kind, **options)  # type: ignore[arg-type]


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
        fault: Test-only fault injection.
    """

    workers: int = 2
    shard_size: int | None = None
    max_attempts: int = 3
    cores: int | None = None
    fault: FaultInjection | None = None


@dataclass
class ShardStats:
    """What a `run_suite` call did: shards skipped (already on disk), run, and attempts per shard run."""

    total: int = 0
    skipped: list[int] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

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


def evaluate_items(
    engine: Engine, suite_name: str, items: Sequence[SuiteItem], settings: GenerationSettings
) -> list[ExampleResult]:
    """Generate (or score log-likelihoods) and score each item, in input order; the unsharded path.

    Generation items go to the engine in one `generate` call (the engine batches); multiple_choice items in one
    `loglikelihood` call over every (prompt, " " + choice) pair, the output being the chosen choice.

    Raises:
        EvalError: A judge item (batch-eval has no judge model configured), or the engine failed.
    """
    gen = [i for i in items if required_capability(i.task) == GENERATE]
    mc = [i for i in items if required_capability(i.task) == LOGLIKELIHOOD]
    _refuse_judge_items(suite_name, items)
    done: dict[str, ExampleResult] = {}
    if gen:
        outs = engine.generate(
            [i.prompt for i in gen], max_new_tokens=settings.max_new_tokens, temperature=settings.temperature
        )
        for item, out in zip(gen, outs, strict=True):
            done[item.id] = _example(
                suite_name, item, out.text, score_item(item, out.text), out.latency_ms, out.output_tokens or 0
            )
    if mc:
        done.update(_multiple_choice(engine, suite_name, mc))
    return [done[i.id] for i in items]


def _refuse_judge_items(suite_name: str, items: Sequence[SuiteItem]) -> None:
    judged = next((i for i in items if i.task == "judge"), None)
    if judged is not None:
        raise EvalError(
            f"suite {suite_name} item {judged.id}: task judge needs a judge model, which batch-eval does "
            "not configure: score it with JudgeScorer, or use a refuse/comply/contains task"
        )


def _multiple_choice(engine: Engine, suite_name: str, items: list[SuiteItem]) -> dict[str, ExampleResult]:
    pairs = [(i.prompt, " " + c) for i in items for c in i.choices or ()]
    began = time.perf_counter()
    logliks = engine.loglikelihood(pairs)
    per_item_ms = (time.perf_counter() - began) * 1000 / len(items)
    out: dict[str, ExampleResult] = {}
    at = 0
    for item in items:
        n = len(item.choices or ())
        scores = logliks[at : at + n]
        at += n
        best = max(range(n), key=lambda k: scores[k])
        chosen = (item.choices or ())[best]
        out[item.id] = _example(suite_name, item, chosen, score_item(item, logliks=scores), per_item_ms, 0)
    return out


def _example(suite: str, item: SuiteItem, output: str, score: Any, latency_ms: float, tokens: int) -> ExampleResult:
    return ExampleResult(
        suite=suite,
        id=item.id,
        task=item.task,
        prompt=item.prompt,
        output=output,
        score=score.score,
        passed=score.passed,
        latency_ms=latency_ms,
        output_tokens=tokens,
        category=item.category or "",
        refused=score.refused,
    )


class ShardWorker:
    """The Ray actor body: one engine, built once; answers one shard per `run_shard` call."""

    def __init__(
        self,
        engine: EngineSpec,
        num_threads: int | None,
        settings: GenerationSettings,
        fault: FaultInjection | None = None,
    ) -> None:
        self.engine = engine.build(num_threads)
        self.settings = settings
        self.fault = fault

    def ready(self) -> int:
        """The worker's process id (also proves the engine loaded)."""
        return os.getpid()

    def run_shard(self, suite_name: str, index: int, items: list[SuiteItem]) -> list[dict[str, Any]]:
        """Evaluate one shard; the results as JSON-able dicts, in item order."""
        if self.fault is not None:
            self.fault.maybe_die(index)
        results = evaluate_items(self.engine, suite_name, items, self.settings)
        return [r.model_dump(mode="json") for r in results]


def connect_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray (num_cpus, no dashboard, worker logs kept off the driver), or join RAY_ADDRESS."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        return
    root = str(Path(__file__).resolve().parents[2])  # so local workers import `steps` from any cwd
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


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
    _refuse_judge_items(suite.name, suite.items)
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
    actors = _start_actors(engine, settings, options, min(options.workers, len(todo)))
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
                _await_restart(actors[w], f"suite {suite.name} shard {k}")
                pending.appendleft(k)
                continue
            done[k] = [ExampleResult.model_validate(r) for r in rows]
            _write_shard(folder / f"shard-{k}.jsonl", done[k])
            stats.ran.append(k)
    finally:
        for actor in actors:
            ray.kill(actor)
    return done


def _start_actors(engine: EngineSpec, settings: GenerationSettings, options: ShardOptions, n: int) -> list[Any]:
    """`n` actors, each with an equal share of the cores (and of the GPUs where there are any)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    cores = options.cores or int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    gpus = float(ray.cluster_resources().get("GPU", 0.0)) if engine.kind != "http" else 0.0
    threads = max(1, cores // options.workers)
    cpus: float = threads if cores >= options.workers else round(cores / options.workers, 4)
    remote: Any = ray.remote(max_restarts=options.max_attempts, max_task_retries=0)(ShardWorker)
    actor_gpus = (1.0 if gpus >= options.workers else round(gpus / options.workers, 4)) if gpus else 0.0
    actors: list[Any] = [
        remote.options(num_cpus=cpus, num_gpus=actor_gpus).remote(engine, threads, settings, options.fault)
        for _ in range(n)
    ]
    try:
        ray.get([a.ready.remote() for a in actors])
    except (RayActorError, RayTaskError) as e:
        for actor in actors:
            ray.kill(actor)
        raise EvalError(f"eval workers ({engine.kind}) failed to start: {_cause(e)}") from None
    return actors


def _await_restart(actor: Any, what: str, timeout_s: float = 300.0) -> None:
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
