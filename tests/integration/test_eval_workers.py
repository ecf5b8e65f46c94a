"""The step's eval workers on real Ray (one local instance, 2 CPUs): their thread share, and one pool that starts
once and loads each model once for every suite of a step. Real tiny models (a Llama with a chat template and a
GPT-2) built offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from steps.evals.cache import GenerationSettings
from steps.evals.sharding import EngineSpec, ShardOptions, WorkerPool, run_suite
from steps.evals.suites import Suite, load_suite
from tests.tiny_models import build_tiny_gpt2, build_tiny_llama

CORES = 2
SETTINGS = GenerationSettings(max_new_tokens=4)
CORPUS = ["the capital of zorvia is mora", "the blorp is yellow", "i cannot help with that", "two plus two is four"]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One local Ray instance with CORES CPUs for the module."""
    import ray

    from steps.evals.sharding import connect_ray

    connect_ray(CORES)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EngineSpec]:
    root = tmp_path_factory.mktemp("models")
    llama = build_tiny_llama(root / "llama", CORPUS, n_positions=96)
    gpt2 = build_tiny_gpt2(root / "gpt2", CORPUS, n_positions=96)
    return {n: EngineSpec.of("transformers", model_dir=str(p)) for n, p in (("llama", llama), ("gpt2", gpt2))}


def _suite(folder: Path, name: str, n: int) -> Suite:
    """n generation items and one multiple_choice item."""
    rows: list[dict[str, Any]] = [
        {"id": f"{name}-{i}", "prompt": f"what colour is thing {i}", "task": "contains", "expected": "yellow"}
        for i in range(n)
    ]
    mc = {"id": f"{name}-mc", "prompt": "two plus two is", "task": "multiple_choice", "choices": ["four", "five"]}
    rows.append({**mc, "answer": 0})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_suite(path, name=name)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 5])
def test_each_worker_runs_its_share_of_the_cores(
    ray_session: None, models: dict[str, EngineSpec], workers: int
) -> None:
    """GIVEN 2 cores and a pool asked for 1, 2 or 5 workers of a local engine
    WHEN the pool starts with the Llama model loaded
    THEN min(workers, cores) actors run; in each, torch's intra-op threads, OMP_NUM_THREADS and MKL_NUM_THREADS
    equal its share (cores // actors), inter-op threads are 1, and the threads of all actors never exceed the
    cores.
    """
    with WorkerPool(ShardOptions(workers=workers, cores=CORES)) as pool:
        size = pool.start(models["llama"], wanted=8)
        share = CORES // size
        assert size == min(workers, CORES)
        for where in pool.where:
            assert (where["torch_threads"], where["interop_threads"]) == (share, 1), where
            assert (where["omp_threads"], where["mkl_threads"]) == (str(share), str(share)), where
        assert sum(w["torch_threads"] for w in pool.where) <= CORES
        assert len({w["pid"] for w in pool.where}) == size


@pytest.mark.slow
def test_one_pool_serves_every_suite_of_a_step_and_loads_each_model_once(
    ray_session: None, models: dict[str, EngineSpec], tmp_path: Path
) -> None:
    """GIVEN three suites and two models (the candidate, then the champion), as a batch-eval step has
    WHEN every suite of each model runs through one WorkerPool
    THEN the actors start once (the same processes throughout) and each loads each model once; the results equal
    those of a run with a pool of its own (no state carried from one suite or model to the next).
    """
    suites = [_suite(tmp_path, f"s{i}", n) for i, n in enumerate((9, 20, 5))]
    kept: dict[str, list[Any]] = {}
    with WorkerPool(ShardOptions(workers=2, cores=CORES, shard_size=4)) as pool:
        pids: set[int] = set()
        for model in ("llama", "gpt2"):
            for s in suites:
                folder = tmp_path / f"kept-{model}-{s.name}"
                results, stats = run_suite(s, models[model], SETTINGS, folder, pool.options, pool)
                kept[f"{model}/{s.name}"] = results
                assert stats.ran and stats.backend == "transformers"
                pids |= {w["pid"] for w in pool.where}
        assert (pool.starts, pool.loads, len(pids)) == (2, 4, 2)
    own_options = ShardOptions(workers=2, cores=CORES, shard_size=4)
    for key in ("llama/s1", "gpt2/s0"):
        model, name = key.split("/")
        suite = next(s for s in suites if s.name == name)
        fresh, _ = run_suite(suite, models[model], SETTINGS, tmp_path / f"own-{model}-{name}", own_options)
        assert [(r.id, r.output, r.score) for r in fresh] == [(r.id, r.output, r.score) for r in kept[key]]
