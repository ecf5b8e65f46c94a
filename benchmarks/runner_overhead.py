"""The local runner's own overhead per node.

overhead/node = (wall time of a workflow of N no-op nodes - N x wall time of one bare subprocess of the same
command) / N, for N = 10 and 100, both measured in this run. Goal: under 50 ms per node, growing linearly.
The nodes form a chain (each depends on the previous), so every subprocess runs alone, as in the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from workflows.runner import RunOptions, run_workflow

COMMAND = ["true"]


def chain(n: int) -> dict:
    tasks = [{"name": f"n{i}", "template": "noop", **({"depends": f"n{i - 1}"} if i else {})} for i in range(n)]
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": f"chain-{n}-"},
            "spec": {"entrypoint": "main", "templates": [
                {"name": "main", "dag": {"tasks": tasks}},
                {"name": "noop", "container": {"image": "busybox", "command": COMMAND}}]}}


def bare_subprocess(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(COMMAND, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def workflow_wall(n: int, work: Path) -> float:
    path = work / f"chain-{n}.yaml"
    path.write_text(yaml.safe_dump(chain(n)))
    start = time.perf_counter()
    result = run_workflow(str(path), RunOptions(runs_dir=work / "runs", echo=False), argo_dir=work)
    wall = time.perf_counter() - start
    assert result.phase == "Succeeded", result.message
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        workflow_wall(3, work)  # warm imports and caches
        base = bare_subprocess(50)
        print(f"bare subprocess of {' '.join(COMMAND)!r}: {base * 1000:.2f} ms (median of 50)\n")
        print(f"{'N':>5} {'workflow s':>11} {'N x bare s':>11} {'overhead ms/node':>17} {'vs goal 50 ms':>14}")
        per_node = {}
        for n in [int(s) for s in args.sizes.split(",")]:
            wall = workflow_wall(n, work)
            over = (wall - n * base) / n
            per_node[n] = over
            print(f"{n:>5} {wall:>11.3f} {n * base:>11.3f} {over * 1000:>17.2f} {over / 0.05:>13.2f}x")
        sizes = sorted(per_node)
        if len(sizes) >= 2:
            lo, hi = sizes[0], sizes[-1]
            print(f"\nlinearity: overhead/node at N={hi} is {per_node[hi] / per_node[lo]:.2f}x that at N={lo} "
                  "(1.0 = perfectly linear total)")


if __name__ == "__main__":
    main()
