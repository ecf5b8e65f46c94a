"""The `llmrelease` command line.  Every error a user can cause is one line on stderr and a non-zero exit.

No traceback reaches a user: `main` turns any error into one line naming the problem and the fix (see
`workflows.cli.errors`); `--debug` or LLMRELEASE_DEBUG=1 prints the traceback too. Read commands take `--json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from registry.errors import SpecError
from workflows.cli.errors import debug_requested, quiet_libraries, report
from workflows.cli.examples import add_examples
from workflows.cli.options import parse_pairs
from workflows.cli.runs import print_result

__all__ = ["main"]


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
    errors = sum(p.severity == "error" for p in problems)
    if args.json:
        print(
            json.dumps(
                {"files": list(args.files), "errors": errors, "problems": [dataclasses.asdict(p) for p in problems]},
                indent=2,
            )
        )
        return 2 if errors else 0
    for problem in problems:
        print(str(problem), file=sys.stderr if problem.severity == "error" else sys.stdout)
    if errors:
        return 2
    print(f"{len(args.files)} file(s) lint clean")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from workflows.runner import RunOptions, run_workflow

    options = RunOptions(
        parameters=_with_checkout(args.target, Path(args.argo_dir), parse_pairs(args.parameter, "-p")),
        resume=frozenset(args.resume),
        supplied=parse_pairs(args.supply, "--supply"),
        runs_dir=Path(args.runs_dir),
        echo=not args.json,
        isolation=args.isolation,
        cluster_config=Path(args.cluster_config) if args.cluster_config else None,
    )
    started = time.monotonic()
    result = run_workflow(args.target, options, argo_dir=Path(args.argo_dir), extra_files=[Path(f) for f in args.file])
    return print_result(result, time.monotonic() - started, as_json=args.json)


def _with_checkout(target: str, argo_dir: Path, parameters: dict[str, str]) -> dict[str, str]:
    """`parameters`, with `git-repo` = the git checkout this runs in when the template takes one and none is given.

    A local run reads its release spec from the repository it is run from, at `git-commit` (committed specs only,
    as on a cluster); `-p git-repo=URL|PATH` overrides it; outside a checkout the template's default stays.
    """
    if "git-repo" in parameters or target.endswith((".yaml", ".yml")) or not argo_dir.is_dir():
        return parameters
    from workflows.argo.manifests import load_library

    found = load_library(argo_dir).by_name(target, ("WorkflowTemplate",))
    declared = ((found[1].get("spec") or {}).get("arguments") or {}).get("parameters") or [] if found else []
    if not any(p.get("name") == "git-repo" for p in declared):
        return parameters
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False)
    top = done.stdout.strip()
    return {**parameters, "git-repo": top} if done.returncode == 0 and top else parameters


def _cmd_history(args: argparse.Namespace) -> int:
    from registry import format_history
    from registry.prompts import PromptRegistry
    from workflows.cli.models import require_model

    prompts = PromptRegistry.from_env()  # a prompt's alias moves, or else the model's
    moves = prompts.history(args.name) if prompts.exists(args.name) else require_model(args.name).history(args.name)
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in moves], indent=2))
    else:
        print(format_history(moves))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from workflows.cli.models import registered_models

    models = registered_models()
    if args.json:
        print(json.dumps(models, indent=2))
    elif not models:
        print("no registered models yet: onboard and register one (llmrelease run golden-delivery ...)")
    for model in [] if args.json else models:
        aliases = ", ".join(f"{a} {v}" for a, v in sorted(model["aliases"].items())) or "no aliases"
        print(f"{model['name']}: latest version {model['latest_version'] or '-'}; {aliases}")
    return 0


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(_parser(), shell=args.shell), end="")
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
_COMMAND_MODULES = (
    "workflows.cli.runs",
    "workflows.cli.serving",
    "workflows.cli.rollout",
    "workflows.cli.triggers",
    "workflows.cli.evidence",
    "workflows.cli.local",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrelease", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmrelease {_version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too (LLMRELEASE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="render workflows/pipelines/ into argo/")
    render.add_argument("--check", action="store_true", help="fail if argo/ differs from a fresh render")
    render.add_argument("--argo-dir", default="argo")
    render.set_defaults(func=_cmd_render)

    lint = sub.add_parser("lint", help="validate Argo Workflow/WorkflowTemplate/CronWorkflow YAML offline")
    lint.add_argument("files", nargs="+")
    lint.add_argument("--json", action="store_true", help="print the problems as JSON (exit 2 on errors all the same)")
    lint.set_defaults(func=_cmd_lint)

    run = sub.add_parser("run", help="run a rendered workflow locally")
    run.add_argument("target", help="a YAML file, or the name of a WorkflowTemplate/CronWorkflow in argo/")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument(
        "--resume",
        action="append",
        default=[],
        metavar="NODE",
        help="resume the suspend node of that name at once instead of suspending there",
    )
    run.add_argument(
        "--supply",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="a value for a suspend node's supplied output parameter",
    )
    run.add_argument("-f", "--file", action="append", default=[], help="more manifests to resolve refs from")
    run.add_argument("--argo-dir", default="argo")
    run.add_argument("--runs-dir", default=".llmrelease/runs")
    run.add_argument("--json", action="store_true", help="print the Argo-shaped status as JSON")
    run.add_argument(
        "--isolation",
        choices=("none", "bwrap"),
        default="bwrap",
        help="bwrap (the default): each pod in bubblewrap, seeing only its image's files and Argo's environment; "
        "none: pods are host processes with their paths rewritten (where bubblewrap cannot run)",
    )
    run.add_argument(
        "--cluster-config",
        metavar="DIR",
        default=None,
        help="a folder of ConfigMap/Secret YAML: pod env and the artifact-repositories ConfigMap",
    )
    run.set_defaults(func=_cmd_run)

    registry = sub.add_parser("registry", help="read the model registry")
    reg_sub = registry.add_subparsers(dest="registry_command", required=True)
    history = reg_sub.add_parser("history", help="every alias move of a model or a prompt: who, when, from, to, why")
    history.add_argument("name")
    history.add_argument("--json", action="store_true", help="print the moves as JSON")
    history.set_defaults(func=_cmd_history)
    listing = reg_sub.add_parser("list", help="every registered model: latest version and aliases")
    listing.add_argument("--json", action="store_true", help="print the models as JSON")
    listing.set_defaults(func=_cmd_list)
    promote = reg_sub.add_parser("promote", help="make VERSION champion (the old champion becomes previous)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--actor", required=True, help="who promotes (recorded in the history)")
    promote.add_argument("--reason", default="manual promotion", help="why (recorded in the history)")
    promote.set_defaults(func=_cmd_promote)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    completion = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(func=_cmd_completion)
    add_examples(parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmrelease")
    except PackageNotFoundError:
        return "(not installed: pip install -e .)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmrelease` console script: the command's exit code; an error is one line on stderr.

    Args:
        argv: The arguments after `llmrelease` (default: sys.argv[1:]).

    Returns:
        0 on success; a `ReleaseError`'s exit code; 1 for any other error; 130 when interrupted. Usage errors
        exit 2 through argparse, with its usage line.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(arguments)
    if not debug:
        quiet_libraries()
    prefix = "llmrelease"
    try:
        args = _parser().parse_args(arguments)
        prefix = f"llmrelease {args.command}"
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llmrelease ... | head`: the reader left; nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit: give it a sink
        return 1
    except Exception as e:
        return report(e, prefix, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
