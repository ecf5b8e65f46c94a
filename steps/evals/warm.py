"""Start the eval workers before the first step needs them: `python -m steps.evals.warm [--shards N]`.

The first eval step after a Ray cluster starts pays for its workers' start (a process per worker, torch and
transformers imported: ~6-10 s on 2 cores); every later step finds them warm (`steps.evals.worker_pool`). This
starts them ahead, with the shape a CPU step of `--shards` workers gets on this cluster (the same names), and
exits; they stay until their idle timeout (LLMRELEASE_EVAL_IDLE_S). `llmrelease local up` runs it and waits for it
once its Ray cluster is up (`--no-warm-evals`: not); on a cluster, run it as a Job after the RayCluster is ready, or
not at all.
Joins the cluster at RAY_ADDRESS; any failure is one line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time

from steps.evals.engines.base import EvalError
from steps.evals.worker_pool import ShardOptions, WorkerPool, code_tag


def main(argv: list[str] | None = None) -> int:
    """Warm up the workers of a `--shards`-worker CPU step; print what was started."""
    parser = argparse.ArgumentParser(prog="python -m steps.evals.warm", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2, help="the eval steps' `shards` (default 2)")
    parser.add_argument("--cores", type=int, default=None, help="cores the workers share (default: the cluster's)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        with WorkerPool(ShardOptions(workers=args.shards, cores=args.cores)) as pool:
            size = pool.prepare()
            threads, cpus, _ = pool.shape
            pids = ", ".join(str(w["pid"]) for w in pool.where)
    except EvalError as e:
        print(f"eval warm-up: {e}", file=sys.stderr, flush=True)
        return 1
    took = time.monotonic() - started
    shape = f"{threads} thread(s) and {cpus:g} CPU(s) each, code {code_tag()}"
    print(f"eval warm-up: {size} workers ready ({shape}; pids {pids}) in {took:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
