"""`llmrelease local up|down|status|upload|env`: the local profile, what the cluster provides, on 127.0.0.1.

`up` starts an S3 API (moto), an MLflow tracking server, a two-node Ray cluster, Prometheus and a Pushgateway
(see `workflows.local`) and writes the ConfigMaps/Secrets the pods get to `<LLMRELEASE_HOME>/local/cluster-config/`
(pass it to `llmrelease run --cluster-config`). A second `up` keeps what runs; `down` stops everything. `upload DIR
NAME` puts a model folder in the profile's bucket (`model.source: s3://...`); `env` prints the pods' environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Add `local up|down|status` to the `llmrelease` parser's subparsers."""
    local = sub.add_parser("local", help="the local profile: MLflow, S3, Ray, Prometheus, serving plane on 127.0.0.1")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    start = local_sub.add_parser("up", help="start the services (those not running) and write the cluster config")
    start.add_argument("--no-ray", action="store_true", help="no Ray cluster: steps start Ray in their own process")
    start.add_argument(
        "--no-warm-evals",
        action="store_true",
        help="do not start the eval workers with a new Ray cluster: the first eval step starts them",
    )
    start.add_argument("--timeout", type=float, default=180.0, help="seconds each service has to be ready")
    start.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="a fixed port (s3, mlflow, pushgateway, prometheus, serving, ray); default: recorded, else free",
    )
    start.add_argument("--json", action="store_true", help="print what was started and the services as JSON")
    start.set_defaults(func=_cmd_up)
    stop = local_sub.add_parser("down", help="save the S3 bucket and stop every service")
    stop.add_argument("--json", action="store_true", help="print what was stopped as JSON")
    stop.set_defaults(func=_cmd_down)
    show = local_sub.add_parser("status", help="one line per service: running or stopped, URL, pid")
    show.add_argument("--json", action="store_true", help="print the services as JSON")
    show.set_defaults(func=_cmd_status)
    upload = local_sub.add_parser("upload", help="upload a model folder to s3://<bucket>/models/NAME/ (a model.source)")
    upload.add_argument("folder", help="the model folder: config.json, weights, tokenizer")
    upload.add_argument("name", help="its name under models/ in the profile's bucket")
    upload.set_defaults(func=_cmd_upload)
    env = local_sub.add_parser("env", help="print the pods' environment as shell export lines (for eval)")
    env.set_defaults(func=_cmd_env)


def _ports(pairs: list[str]) -> dict[str, int]:
    from registry.errors import SpecError
    from workflows.cli.options import parse_pairs

    out = {}
    for name, value in parse_pairs(pairs, "--port").items():
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise SpecError(f"--port {name}={value}: not a TCP port; give a number from 1 to 65535")
        out[name] = int(value)
    return out


def _line(service: Any) -> str:
    if not service.running:
        return f"{service.name}: stopped"
    return f"{service.name}: running {service.url} (pid {service.pid}, log {service.log})"


def _cmd_up(args: argparse.Namespace) -> int:
    from registry.settings import llmrelease_home
    from workflows.local import up

    home = llmrelease_home()
    result = up(
        home, ray=not args.no_ray, timeout=args.timeout, ports=_ports(args.port), warm_evals=not args.no_warm_evals
    )
    if args.json:
        body = dataclasses.asdict(result) | {"cluster_config": str(result.cluster_config)}
        print(json.dumps(body, indent=2))
        return 0
    if not result.started:
        print("local profile already running; nothing started")
    for service in result.services:
        if service.running:
            verb = "started" if service.name in result.started else "kept"
            print(f"{_line(service)} [{verb}]")
    if result.warm_up:
        print(result.warm_up)
    print(f"cluster config: {result.cluster_config} (llmrelease run --cluster-config {result.cluster_config})")
    print(f"up in {result.seconds:.1f}s")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from registry.settings import llmrelease_home
    from workflows.local import down

    result = down(llmrelease_home())
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return 0
    if result.note:
        print(f"note: {result.note}")
    print(f"stopped {', '.join(result.stopped)}" if result.stopped else "nothing was running")
    print(f"down in {result.seconds:.1f}s")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from registry.settings import llmrelease_home
    from workflows.local import status

    services = status(llmrelease_home())
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in services], indent=2))
        return 0
    for service in services:
        print(_line(service))
    print(f"serving plane: local (model servers and the router start on demand, state under {llmrelease_home()})")
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from pathlib import Path

    from registry.settings import llmrelease_home
    from workflows.local.access import upload_model

    print(upload_model(llmrelease_home(), Path(args.folder), args.name))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    import shlex

    from registry.settings import llmrelease_home
    from workflows.local.access import profile_env

    for name, value in sorted(profile_env(llmrelease_home()).items()):
        print(f"export {name}={shlex.quote(value)}")
    return 0
