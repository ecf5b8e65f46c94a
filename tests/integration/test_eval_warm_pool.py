"""Warm eval workers across steps: named, detached Ray actors on a long-lived cluster reached by address.

A real Ray head (`ray start --head --block`, 4 logical CPUs, its own process group) stands for the cluster that
`llmrelease local up` starts. Each "step" is a fresh driver PROCESS (this file run as a script) joining it by
RAY_ADDRESS, as the batch-eval and safety pods do; this process never joins Ray itself. Real tiny GPT-2 models
(random weights: arbitrary but deterministic outputs under greedy decoding).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

from steps.evals.cache import GenerationSettings  # noqa: E402
from steps.evals.engine_spec import EngineSpec  # noqa: E402
from steps.evals.suites import load_suite  # noqa: E402

SETTINGS = GenerationSettings(max_new_tokens=4)


# --- the driver: one step's eval, in its own process -----------------------------------------------------------


def drive(job: dict[str, Any]) -> dict[str, Any]:
    """Run `job["order"]` (model names) through one WorkerPool on the cluster at RAY_ADDRESS; what happened."""
    import ray

    from steps.evals import ray_connect
    from steps.evals.sharding import FaultInjection, ShardOptions, WorkerPool, connect_ray, run_suite
    from steps.evals.worker_pool import WARM_NAMESPACE

    early = {}
    if job.get("early"):  # as the batch-eval step: the join first, then MLflow's import meanwhile
        ray_connect.join_early()
        early["early"] = ray_connect._joining is not None
        import mlflow  # noqa: F401

        if job.get("cached"):  # every result cached: no worker needed, the process just ends
            return early
    connect_ray()
    if job.get("list"):
        names = ray.util.list_named_actors(all_namespaces=True)
        return {"names": sorted(str(n["name"]) for n in names if n["namespace"] == WARM_NAMESPACE)}
    suite = load_suite(Path(job["suite"]), name="qa")
    fault = FaultInjection(1, job["kill"]) if job.get("kill") else None
    options = ShardOptions(workers=job["workers"], cores=job["cores"], shard_size=4, warm=job["warm"], fault=fault)
    runs = []
    with WorkerPool(options) as pool:
        for i, name in enumerate(job["order"]):
            spec = EngineSpec.of("transformers", model_dir=job["models"][name])
            folder = Path(job["scratch"]) / f"{os.getpid()}-{i}-{name}"
            results, stats = run_suite(suite, spec, SETTINGS, folder, options, pool)
            rows = [[r.id, r.output, r.score] for r in results]
            runs.append({"model": name, "rows": rows, "where": pool.where, "retried": stats.retried})
        counts = {"starts": pool.starts, "loads": pool.loads, "hits": pool.hits}
    return {"runs": runs, **counts, **early}


def run_driver(cluster: str, job: dict[str, Any], idle_s: float = 600, wait: bool = True) -> Any:
    """This file as a script (a fresh driver process) joining `cluster`; its JSON, or the Popen when not `wait`."""
    env = {**os.environ, "RAY_ADDRESS": cluster, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.update({"LLMRELEASE_EVAL_IDLE_S": str(idle_s), "HF_HUB_OFFLINE": "1"})
    command = [sys.executable, __file__, json.dumps(job)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return read_driver(process) if wait else process


def read_driver(process: subprocess.Popen[str]) -> Any:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


# --- the tests ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """The module's Ray head: its GCS address and its Ray Client address."""

    gcs: str
    client: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A Ray head with 4 logical CPUs on 127.0.0.1 (room for a warm pool and a step's own pool at once), serving
    Ray Client too."""
    from tests.integration.test_ray_address import free_port, start_node, stop_node

    root = tmp_path_factory.mktemp("warm-ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    head = ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"]
    client = free_port()
    head.append(f"--ray-client-server-port={client}")
    node = start_node("head", root, temp_dir, [*head, "--num-cpus=4"])  # the last --num-cpus wins
    try:
        yield Head(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client}")
    finally:
        stop_node(node)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tiny models that answer differently (a: Llama, b: GPT-2) and a 12-item suite (3 shards of 4), for
    2 workers on 2 cores."""
    from tests.tiny_models import build_tiny_gpt2, build_tiny_llama

    root = tmp_path_factory.mktemp("warm-job")
    corpus = ["the capital of zorvia is mora", "the blorp is yellow", "i cannot help with that", "two plus two is four"]
    models = {
        "a": str(build_tiny_llama(root / "a", corpus, n_positions=96)),
        "b": str(build_tiny_gpt2(root / "b", corpus, n_positions=96)),
    }
    words = ["mora", "yellow", "four", "blorp", "zorvia", "help", "capital", "two"]
    rows: list[dict[str, Any]] = [
        {"id": f"g{i}", "prompt": f"what colour is thing {i}", "task": "contains", "expected": "yellow"}
        for i in range(4)
    ]
    rows += [
        {"id": f"mc{i}", "prompt": f"the {w} is", "task": "multiple_choice", "answer": 0}
        | {"choices": [words[(i + 1) % 8], words[(i + 3) % 8], words[(i + 5) % 8]]}
        for i, w in enumerate(words)
    ]
    suite = root / "qa.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"models": models, "suite": str(suite), "scratch": str(root), "workers": 2, "cores": 2, "warm": True}


def _pids(run: dict[str, Any]) -> list[int]:
    return [int(w["pid"]) for w in run["where"]]


@pytest.mark.slow
def test_a_warm_up_starts_the_workers_the_first_step_gets(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN a fresh cluster WHEN the warm-up (`python -m steps.evals.warm`, as `llmrelease local up` runs it)
    joins through Ray Client for 2 shards on 2 cores, and then a step of that shape evaluates model b
    THEN the warm-up started 2 workers with their thread share and no model, and the step's shards ran on exactly
    those processes. (First in this module: no earlier test has started workers of that shape.)
    """
    env = {**os.environ, "RAY_ADDRESS": cluster.client, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "steps.evals.warm", "--shards", "2", "--cores", "2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("eval warm-up: 2 workers ready (1 thread(s) and 1 CPU(s) each"), line
    warmed = sorted(int(p) for p in line.split("pids ")[1].split(")")[0].split(", "))
    names = run_driver(cluster.gcs, {**job, "list": True})["names"]
    assert len(names) == 2 and all("-t1-c1-g0-" in n for n in names), names

    [run] = run_driver(cluster.gcs, {**job, "order": ["b"]})["runs"]
    assert sorted(_pids(run)) == warmed
    assert all(w["omp_threads"] == "1" and w["torch_threads"] == 1 for w in run["where"])


def test_a_warm_up_without_a_cluster_address_is_one_line() -> None:
    """GIVEN no RAY_ADDRESS WHEN the warm-up runs THEN it exits 1 with one line naming RAY_ADDRESS (its workers
    would end with it), and starts no Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "steps.evals.warm"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "eval warm-up: eval workers: a warm-up needs warm workers: set RAY_ADDRESS to the cluster "
        "(LLMRELEASE_EVAL_WARM unset)"
    ]


@pytest.mark.slow
def test_a_second_step_reuses_the_warm_workers_without_loading_again(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN a cluster reached by address, and a first driver process that evaluated model a on 2 warm workers
    WHEN a second, fresh driver process evaluates the same model
    THEN it runs on the same actor processes, every load is a hit and no worker built an engine again; each
    worker keeps its thread share (1 torch thread, OMP 1 on 2 cores); the results are equal.
    """
    first = run_driver(cluster.gcs, {**job, "order": ["a"]})
    second = run_driver(cluster.gcs, {**job, "order": ["a"]})
    [one], [two] = first["runs"], second["runs"]
    assert sorted(_pids(two)) == sorted(_pids(one)) and len(set(_pids(one))) == 2
    assert second["hits"] == second["loads"] == 2 and all(w["hit"] for w in two["where"])
    assert {w["pid"]: w["builds"] for w in two["where"]} == {w["pid"]: w["builds"] for w in one["where"]}
    assert all((w["torch_threads"], w["omp_threads"]) == (1, "1") for w in two["where"])
    assert two["rows"] == one["rows"]


@pytest.mark.slow
def test_a_step_through_ray_client_reuses_the_warm_workers(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN warm workers holding model a, started by a driver that joined by the GCS address
    WHEN a step joins through Ray Client (RAY_ADDRESS=ray://..., as the pods of the local profile do)
    THEN its shards run on the same actor processes, every load a hit, with equal results.
    """
    by_gcs = run_driver(cluster.gcs, {**job, "order": ["a"]})
    by_client = run_driver(cluster.client, {**job, "order": ["a"]})
    [one], [two] = by_gcs["runs"], by_client["runs"]
    assert sorted(_pids(two)) == sorted(_pids(one)) and all(w["hit"] for w in two["where"])
    assert two["rows"] == one["rows"]


@pytest.mark.slow
def test_a_step_joins_ray_client_early_while_it_imports_mlflow(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN warm workers holding model a
    WHEN a step starts its Ray Client join on a thread (join_early) and imports MLflow meanwhile, as batch-eval
    does, then runs its shards; and a step that does the same but then needs no worker (every result cached)
    THEN the first joined early and its shards ran on the same warm workers, every load a hit, with the results of
    a plain join; the second exits 0 (its exit waits for the join, then leaves the cluster).
    """
    plain = run_driver(cluster.client, {**job, "order": ["a"]})
    early = run_driver(cluster.client, {**job, "order": ["a"], "early": True})
    cached = run_driver(cluster.client, {**job, "order": [], "early": True, "cached": True})
    [one], [two] = plain["runs"], early["runs"]
    assert early["early"] is True and cached == {"early": True}
    assert sorted(_pids(two)) == sorted(_pids(one)) and all(w["hit"] for w in two["where"])
    assert two["rows"] == one["rows"]


@pytest.mark.slow
def test_two_steps_alternate_two_models_on_the_same_warm_workers(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN the reference results of models a and b from a step's own (not warm) pool
    WHEN two driver processes run AT ONCE on the warm workers, one a, b, a and the other b, a, b
    THEN every run's results equal its model's reference (each call ran the engine it named, never the other
    step's), both drivers used the same two actor processes, and the third run of each is all hits.
    """
    reference = run_driver(cluster.gcs, {**job, "order": ["a", "b"], "warm": False})
    expected = {r["model"]: r["rows"] for r in reference["runs"]}
    assert expected["a"] != expected["b"], "the two models must answer differently for this test to mean anything"
    x = run_driver(cluster.gcs, {**job, "order": ["a", "b", "a"]}, wait=False)
    y = run_driver(cluster.gcs, {**job, "order": ["b", "a", "b"]}, wait=False)
    drivers = [read_driver(x), read_driver(y)]
    for done in drivers:
        assert [r["rows"] == expected[r["model"]] for r in done["runs"]] == [True, True, True]
        assert all(w["hit"] for w in done["runs"][2]["where"])
    pids = {pid for done in drivers for run in done["runs"] for pid in _pids(run)}
    assert len(pids) == 2 and not pids & {p for r in reference["runs"] for p in _pids(r)}


@pytest.mark.slow
def test_an_idle_warm_worker_ends_itself_and_the_next_step_starts_a_new_one(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN a warm worker (1 worker of 2 threads: its own name) created with LLMRELEASE_EVAL_IDLE_S=3
    WHEN no call comes for 3 s
    THEN its process ends and its name is gone from the namespace (ended, not restarted); the next driver gets a
    new process under the same name, which loads the model again and gives the same results.
    """
    lone = {**job, "order": ["a"], "workers": 1}
    first = run_driver(cluster.gcs, lone, idle_s=3)
    [pid] = _pids(first["runs"][0])
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(pid), "the idle warm worker is still running after 60 s"
    names = run_driver(cluster.gcs, {**job, "list": True})["names"]
    assert not [n for n in names if "-t2-c2-" in n], names
    again = run_driver(cluster.gcs, lone, idle_s=3)
    [new_pid] = _pids(again["runs"][0])
    assert new_pid != pid and again["hits"] == 0 and again["runs"][0]["rows"] == first["runs"][0]["rows"]


@pytest.mark.slow
def test_a_warm_worker_killed_mid_shard_restarts_under_its_name(
    cluster: Head, job: dict[str, Any], tmp_path: Path
) -> None:
    """GIVEN warm workers holding model a, and a step whose worker SIGKILLs itself when it starts shard 1
    WHEN that step evaluates a
    THEN shard 1 is retried on the restarted worker (a new process, the same actor), and the results equal
    those of a step without the fault.
    """
    clean = run_driver(cluster.gcs, {**job, "order": ["a"]})
    marker = tmp_path / "kill-once"
    marker.touch()
    faulty = run_driver(cluster.gcs, {**job, "order": ["a"], "kill": str(marker)})
    [before], [after] = clean["runs"], faulty["runs"]
    assert after["retried"] == [1] and not marker.exists()
    assert len(set(_pids(after)) - set(_pids(before))) == 1
    assert after["rows"] == before["rows"]


@pytest.mark.slow
def test_two_steps_through_ray_client_create_the_same_new_workers_at_once(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN no warm worker of a shape yet (2 workers of 2 CPUs)
    WHEN two steps join through Ray Client at the same moment and both ask for them (batch-eval and safety start
    together in the golden delivery; `make demo` once failed here with ActorAlreadyExistsError)
    THEN both succeed on the same two actor processes, with equal results. (Idle timeout 60 s: a client that
    loses its Ray Client session server to ray-project/ray#63202 joins ~10 s late and must still find them; the
    next test's step of another shape ends them once idle.)
    """
    shape = {**job, "order": ["a"], "workers": 2, "cores": 4}
    x = run_driver(cluster.client, shape, idle_s=60, wait=False)
    y = run_driver(cluster.client, shape, idle_s=60, wait=False)
    one, two = read_driver(x), read_driver(y)
    assert sorted(_pids(one["runs"][0])) == sorted(_pids(two["runs"][0]))
    assert one["runs"][0]["rows"] == two["runs"][0]["rows"]


@pytest.mark.slow
def test_a_step_of_another_shape_ends_idle_warm_workers_that_hold_the_cpus(cluster: Head, job: dict[str, Any]) -> None:
    """GIVEN idle warm workers of one shape (2 workers of 1 CPU) on the 4-CPU cluster
    WHEN a step of another shape needs all 4 CPUs (1 worker on 4 cores: the cluster cannot place it beside them)
    THEN it ends those idle workers instead of waiting for their idle timeout (600 s here), and it runs at once.
    (Last in this module: its own warm worker ends itself 3 s after it, freeing the cluster for other modules.)
    """
    run_driver(cluster.gcs, {**job, "order": ["a"]})
    time.sleep(1.5)  # idle for more than a second
    began = time.monotonic()
    process = run_driver(cluster.gcs, {**job, "order": ["a"], "workers": 1, "cores": 4}, idle_s=3, wait=False)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-4000:]
    assert time.monotonic() - began < 240
    names = run_driver(cluster.gcs, {**job, "list": True})["names"]
    assert not [n for n in names if "-t1-c1-" in n], names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}").exists() else "X"
    return state not in ("Z", "X")


def test_a_dropped_engine_is_built_again_not_an_error(job: dict[str, Any]) -> None:
    """GIVEN a worker body holding 1 engine (no Ray: the actor's code in this process)
    WHEN shards of a, b, a run on it, each naming its engine
    THEN each switch builds the named engine again (3 builds), and a's results are the same both times.
    """
    from steps.evals.shard_worker import ShardWorker

    worker = ShardWorker(1, capacity=1)
    suite = load_suite(Path(job["suite"]), name="qa")
    specs = {n: EngineSpec.of("transformers", model_dir=p) for n, p in job["models"].items()}
    runs = [worker.run_shard(specs[n], "qa", 0, list(suite.items), SETTINGS) for n in ("a", "b", "a")]
    outputs = [[(r["id"], r["output"], r["score"]) for r in rows] for rows in runs]
    assert worker.engines.builds == 3 and outputs[0] == outputs[2] and outputs[0] != outputs[1]


if __name__ == "__main__":
    print(json.dumps(drive(json.loads(sys.argv[1]))))
