"""Sharded batch evals on Ray: a suite's items split into contiguous shards, run by a pool of engine actors.

Design: an explicit pool of Ray actors (`steps.evals.shard_pool`), not Ray Data's `map_batches`. Each actor
builds its engine once (kept loaded) and answers one shard per call; the driver keeps the queue, claims a shard and
hands it to an idle actor, waits for the first to finish (`ray.wait`) and persists it at once as
`shard-<k>.jsonl` in the run key's shard store (`steps.evals.shard_ledger`: S3 when a bucket is configured, else
a local folder; an object that exists is complete). Explicit actors make the things this step needs direct,
where Ray Data hides them inside its streaming executor:

* per-shard persistence as each shard finishes (Ray Data writes blocks with no stable name to skip on);
* skip-finished-shards: a re-run (a retried pod on another node, with S3) keeps the shards that hold exactly
  their item ids and submits the rest; shards claimed by another live driver of the same run key (the parallel
  batch-eval and safety pods on one suite) are waited for, not computed twice, and taken over when their claim
  goes stale (its pod died); a shard is stored once (first writer wins), so every example has one row;
* kill-a-worker recovery: actors have `max_restarts`; when a worker dies mid-shard the call fails with
  `RayActorError`, the actor restarts (reloading its engine) and the driver resubmits exactly that shard (at
  most `max_attempts` times); shards already persisted are never redone.

The driver, not the workers, writes shards (on KubeRay the workers' pods may not mount the work volume).
Ray runs locally (`ray.init(num_cpus=...)`) unless RAY_ADDRESS names a cluster (`steps.evals.ray_connect`).
Each actor gets an explicit share of the cores (`steps.evals.worker_pool`: at most one CPU-bound actor per core,
`num_cpus` = torch threads = OMP/MKL threads = cores // actors, inter-op threads 1), and exactly
`ShardOptions.gpus_per_worker` GPUs: the demand is stated, not read from the GPUs present, so a cluster autoscaler
scales a GPU worker group up from zero (0 on CPU-only runs). Each actor builds its engine on its own
node (`EngineSpec.on_worker`: weights fetched into that node's cache, engine kind chosen there) and reports
what it chose and where it runs; the run's `ShardStats` carries both (`backend`, `device`, `nodes`), and the
shard store's `engine.json` keeps the choice for a re-run that finds every shard done. Actors start only when
this driver has a shard to run (none when every shard is stored or claimed by another driver). A step passes
one `WorkerPool` to every `run_suite` call: the actors start once and load each model once for all its suites.
On a cluster reached by address the actors are warm ones kept across steps (named, detached, a few engines
cached each, ended after LLMRELEASE_EVAL_IDLE_S idle; `steps.evals.worker_pool`), and every shard call names
its engine, so parallel steps (batch-eval and safety) share them.

Test-only fault injection: `FaultInjection(shard=k, marker=path)` (in the batch-eval step, the environment
variable `LLMRELEASE_EVAL_KILL_SHARD=<k>:<marker path>`) makes the worker starting shard k SIGKILL itself while
the marker file exists (deleting it first, so only the first attempt dies). ray and torch are imported lazily.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from steps.evals.cache import GenerationSettings
from steps.evals.engine_spec import EngineSpec
from steps.evals.engines.base import EvalError
from steps.evals.evaluate import evaluate_items, refuse_judge_items
from steps.evals.ray_connect import connect_ray
from steps.evals.results import ExampleResult
from steps.evals.shard_ledger import SHARDS_LABEL, ShardLedger
from steps.evals.shard_pool import FaultInjection, ShardDriver, ShardOptions, ShardStats, ShardWorker, WorkerPool
from steps.evals.store import EvalStore
from steps.evals.suites import Suite, check_supported

__all__ = [
    "EngineSpec",
    "FaultInjection",
    "ShardOptions",
    "ShardStats",
    "ShardWorker",
    "WorkerPool",
    "connect_ray",
    "evaluate_items",
    "plan_shards",
    "run_suite",
]


def plan_shards(n_items: int, workers: int, shard_size: int | None = None) -> list[range]:
    """Contiguous index ranges covering `range(n_items)`, each of `shard_size` items (the last may be shorter)."""
    if shard_size is None:
        shard_size = min(64, max(16, math.ceil(n_items / max(1, workers * 4))))
    if shard_size < 1:
        raise EvalError(f"shard size {shard_size}: must be at least 1 item")
    return [range(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


def run_suite(
    suite: Suite,
    engine: EngineSpec,
    settings: GenerationSettings,
    shard_dir: str | Path | EvalStore,
    options: ShardOptions,
    pool: WorkerPool | None = None,
) -> tuple[list[ExampleResult], ShardStats]:
    """Evaluate every item of `suite` on Ray actors, shard by shard, skipping shards already stored.

    Args:
        suite: The suite.
        engine: How each worker builds its engine.
        settings: The generation settings.
        shard_dir: The run key's shard store (`EvalStore`), or a local folder.
        options: How to shard and run.
        pool: The step's workers, kept across suites (the model loaded once); None: a pool for this call only.

    Returns:
        One result per item in suite order, and what was run.

    Raises:
        EvalError: The engine cannot run a task of the suite (before Ray starts), the workers cannot start,
            a shard failed, a shard's worker died `max_attempts` times, the shard store failed, or the results
            are not one per item.
    """
    check_supported(suite, engine)  # type: ignore[arg-type]  # needs only .name and .capabilities
    refuse_judge_items(suite.name, suite.items)
    began = time.perf_counter()
    shards = plan_shards(len(suite.items), options.workers, options.shard_size)
    store = shard_dir if isinstance(shard_dir, EvalStore) else EvalStore(Path(shard_dir), SHARDS_LABEL)
    ledger = ShardLedger(store, ttl_s=options.claim_ttl_s)
    ids = [[suite.items[i].id for i in span] for span in shards]
    stats = ShardStats(total=len(shards))
    found: dict[int, list[ExampleResult]] = {}
    for k in range(len(shards)):
        stored = ledger.finished(k, ids[k])
        if stored is not None:
            found[k] = stored
            stats.skipped.append(k)
    todo = [k for k in range(len(shards)) if k not in found]
    if todo:
        with WorkerPool(options) if pool is None else _kept(pool) as workers:
            found.update(ShardDriver(suite, engine, settings, ledger, shards, options, stats, workers).run(todo))
    if not stats.backend:
        stats.backend, stats.device = ledger.engine()
    results = [r for k in range(len(shards)) for r in found[k]]
    _check_complete(suite, results)
    stats.seconds = time.perf_counter() - began
    return results, stats


@contextmanager
def _kept(pool: WorkerPool) -> Iterator[WorkerPool]:
    """The caller's pool, left running for its next suite."""
    yield pool


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
