"""Batch-eval throughput: one plain process vs sharded on Ray (1 and N workers), on a K-item suite.

    .venv/bin/python benchmarks/eval_throughput.py [--k 256] [--workers 2] [--model DIR | --random-model]
        [--max-new-tokens 32]

The suite is the golden-QA suite replicated to K items (ids suffixed, so every item is distinct work). The model
is --model, else examples/models/candidate when it exists (make demo-models), else (or with --random-model) a
random GPT-2 built here (4 layers, 256 wide: it rarely emits EOS, so every answer is max_new_tokens long).
Greedy decoding, batch size 8 everywhere.

Configurations (all on this machine's C cores):
  plain     one process, TransformersEngine used directly, torch threads = C (what a user would write)
  ray-1     run_suite with 1 worker (C threads)
  ray-N     run_suite with N workers, C // N threads each
  ray-1/1c  run_suite with 1 worker on 1 core (1 thread): the per-worker baseline of ray-N
  plain-1t  (reference line) one plain process with 1 torch thread

Each row reports the wall time including start-up (model load; for Ray, the actors' start and the engine load
in each; ray.init is measured once and shown apart) and the steady throughput (examples/s and generated
tokens/s once started: the start-up, measured on an N-item suite in shards of 1, subtracted). Ratios:
  scaling efficiency = steady(ray-N) / (N x steady(ray-1))   goal >= 0.8
  per-worker scaling = steady(ray-N) / (N x steady(ray-1/1c))
  sharded vs plain   = wall speed(ray-N incl. ray.init) / wall speed(plain)   goal >= 1.0 for large K
and the K at which sharded overtakes plain, from K* = (start_N - start_plain) / (1/steady_plain - 1/steady_N).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steps.evals.cache import GenerationSettings  # noqa: E402
from steps.evals.sharding import EngineSpec, ShardOptions, connect_ray, evaluate_items, run_suite  # noqa: E402
from steps.evals.suites import Suite, load_suite  # noqa: E402


def replicated_suite(k: int, folder: Path) -> Suite:
    """The golden-QA suite replicated (ids suffixed) to exactly k items, written to folder."""
    rows = [json.loads(line) for line in (REPO / "suites/golden-qa/v1.jsonl").read_text().splitlines() if line]
    out = [dict(rows[i % len(rows)], id=f"{rows[i % len(rows)]['id']}-r{i // len(rows)}") for i in range(k)]
    path = folder / f"golden-x{k}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return load_suite(path, name="golden-qa")


def build_model(directory: Path) -> Path:
    """A random 4-layer, 256-wide GPT-2 with a small BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    rows = (REPO / "suites/golden-qa/v1.jsonl").read_text().splitlines()
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(rows, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"
    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4, n_head=4, bos_token_id=eos, eos_token_id=eos
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def bench_plain(model: Path, suite: Suite, one: Suite, settings: GenerationSettings, cores: int) -> dict[str, Any]:
    from steps.evals.engines.transformers_engine import TransformersEngine

    began = time.perf_counter()
    engine = TransformersEngine(model, num_threads=cores)
    start = time.perf_counter() - began
    evaluate_items(engine, one.name, one.items, settings)  # warm-up, not timed
    began = time.perf_counter()
    results = evaluate_items(engine, suite.name, suite.items, settings)
    run = time.perf_counter() - began
    return _row("plain", start, start + run, results)


def bench_ray(
    model: Path, suite: Suite, warm: Suite, settings: GenerationSettings, workers: int, scratch: Path, cores: int
) -> dict[str, Any]:
    spec = EngineSpec.of("transformers", model_dir=str(model))
    name = f"ray-{workers}" if cores == (os.cpu_count() or 1) else f"ray-{workers}/{cores}c"
    tag = name.replace("/", "-")  # each configuration its own shard folders: nothing is skipped
    options = ShardOptions(workers=workers, cores=cores, shard_size=max(16, min(64, len(suite.items) // (workers * 4))))
    began = time.perf_counter()
    run_suite(warm, spec, settings, scratch / f"warm-{tag}", ShardOptions(workers=workers, cores=cores, shard_size=1))
    start = time.perf_counter() - began  # N actors' start + load + 1 item each: the start-up of a run
    began = time.perf_counter()
    results, _ = run_suite(suite, spec, settings, scratch / f"k-{tag}", options)
    return _row(name, start, time.perf_counter() - began, results)


def _row(name: str, start: float, wall: float, results: list[Any]) -> dict[str, Any]:
    tokens = sum(r.output_tokens for r in results)
    steady = max(wall - start, 1e-9)
    return {
        "config": name,
        "k": len(results),
        "start_s": start,
        "wall_s": wall,
        "tokens": tokens,
        "steady_ex_s": len(results) / steady,
        "steady_tok_s": tokens / steady,
        "wall_ex_s": len(results) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=256, help="suite size (golden-qa replicated)")
    parser.add_argument("--workers", type=int, default=2, help="N, the sharded configuration's workers")
    parser.add_argument("--model", type=Path, default=None, help="a save_pretrained model dir")
    parser.add_argument("--random-model", action="store_true", help="use the random model built here")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    try:
        model = args.model or (REPO / "examples/models/candidate")
        if args.random_model or not (model / "config.json").is_file():
            model = build_model(scratch / "model")
        suite, one = replicated_suite(args.k, scratch), replicated_suite(1, scratch)
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
        print(f"model {model}, K={args.k}, cores={cores}, N={args.workers}, max_new_tokens={args.max_new_tokens}")
        plain = bench_plain(model, suite, one, settings, cores)
        single = bench_plain(model, suite, one, settings, 1)
        single["config"] = "plain-1t"
        began = time.perf_counter()
        connect_ray(cores)
        ray_init = time.perf_counter() - began
        rows = [plain] + [
            bench_ray(model, suite, replicated_suite(n, scratch), settings, n, scratch, cores)
            for n in (1, args.workers)
        ]
        lean = bench_ray(model, suite, replicated_suite(1, scratch), settings, 1, scratch, 1)
        _report(rows + [lean], ray_init, args.workers)
        print(
            f"for reference, one plain process with 1 torch thread: {single['wall_s']:.2f}s wall, "
            f"{single['steady_ex_s']:.2f} ex/s, {single['steady_tok_s']:.1f} tok/s steady (not in the ratios)"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _report(rows: list[dict[str, Any]], ray_init: float, n: int) -> None:
    print(f"ray.init: {ray_init:.1f}s (once per step process; counted in 'wall+init' for the Ray rows)")
    print(
        f"{'config':8} {'K':>5} {'start s':>8} {'wall s':>7} {'wall+init':>9} {'ex/s wall':>9} "
        f"{'ex/s steady':>11} {'tok/s steady':>12} {'tokens':>7}"
    )
    for r in rows:
        init = 0.0 if r["config"] == "plain" else ray_init
        print(
            f"{r['config']:8} {r['k']:5d} {r['start_s']:8.2f} {r['wall_s']:7.2f} {r['wall_s'] + init:9.2f} "
            f"{r['k'] / (r['wall_s'] + init):9.2f} {r['steady_ex_s']:11.2f} {r['steady_tok_s']:12.1f} "
            f"{r['tokens']:7d}"
        )
    plain, one, many, lean = rows
    efficiency = many["steady_ex_s"] / (n * one["steady_ex_s"])
    per_worker = many["steady_ex_s"] / (n * lean["steady_ex_s"])
    vs_plain_wall = (many["k"] / (many["wall_s"] + ray_init)) / plain["wall_ex_s"]
    vs_plain_steady = many["steady_ex_s"] / plain["steady_ex_s"]
    print(f"scaling efficiency ray-{n} / ({n} x ray-1), steady: {efficiency:.2f} (goal >= 0.8)")
    print(f"per-worker scaling efficiency ray-{n} / ({n} x ray-1 on 1 core, 1 thread), steady: {per_worker:.2f}")
    print(
        f"sharded vs plain, ray-{n} / plain: wall incl. ray.init {vs_plain_wall:.2f}, steady {vs_plain_steady:.2f} "
        "(goal >= 1.0)"
    )
    gap = 1 / plain["steady_ex_s"] - 1 / many["steady_ex_s"]
    extra = many["start_s"] + ray_init - plain["start_s"]
    if gap > 0:
        print(f"sharded overtakes plain (wall incl. start-up) from K ~ {extra / gap:.0f} items (estimated)")
    else:
        print("sharded is not faster than plain once started: no crossover K")


if __name__ == "__main__":
    sys.exit(main())
