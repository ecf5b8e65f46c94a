"""`llmrelease` commands for serving: rollback, canary resume/abort, serving status/stop (`rollout ...`: rollout.py).

Imports stay inside the commands: `llmrelease rollback` must move traffic before anything heavy (MLflow) loads.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["add_commands"]


def _require_known(plane: Any, name: str) -> None:
    """Refuse (exit 1) a model this machine does not serve and the registry does not hold.

    A model served here is known without asking MLflow: the rollback of a served model stays MLflow-free until
    traffic moved.
    """
    state = plane.state(name)
    if state.servers or state.router_port is not None:
        return
    from workflows.cli.models import require_model

    require_model(name)


def _cmd_rollback(args: argparse.Namespace) -> int:
    # Only what moves traffic is imported before the switch (not Hera, not MLflow): see
    # `steps.rollout.operations.rollback`.
    from registry.errors import SpecError
    from registry.settings import llmrelease_home
    from steps.rollout.operations import rollback
    from steps.rollout.serving.factory import serving_plane

    started = time.perf_counter()
    if not args.actor.strip():
        raise SpecError("--actor is empty: say who rolls back, it goes into the registry history")
    if args.env:
        from steps.rollout.serving.factory import rollout_plane

        cluster = rollout_plane(args.env)
        if cluster is not None:
            return _rollback_cluster(cluster, args, started)
    plane = serving_plane("", llmrelease_home())
    _require_known(plane, args.name)
    result = rollback(plane, args.name, actor=args.actor, reason=args.reason)
    path = "hot previous" if result["fast"] else "previous started cold, then switched"
    print(
        f"{args.name}: rolled back: champion {result['from']} -> {result['to']}; all traffic on {result['to']} "
        f"{result['switched_s']:.3f}s after the command started ({path}); "
        f"done in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _rollback_cluster(plane: Any, args: argparse.Namespace, started: float) -> int:
    """`undo` of the model's Rollout (the environment is on the cluster plane), then the registry's aliases."""
    from steps.rollout.cluster_release import rollback
    from workflows.cli.models import require_model

    result = rollback(require_model(args.name), plane, args.name, actor=args.actor, reason=args.reason)
    print(
        f"{args.name}: rolled back: champion {result['from']} -> {result['to']}; the Rollout is Healthy on "
        f"{result['to']} {result['switched_s']:.1f}s after the command started (undo within the hot window)"
    )
    return 0


def _cmd_canary_decide(args: argparse.Namespace) -> int:
    from registry.errors import SpecError
    from steps.rollout.operations import request_canary_decision
    from workflows.cli.models import require_model

    if not args.actor.strip():
        raise SpecError("--actor is empty: say who decides, it is recorded in the canary log")
    lease = request_canary_decision(require_model(args.name), args.name, args.canary_command, args.actor)
    if lease is None:
        raise SpecError(f"no canary of {args.name} is in flight: nothing to {args.canary_command}")
    print(f"{args.name}: canary of version {lease.candidate}: {args.canary_command} requested by {args.actor}")
    return 0


def _cmd_serving_status(args: argparse.Namespace) -> int:
    from registry.settings import llmrelease_home
    from steps.rollout.serving.base import server_name
    from steps.rollout.serving.factory import serving_plane

    plane = serving_plane("", llmrelease_home())
    _require_known(plane, args.name)
    state = plane.state(args.name)
    weights: dict[str, int] = {}
    if state.router_port is not None:
        try:
            weights = plane.router(state).weights()
        except Exception as e:  # status reports what it can
            print(f"router: not reachable ({e})")
    if args.json:
        print(json.dumps({**state.model_dump(), "weights": weights}, indent=2))
        return 0
    url = plane.router_url(state) if state.router_port else "none"
    print(f"{args.name}: router {url}; champion {state.champion}, previous {state.previous}, canary {state.canary}")
    for version, server in state.servers.items():
        alive = "ready" if plane.is_ready(state, server) else "down"
        hot = f", hot until {datetime.fromtimestamp(server.hot_until, UTC):%H:%M:%S}Z" if server.hot_until else ""
        print(f"  v{version}: {server.base_url} {alive}, weight {weights.get(server_name(version), 0)}%{hot}")
    return 0


def _cmd_serving_stop(args: argparse.Namespace) -> int:
    from registry.settings import llmrelease_home
    from steps.rollout.serving.factory import serving_plane

    plane = serving_plane("", llmrelease_home())
    _require_known(plane, args.name)
    plane.shutdown(args.name)
    print(f"{args.name}: router and model servers stopped")
    return 0


def add_commands(sub: Any) -> None:
    """Add rollback, canary and serving to the `llmrelease` parser."""
    rollback = sub.add_parser("rollback", help="all traffic and `champion` back on `previous`, in one command")
    rollback.add_argument("name", help="registered model name")
    rollback.add_argument("--actor", required=True, help="who rolls back (recorded in the history)")
    rollback.add_argument("--reason", default="manual rollback", help="why (recorded in the history)")
    rollback.add_argument(
        "--env", default="", help="environment whose policy picks the plane (kubernetes: undo the Rollout)"
    )
    rollback.set_defaults(func=_cmd_rollback)

    canary = sub.add_parser("canary", help="decide a canary paused on an Inconclusive analysis")
    canary_sub = canary.add_subparsers(dest="canary_command", required=True)
    for action, text in (("resume", "go on to the next traffic step"), ("abort", "abort: traffic back on champion")):
        decide = canary_sub.add_parser(action, help=text)
        decide.add_argument("name")
        decide.add_argument("--actor", required=True)
        decide.set_defaults(func=_cmd_canary_decide)

    serving = sub.add_parser("serving", help="the local serving plane (model servers and router)")
    serving_sub = serving.add_subparsers(dest="serving_command", required=True)
    status = serving_sub.add_parser("status", help="router URL, servers, weights and roles of a model")
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_serving_status)
    stop = serving_sub.add_parser("stop", help="stop a model's router and model servers")
    stop.add_argument("name")
    stop.set_defaults(func=_cmd_serving_stop)
