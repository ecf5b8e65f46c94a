"""The `llmrelease` command line.  Every error a user can cause is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from registry.errors import ReleaseError, SpecError

__all__ = ["main"]


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{flag} {item!r}: write it as NAME=VALUE")
        out[key] = value
    return out


def _cmd_render(args: argparse.Namespace) -> int:
    from workflows.argo.render import check_rendered, write_rendered

    argo_dir = Path(args.argo_dir)
    if args.check:
        differ = check_rendered(argo_dir)
        for file in differ:
            print(f"{argo_dir / file}: differs from a fresh render", file=sys.stderr)
        if differ:
            print("argo/ is out of date: run `llmrelease render` and commit the result", file=sys.stderr)
            return 1
        print(f"{argo_dir}/ matches a fresh render")
        return 0
    for file in write_rendered(argo_dir):
        print(f"wrote {argo_dir / file}")
    return 0


def _cmd_lint(args: argparse.Namespace) -> int:
    from workflows.argo.lint import lint_files

    problems = lint_files(args.files)
    for problem in problems:
        print(str(problem), file=sys.stderr if problem.severity == "error" else sys.stdout)
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        return 2
    print(f"{len(args.files)} file(s) lint clean")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from workflows.runner import RunOptions, run_workflow

    options = RunOptions(parameters=_pairs(args.parameter, "-p"), resume=frozenset(args.resume),
                         supplied=_pairs(args.supply, "--supply"), runs_dir=Path(args.runs_dir),
                         echo=not args.json)
    started = time.monotonic()
    result = run_workflow(args.target, options, argo_dir=Path(args.argo_dir),
                          extra_files=[Path(f) for f in args.file])
    wall = time.monotonic() - started
    if args.json:
        print(json.dumps(result.status, indent=2))
    else:
        print()
        print(result.tree)
        print(f"\nworkflow {result.name} {result.phase} in {wall:.1f}s"
              + (f": {result.message}" if result.message else ""))
        print(f"logs: {result.run_dir}/")
    return 0 if result.phase == "Succeeded" else 1


def _cmd_history(args: argparse.Namespace) -> int:
    from registry import ModelRegistry, format_history

    registry = ModelRegistry.from_env()
    print(format_history(registry.history(args.name)))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from registry import ModelRegistry

    if not args.actor.strip():
        raise SpecError("registry promote --actor is empty: name the person or system promoting (e.g. --actor alice)")
    registry = ModelRegistry.from_env()
    moves = registry.promote(args.name, args.version, actor=args.actor, reason=args.reason)
    for move in moves:
        print(f"{args.name}: {move.alias} {move.from_version or '-'} -> {move.to_version} (by {move.actor})")
    if not moves:
        print(f"{args.name}: version {args.version} is already champion")
    return 0


# More commands live in modules of their own; each has `add_commands(subparsers)` and sets `func` on its parsers.
_COMMAND_MODULES = ("workflows.cli.serving", "workflows.cli.triggers", "workflows.cli.evidence")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrelease", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="render workflows/pipelines/ into argo/")
    render.add_argument("--check", action="store_true", help="fail if argo/ differs from a fresh render")
    render.add_argument("--argo-dir", default="argo")
    render.set_defaults(func=_cmd_render)

    lint = sub.add_parser("lint", help="validate Argo Workflow/WorkflowTemplate/CronWorkflow YAML offline")
    lint.add_argument("files", nargs="+")
    lint.set_defaults(func=_cmd_lint)

    run = sub.add_parser("run", help="run a rendered workflow locally")
    run.add_argument("target", help="a YAML file, or the name of a WorkflowTemplate/CronWorkflow in argo/")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--resume", action="append", default=[], metavar="NODE",
                     help="resume the suspend node of that name instead of failing there")
    run.add_argument("--supply", action="append", default=[], metavar="NODE.PARAM=VALUE",
                     help="a value for a suspend node's supplied output parameter")
    run.add_argument("-f", "--file", action="append", default=[], help="more manifests to resolve refs from")
    run.add_argument("--argo-dir", default="argo")
    run.add_argument("--runs-dir", default=".llmrelease/runs")
    run.add_argument("--json", action="store_true", help="print the Argo-shaped status as JSON")
    run.set_defaults(func=_cmd_run)

    registry = sub.add_parser("registry", help="read the model registry")
    reg_sub = registry.add_subparsers(dest="registry_command", required=True)
    history = reg_sub.add_parser("history", help="every alias move of a model: who, when, from, to, why")
    history.add_argument("name")
    history.set_defaults(func=_cmd_history)
    promote = reg_sub.add_parser("promote", help="make VERSION champion (the old champion becomes previous)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--actor", required=True, help="who promotes (recorded in the history)")
    promote.add_argument("--reason", default="manual promotion", help="why (recorded in the history)")
    promote.set_defaults(func=_cmd_promote)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmrelease` console script."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ReleaseError as e:
        print(f"llmrelease {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llmrelease: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
