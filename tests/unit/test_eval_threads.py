"""The eval workers' thread budget and the batch-size rule: pure functions, and a real engine in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from steps.evals.engines.transformers_engine import CPU_MAX_BATCH, GPU_MAX_BATCH, choose_batch_size, usable_cores
from steps.evals.worker_pool import thread_budget

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5, 8, 32])
def test_the_threads_of_a_pool_never_exceed_the_cores(cores: int, workers: int) -> None:
    """GIVEN C cores and N workers asked for
    WHEN the pool's budget is planned for a local (CPU-bound) engine
    THEN there are min(N, C) actors, each with as many threads as Ray CPUs, at least 1, and in total at most C;
    no core is left idle that an equal share could use (C - actors x threads < actors).
    """
    actors, threads, cpus = thread_budget(cores, workers)
    assert actors == min(workers, cores)
    assert threads >= 1 and cpus == threads
    assert actors * threads <= cores
    assert cores - actors * threads < actors


def test_remote_workers_share_the_cores_with_one_thread_each() -> None:
    """GIVEN an http engine (no tensor work in the worker) and more workers than cores
    WHEN the budget is planned
    THEN every worker runs, on one thread, and their Ray CPUs add up to the cores.
    """
    actors, threads, cpus = thread_budget(2, 8, remote=True)
    assert (actors, threads) == (8, 1)
    assert actors * cpus == pytest.approx(2)


def _config(layers: int, hidden: int, vocab: int, positions: int) -> SimpleNamespace:
    return SimpleNamespace(
        num_hidden_layers=layers, hidden_size=hidden, vocab_size=vocab, max_position_embeddings=positions
    )


def test_the_batch_size_follows_the_model_and_the_memory() -> None:
    """GIVEN a tiny model, a 7B-shaped Llama (32 layers, 4096 wide, 128k vocabulary, 8k context) and free memory
    WHEN the batch size is chosen
    THEN the tiny model gets the cap (32 on CPU, 128 on a GPU); the 7B shape gets what a quarter of the worker's
    share of the memory holds (fewer with less memory or a smaller share), never below 1.
    """
    cores = usable_cores()
    tiny, big = _config(2, 64, 512, 128), _config(32, 4096, 128_256, 8192)
    assert choose_batch_size(tiny, "cpu", cores, free_bytes=8 * GIB) == CPU_MAX_BATCH
    assert choose_batch_size(tiny, "cuda", cores, free_bytes=8 * GIB) == GPU_MAX_BATCH
    per_sequence = 4096 * (2 * 32 * 4096 * 4 + 2 * 128_256 * 4)
    assert choose_batch_size(big, "cpu", cores, free_bytes=64 * GIB) == 64 * GIB // 4 // per_sequence
    assert choose_batch_size(big, "cuda", cores, free_bytes=64 * GIB) == 64 * GIB // 2 // per_sequence
    assert choose_batch_size(big, "cpu", cores, free_bytes=16 * GIB) == 1
    if cores >= 2:
        half = choose_batch_size(big, "cpu", cores // 2, free_bytes=256 * GIB)
        assert half < choose_batch_size(big, "cpu", cores, free_bytes=256 * GIB)


@pytest.mark.slow
def test_a_plain_process_engine_sets_every_core_explicitly(tmp_path: Path) -> None:
    """GIVEN a fresh process (as a step runs) and a tiny Llama with a chat template built by the tests
    WHEN a TransformersEngine is built with no thread count, then one with 1 thread in another fresh process
    THEN torch runs exactly the process's usable cores (then 1) intra-op threads and 1 inter-op thread, and the
    batch size is the rule's.
    """
    script = (
        "import json, sys, torch\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.tiny_models import build_tiny_llama\n"
        "from steps.evals.engines.transformers_engine import TransformersEngine, choose_batch_size\n"
        f"path = build_tiny_llama(__import__('pathlib').Path({str(tmp_path / 'llama')!r}), ['hello there'] * 8)\n"
        "threads = None if sys.argv[1] == 'none' else int(sys.argv[1])\n"
        "e = TransformersEngine(path, num_threads=threads)\n"
        "print(json.dumps([torch.get_num_threads(), torch.get_num_interop_threads(), e.batch_size,"
        " choose_batch_size(e.model.config, 'cpu', e.num_threads)]))\n"
    )
    for arg, want in (("none", usable_cores()), ("1", 1)):
        done = subprocess.run(
            [sys.executable, "-c", script, arg], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        intra, interop, batch, rule = json.loads(done.stdout.strip().splitlines()[-1])
        assert (intra, interop) == (want, 1)
        assert batch == rule


def test_preload_imports_what_an_engine_build_needs_but_the_models_own_module(tmp_path: Path) -> None:
    """GIVEN a fresh process (as an eval worker is) that ran `preload()` (the warm-up's `ShardWorker.prepare`)
    WHEN it builds a TransformersEngine on a tiny Llama THEN the only transformers modules the build imports are
    the model family's own (transformers.models.llama...): the rest, ~3 s of a worker's first load, was paid."""
    from tests.tiny_models import build_tiny_llama

    path = build_tiny_llama(tmp_path / "llama", ["hello there"] * 8)
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from steps.evals.engines.transformers_engine import TransformersEngine, preload\n"
        "if sys.argv[1] == 'preload':\n"
        "    preload()\n"
        "before = set(sys.modules)\n"
        f"TransformersEngine({str(path)!r}, num_threads=1)\n"
        "print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith('transformers'))))\n"
    )
    imported = {}
    for arg in ("preload", "none"):
        done = subprocess.run(
            [sys.executable, "-c", script, arg], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        imported[arg] = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported["preload"] and all(m.startswith("transformers.models.llama") for m in imported["preload"])
    assert any(not m.startswith("transformers.models.") for m in imported["none"]), imported["none"]
