"""The local runner's own overhead per node.

overhead/node = (wall time of a workflow of N no-op nodes - N x wall time of one bare subprocess of the same
command) / N, for N = 10, 50 and 200, both measured in this run, with pod isolation off (`--isolation none`: a
plain subprocess per pod) and on (`--isolation bwrap`: each pod in bubblewrap, its own root and namespaces).
Goal: under 50 ms per node either way, growing linearly. The nodes form a chain (each depends on the previous), so
every subprocess runs alone, as in the baseline. The last table gives the ratios: workflow wall time over N bare
subprocesses, off and on, and on over off.
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
from workflows.runner.sandbox import bwrap_problem

COMMAND = ["true"]


def chain(n: int) -> dict:
    tasks = [{"name": f"n{i}", "template": "noop", **({"depends": f"n{i - 1}"} if i else {})} for i in range(n)]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"chain-{n}-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {"name": "main", "dag": {"tasks": tasks}},
                {"name": "noop", "container": {"image": "busybox", "command": COMMAND}},
            ],
        },
    }


def bare_subprocess(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(COMMAND, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def workflow_wall(n: int, work: Path, isolation: str = "none") -> float:
    path = work / f"chain-{n}.yaml"
    path.write_text(yaml.safe_dump(chain(n)))
    start = time.perf_counter()
    options = RunOptions(runs_dir=work / "runs", echo=False, isolation=isolation)
    result = run_workflow(str(path), options, argo_dir=work)
    wall = time.perf_counter() - start
    assert result.phase == "Succeeded", result.message
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,50,200")
    args = parser.parse_args()
    problem = bwrap_problem()
    isolations = ["none"] + (["bwrap"] if problem is None else [])
    if problem:
        print(f"isolation on is not measured: {problem}\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for isolation in isolations:
            workflow_wall(3, work, isolation)  # warm imports and caches
        base = bare_subprocess(50)
        print(f"bare subprocess of {' '.join(COMMAND)!r}: {base * 1000:.2f} ms (median of 50)\n")
        print(
            f"{'N':>5} {'isolation':>9} {'workflow s':>11} {'N x bare s':>11} {'overhead ms/node':>17} "
            f"{'vs goal 50 ms':>14}"
        )
        walls: dict[tuple[int, str], float] = {}
        for n in [int(s) for s in args.sizes.split(",")]:
            for isolation in isolations:
                wall = walls[n, isolation] = workflow_wall(n, work, isolation)
                over = (wall - n * base) / n
                print(
                    f"{n:>5} {isolation:>9} {wall:>11.3f} {n * base:>11.3f} {over * 1000:>17.2f} {over / 0.05:>13.2f}x"
                )
        report_ratios(walls, base, isolations)


def report_ratios(walls: dict[tuple[int, str], float], base: float, isolations: list[str]) -> None:
    """Per N: workflow wall / N bare subprocesses for each isolation, and on / off; then linearity."""
    sizes = sorted({n for n, _ in walls})
    print(
        f"\n{'N':>5} "
        + " ".join(f"{'wall/bare ' + i:>16}" for i in isolations)
        + (f" {'bwrap/none':>11}" if "bwrap" in isolations else "")
    )
    for n in sizes:
        ratios = " ".join(f"{walls[n, i] / (n * base):>16.2f}" for i in isolations)
        on_off = f" {walls[n, 'bwrap'] / walls[n, 'none']:>11.2f}" if "bwrap" in isolations else ""
        print(f"{n:>5} {ratios}{on_off}")
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for isolation in isolations:
            per = {n: (walls[n, isolation] - n * base) / n for n in (lo, hi)}
            print(
                f"linearity ({isolation}): overhead/node at N={hi} is {per[hi] / per[lo]:.2f}x that at N={lo} "
                "(1.0 = perfectly linear total)"
            )


if __name__ == "__main__":
    main()
