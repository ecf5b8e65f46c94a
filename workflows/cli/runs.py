"""`llmrelease list|get|resume|stop|terminate`: local workflows under the runs folder, with `argo`'s meanings.

`resume NAME` continues a suspended workflow from its saved state (finished nodes are not re-run; `--supply`
values become the suspend node's output parameters); `stop` ends it running exit handlers, `terminate` without.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workflows.cli.options import parse_pairs

__all__ = ["add_commands", "print_result"]

_RUNS = ".llmrelease/runs"


def print_result(result: Any, wall: float | None = None, *, as_json: bool = False) -> int:
    """Print a run's tree and outcome (or its status as JSON); exit 0 when Succeeded or suspended (Running)."""
    if as_json:
        print(json.dumps(result.status, indent=2))
    else:
        print()
        print(result.tree)
        took = f" in {wall:.1f}s" if wall is not None else ""
        print(f"\nworkflow {result.name} {result.phase}{took}" + (f": {result.message}" if result.message else ""))
        print(f"logs: {result.run_dir}/")
    return 0 if result.phase in ("Succeeded", "Running") else 1


def _cmd_list(args: argparse.Namespace) -> int:
    from workflows.runner import list_runs

    runs = list_runs(Path(args.runs_dir))
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print(f"no workflows under {args.runs_dir}/ yet: llmrelease run NAME")
    else:
        print(f"{'NAME':<40} {'STATUS':<10} {'STARTED':<21} {'DURATION':>9}")
    for run in runs:
        print(f"{run['name']:<40} {run['phase']:<10} {run['startedAt'] or '-':<21} {_duration(run):>9}")
    return 0


def _duration(run: dict[str, Any]) -> str:
    from datetime import datetime

    if not run["startedAt"]:
        return "-"
    start = datetime.fromisoformat(str(run["startedAt"]).replace("Z", "+00:00")).timestamp()
    end = (
        datetime.fromisoformat(str(run["finishedAt"]).replace("Z", "+00:00")).timestamp()
        if run["finishedAt"]
        else run["mtime"]
    )
    return f"{max(0.0, end - start):.0f}s"


def _cmd_get(args: argparse.Namespace) -> int:
    from workflows.runner.nodes import format_tree
    from workflows.runner.state import load_saved, node_from_dict

    saved = load_saved(Path(args.runs_dir), args.name)
    status = json.loads((Path(args.runs_dir) / args.name / "status.json").read_text())
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    nodes = {n["id"]: node_from_dict(n) for n in saved.nodes}
    print(f"Name:      {saved.name}\nStatus:    {status['status']['phase']}")
    if status["status"].get("message"):
        print(f"Message:   {status['status']['message']}")
    print(f"Started:   {status['status']['startedAt']}\n")
    roots = [n for n in nodes.values() if n.name in (saved.name, f"{saved.name}.onExit")]

    class _Book:
        def get(self, node_id: str) -> Any:
            return nodes[node_id]

    for root in roots:
        print(format_tree(_Book(), root))  # type: ignore[arg-type]
    return 0


def _continue(args: argparse.Namespace, shutdown: str) -> int:
    from workflows.runner import continue_workflow

    supplied = parse_pairs(getattr(args, "supply", []), "--supply")
    node = getattr(args, "node", None)
    if node:
        supplied = {k if k.startswith(f"{node}.") else f"{node}.{k}": v for k, v in supplied.items()}
    result = continue_workflow(
        args.name,
        Path(args.runs_dir),
        nodes=frozenset([node] if node else []),
        supplied=supplied,
        shutdown=shutdown,
        echo=not args.json,
    )
    return print_result(result, as_json=args.json)


def _cmd_resume(args: argparse.Namespace) -> int:
    return _continue(args, "")


def _shutdown(args: argparse.Namespace, strategy: str) -> int:
    """`argo stop|terminate`: a live run is asked to end (it kills its pods); a suspended one is ended here."""
    from workflows.runner import request_shutdown

    pid = request_shutdown(args.name, Path(args.runs_dir), strategy)
    if pid is None:
        _continue(args, strategy)
        return 0
    verb = "stopped" if strategy == "Stop" else "terminated"
    if args.json:
        print(json.dumps({"name": args.name, "shutdown": strategy, "pid": pid}))
    else:
        print(f"workflow {args.name} {verb}: its runner (pid {pid}) kills its running pods and ends it")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    return _shutdown(args, "Stop")


def _cmd_terminate(args: argparse.Namespace) -> int:
    return _shutdown(args, "Terminate")


def add_commands(sub: Any) -> None:
    """Add list, get, resume, stop and terminate to the `llmrelease` parser."""
    listing = sub.add_parser("list", help="local workflows under the runs folder: status, started, duration")
    get = sub.add_parser("get", help="a local workflow's node tree (or its Argo-shaped status with --json)")
    get.add_argument("name")
    resume = sub.add_parser("resume", help="resume a suspended local workflow from its saved state")
    resume.add_argument("name")
    resume.add_argument("--node", default=None, help="resume only this suspend node (default: every one)")
    resume.add_argument("--supply", action="append", default=[], metavar="PARAM=VALUE", help="a supplied output")
    stop = sub.add_parser("stop", help="stop a local workflow: no new nodes, exit handlers run")
    stop.add_argument("name")
    terminate = sub.add_parser("terminate", help="terminate a local workflow: no new nodes, no exit handlers")
    terminate.add_argument("name")
    commands = ((listing, _cmd_list), (get, _cmd_get), (resume, _cmd_resume), (stop, _cmd_stop))
    for parser, func in (*commands, (terminate, _cmd_terminate)):
        parser.add_argument("--runs-dir", default=_RUNS)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)
