"""Batch-eval throughput, side by side in one run: bare engine, plain process, Ray 1 worker, Ray N workers.

    .venv/bin/python benchmarks/eval_throughput.py [--k 512] [--workers 2] [--repeats 3] [--models demo,llama]
        [--max-new-tokens 32] [--address HOST:PORT]

Models: `demo` is examples/models/candidate (make demo-models; a random 4-layer GPT-2 is built when it is
missing); `llama` is a random Llama (4 layers, 256 wide, grouped-query attention) with a BPE tokenizer and Llama
3's chat template, built by `tests.tiny_models.build_tiny_llama`. The suite is golden-qa replicated to K distinct
items; greedy decoding, `--max-new-tokens` per answer.

Configurations (C = this process's usable cores):
  bare      TransformersEngine in this process, already loaded and warm; threads 1..C x batch sizes swept on the
            first min(K, 128) items, the best configuration then timed on K items: the roofline.
  plain     a fresh process as a step without Ray runs it: import, load (threads = C, batch size by the rule,
            both set explicitly by the engine), evaluate K items.
  ray-1     a fresh driver process as the batch-eval step runs it, joining a long-lived Ray cluster by address
            (RAY_ADDRESS; one is started here when none is given): connect, 1 worker of C threads, K items.
  ray-N     the same with N workers of C // N threads each.
  ray-1/1c  1 worker on 1 core: the per-worker baseline.
  ray-N/warm  a fresh driver process as in ray-N, on warm workers (named, detached actors that an earlier driver
            started and loaded: `steps.evals.worker_pool`), the next step of a delivery. Run after the others
            (warm workers hold the cluster's CPUs): one untimed driver starts them, then `--repeats` timed drivers
            reuse them; then they are killed, so the next model's rows start cold.
  ray-N/warm-new  the same warm workers asked for a model they do not hold (a copy of it in another folder, as
            a new candidate is): warm processes, the model loaded.
The cold rows use the step's own workers (`ShardOptions(warm=False)`), started and killed by each driver.
Each configuration runs `--repeats` times; the table shows min/median/max of end-to-end seconds (process start
to results) and of steady examples/s (K / evaluation time, start-up excluded). Ratios use medians:
  per-worker efficiency = steady(ray-N) / (N x steady(ray-1/1c))                goal >= 0.8
  sharded / bare        = steady(ray-N) / steady(bare), and end to end K / e2e   goal >= 0.9 at K >= 512
  crossover K*          = (start(ray-N) - start(plain)) / (1/steady(plain) - 1/steady(ray-N))  goal <= 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steps.evals.cache import GenerationSettings  # noqa: E402
from steps.evals.engines.transformers_engine import usable_cores  # noqa: E402
from steps.evals.sharding import evaluate_items  # noqa: E402
from steps.evals.suites import Suite, load_suite  # noqa: E402

GOLDEN = REPO / "suites/golden-qa/v1.jsonl"
RAY = str(Path(sys.executable).parent / "ray")


def replicated_suite(k: int, folder: Path) -> Path:
    """The golden-QA suite replicated (ids suffixed) to exactly k items, written to folder."""
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines() if line]
    out = [dict(rows[i % len(rows)], id=f"{rows[i % len(rows)]['id']}-r{i // len(rows)}") for i in range(k)]
    path = folder / f"golden-x{k}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def build_models(names: list[str], scratch: Path) -> dict[str, Path]:
    """The benchmark's models by name (demo: the committed demo candidate, else a random GPT-2; llama: built)."""
    from tests.tiny_models import build_tiny_gpt2, build_tiny_llama

    corpus = [json.loads(line)["prompt"] for line in GOLDEN.read_text().splitlines() if line]
    built: dict[str, Path] = {}
    for name in names:
        if name == "demo":
            demo = REPO / "examples/models/candidate"
            built[name] = demo if (demo / "config.json").is_file() else build_tiny_gpt2(scratch / "gpt2", corpus)
        elif name == "llama":
            built[name] = build_tiny_llama(
                scratch / "llama", corpus, layers=4, width=256, vocab_size=1200, n_positions=256
            )
        else:
            raise SystemExit(f"--models: unknown model {name!r}: expected demo or llama")
    return built


# --- in a fresh child process: a step as it runs -------------------------------------------------------------


def child_plain(model: str, suite_path: str, max_new: int) -> dict[str, Any]:
    """A plain process: load the engine with its defaults, evaluate every item."""
    began = time.perf_counter()
    from steps.evals.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(model)
    suite = load_suite(Path(suite_path), name="golden-qa")
    start = time.perf_counter() - began
    t = time.perf_counter()
    results = evaluate_items(engine, suite.name, suite.items, GenerationSettings(max_new_tokens=max_new))
    run = time.perf_counter() - t
    info = {"threads": engine.num_threads, "batch": engine.batch_size}
    return {"start_s": start, "run_s": run, "n": len(results), "workers": [info]}


def child_ray(
    model: str, suite_path: str, max_new: int, workers: int, cores: int, scratch: str, warm: bool = False
) -> dict[str, Any]:
    """A batch-eval driver: join the cluster at RAY_ADDRESS, start the pool (engines loaded), run the suite."""
    from steps.evals.sharding import EngineSpec, ShardOptions, WorkerPool, connect_ray, plan_shards, run_suite

    began = time.perf_counter()
    connect_ray()
    connect = time.perf_counter() - began
    suite = load_suite(Path(suite_path), name="golden-qa")
    spec = EngineSpec.of("transformers", model_dir=model)
    options = ShardOptions(workers=workers, cores=cores, warm=warm)
    with WorkerPool(options) as pool:
        pool.start(spec, len(plan_shards(len(suite.items), workers)))
        start = time.perf_counter() - began
        t = time.perf_counter()
        results, _ = run_suite(suite, spec, GenerationSettings(max_new_tokens=max_new), scratch, options, pool)
        run = time.perf_counter() - t
        where = [{"threads": w["torch_threads"], "omp": w["omp_threads"], "hit": w.get("hit")} for w in pool.where]
    return {"connect_s": connect, "start_s": start, "run_s": run, "n": len(results), "workers": where}


def child_release() -> dict[str, Any]:
    """Kill every warm eval worker on the cluster at RAY_ADDRESS (a step using one gets a new one by its name)."""
    import ray

    from steps.evals.sharding import connect_ray
    from steps.evals.worker_pool import WARM_NAMESPACE

    connect_ray()
    named = [n for n in ray.util.list_named_actors(all_namespaces=True) if n["namespace"] == WARM_NAMESPACE]
    for entry in named:
        ray.kill(ray.get_actor(entry["name"], namespace=WARM_NAMESPACE))
    return {"killed": len(named)}


def spawn(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run this script as a child; its JSON, with `e2e_s` (process start to exit) added."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args[:1]} failed:\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row["e2e_s"] = time.perf_counter() - began
    return row


# --- in this process: the bare engine's sweep -----------------------------------------------------------------


def bench_bare(model: Path, suite: Suite, max_new: int, repeats: int, cores: int) -> tuple[list[float], str]:
    """Sweep threads x batch size on a prefix; time the best on the whole suite `repeats` times (examples/s)."""
    import torch

    from steps.evals.engines.transformers_engine import TransformersEngine

    settings = GenerationSettings(max_new_tokens=max_new)
    engine = TransformersEngine(model, num_threads=cores)
    prefix = suite.items[: min(len(suite.items), 128)]
    evaluate_items(engine, suite.name, prefix[:16], settings)  # warm-up
    best: tuple[float, int, int] = (0.0, cores, engine.batch_size)
    for threads in range(1, cores + 1):
        for batch in (4, 8, 16, 32, 64):
            torch.set_num_threads(threads)
            engine.batch_size = batch
            t = time.perf_counter()
            evaluate_items(engine, suite.name, prefix, settings)
            rate = len(prefix) / (time.perf_counter() - t)
            best = max(best, (rate, threads, batch))
    _, threads, batch = best
    torch.set_num_threads(threads)
    engine.batch_size = batch
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluate_items(engine, suite.name, suite.items, settings)
        rates.append(len(suite.items) / (time.perf_counter() - t))
    return rates, f"threads={threads} batch={batch}"


# --- the cluster the Ray rows join ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_cluster(scratch: Path, cores: int) -> tuple[subprocess.Popen[bytes], str]:
    """A one-node Ray cluster (`ray start --head --block`, C CPUs, no token auth) in its own process group."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    command = [RAY, "start", "--head", "--block", f"--port={port}", f"--num-cpus={cores}", "--disable-usage-stats"]
    command += ["--node-ip-address=127.0.0.1", "--include-dashboard=false", "--object-store-memory=100000000"]
    command += [f"--temp-dir={scratch / 'ray'}"]
    log = scratch / "ray-head.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise SystemExit(f"ray head did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return process, f"127.0.0.1:{port}"


def stop_cluster(head: subprocess.Popen[bytes]) -> None:
    """Stop the head's process group (the node and every worker it started): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=15)
            time.sleep(1)  # let the group's other processes exit before the SIGKILL sweep
        except subprocess.TimeoutExpired:
            continue


# --- the run and the table -------------------------------------------------------------------------------------


def bench_model(name: str, model: Path, args: argparse.Namespace, env: dict[str, str], scratch: Path) -> None:
    """Every configuration for one model, `args.repeats` times each; the table and the ratios printed."""
    cores, n = usable_cores(), args.workers
    suite_path = replicated_suite(args.k, scratch)
    rows: dict[str, list[dict[str, Any]]] = {}
    bare, best = bench_bare(model, load_suite(suite_path, name="golden-qa"), args.max_new_tokens, args.repeats, cores)
    rows["bare"] = [{"steady": r, "e2e_s": float("nan"), "start_s": 0.0, "workers": []} for r in bare]
    plans = {"plain": ["plain"], "ray-1": ["ray", "1", str(cores)], f"ray-{n}": ["ray", str(n), str(cores)]}
    plans["ray-1/1c"] = ["ray", "1", "1"]
    for i in range(args.repeats):  # interleaved, so a change in the machine's load hits every configuration
        for config, plan in plans.items():
            rows.setdefault(config, []).append(_measure(config, plan, i, name, model, suite_path, args, env, scratch))
    warm = ["ray", str(n), str(cores), "warm"]
    _measure(f"ray-{n}/first", warm, 0, name, model, suite_path, args, env, scratch)  # starts the warm workers
    for i in range(args.repeats):
        rows.setdefault(f"ray-{n}/warm", []).append(
            _measure(f"ray-{n}/warm", warm, i, name, model, suite_path, args, env, scratch)
        )
        copy = shutil.copytree(model, scratch / f"{name}-new-{i}")  # another model: loaded, in a warm process
        rows.setdefault(f"ray-{n}/warm-new", []).append(
            _measure(f"ray-{n}/warm-new", warm, i, name, copy, suite_path, args, env, scratch)
        )
    spawn(["release", "-", "-", "0"], env)
    print(f"\n## {name} ({model.name}), K={args.k}, C={cores}, N={n}, bare best: {best}")
    _table(rows, args.k)
    _ratios(rows, n, args.k)


def _measure(
    config: str,
    plan: list[str],
    i: int,
    name: str,
    model: Path,
    suite_path: Path,
    args: argparse.Namespace,
    env: dict[str, str],
    scratch: Path,
) -> dict[str, Any]:
    """One fresh child process for `config` (a shard folder of its own); its row with `steady` examples/s."""
    folder = scratch / f"shards-{name}-{config.replace('/', '-')}-{i}"
    extra = [str(folder)] if plan[0] == "ray" else []
    rest, warm = (plan[1:-1], ["warm"]) if plan[-1] == "warm" else (plan[1:], [])
    row = spawn([plan[0], str(model), str(suite_path), str(args.max_new_tokens), *rest, *extra, *warm], env)
    row["steady"] = row["n"] / row["run_s"]
    return row


def _mmm(values: list[float], fmt: str) -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def _table(rows: dict[str, list[dict[str, Any]]], k: int) -> None:
    print("| config | start s (min/med/max) | end-to-end s | steady ex/s | end-to-end ex/s | threads per worker |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config, runs in rows.items():
        e2e = [r["e2e_s"] for r in runs]
        threads = ",".join(str(w.get("threads")) for w in runs[0]["workers"]) or "swept"
        wall = "-" if config == "bare" else _mmm(e2e, ".2f")
        rate = "-" if config == "bare" else _mmm([k / x for x in e2e], ".0f")
        start = "-" if config == "bare" else _mmm([r["start_s"] for r in runs], ".2f")
        steady = _mmm([r["steady"] for r in runs], ".0f")
        print(f"| {config} | {start} | {wall} | {steady} | {rate} | {threads} |")


def _ratios(rows: dict[str, list[dict[str, Any]]], n: int, k: int) -> None:
    def med(config: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[config])

    bare, plain, many, lean = med("bare", "steady"), med("plain", "steady"), med(f"ray-{n}", "steady"), 0.0
    lean = med("ray-1/1c", "steady")
    per_worker = many / (n * lean)
    e2e_many = k / med(f"ray-{n}", "e2e_s")
    print(f"- per-worker efficiency ray-{n} / ({n} x ray-1/1c), steady: {per_worker:.2f} (goal >= 0.8)")
    print(f"- ray-{n} / bare: steady {many / bare:.2f}, end to end {e2e_many / bare:.2f} (goal >= 0.9 at K >= 512)")
    print(f"- plain / bare: steady {plain / bare:.2f}, end to end {k / med('plain', 'e2e_s') / bare:.2f}")
    warm, cold = f"ray-{n}/warm", f"ray-{n}"
    hits = all(w.get("hit") for r in rows[warm] for w in r["workers"])
    print(
        f"- {warm} vs {cold}: start {med(warm, 'start_s'):.2f}s vs {med(cold, 'start_s'):.2f}s, end to end "
        f"{med(warm, 'e2e_s'):.2f}s vs {med(cold, 'e2e_s'):.2f}s (every warm load a hit: {hits})"
    )
    gap = 1 / plain - 1 / many
    extra = med(f"ray-{n}", "e2e_s") - k / many - (med("plain", "e2e_s") - k / plain)
    if extra <= 0:
        print(f"- crossover: ray-{n} is ahead end to end at every K (start-up {extra:+.2f}s vs plain)")
    elif gap > 0:
        print(f"- crossover K* ~ {extra / gap:.0f} items (start-up {extra:+.2f}s vs plain; goal <= 500)")
    else:
        print(f"- no crossover: ray-{n} is not faster than plain once started (start-up {extra:+.2f}s)")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; run a child measurement, or the whole benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--k", type=int, default=512, help="suite size (golden-qa replicated)")
    parser.add_argument("--workers", type=int, default=2, help="N, the sharded configuration's workers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="demo,llama", help="comma-separated: demo, llama")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="a running Ray cluster")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, model, suite, max_new, *rest = args.child
        if kind == "plain":
            out = child_plain(model, suite, int(max_new))
        elif kind == "release":
            out = child_release()
        else:
            out = child_ray(model, suite, int(max_new), int(rest[0]), int(rest[1]), rest[2], rest[3:] == ["warm"])
        print(json.dumps(out))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the cluster below
    scratch = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    head = None
    try:
        if not args.address:
            head, args.address = start_cluster(scratch, usable_cores())
        env = {**os.environ, "RAY_ADDRESS": args.address, "PYTHONPATH": str(REPO)}
        if head is not None:
            env["RAY_AUTH_MODE"] = "disabled"
        print(f"load average before: {os.getloadavg()}; Ray cluster at {args.address}")
        for name, model in build_models(args.models.split(","), scratch).items():
            bench_model(name, model, args, env, scratch)
        print(f"load average after: {os.getloadavg()}")
    finally:
        if head is not None:
            stop_cluster(head)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
