"""`llmrelease rollout get|promote|abort|undo|retry NAME`: what `kubectl argo rollouts` users know, on either plane.

The environment's policy picks the plane (`--env`; none: the local plane on this machine):

- get [--watch]: cluster: phase, step, canary weight, pause reasons and the AnalysisRuns' measurements, --watch
  follows until the Rollout settles (exit 1 when Degraded); local: champion, previous, live weights and the canary
  in flight, --watch until none is.
- promote [--full]: cluster: `kubectl argo rollouts promote [--full]`; local: the paused canary goes on (what
  `canary resume` asks).
- abort: cluster: status.abort, all traffic on stable; local: the canary aborted, all traffic on the champion.
- undo: traffic and `champion` back on `previous`: cluster: the previous version's pod template back in the Rollout
  (a traffic switch within keep_previous_hot_s), then the aliases (`steps.rollout.cluster_release.rollback`); local:
  `steps.rollout.operations.rollback`.
- retry: cluster: an aborted Rollout runs its steps again; local: refused (resubmit the release).

`llmrelease rollback NAME` stays the documented alias of `rollout undo NAME` on the local plane.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from typing import Any

__all__ = ["add_commands"]


def _actor(args: argparse.Namespace) -> str:
    from registry.errors import SpecError

    actor = (args.actor if args.actor is not None else os.environ.get("USER") or getpass.getuser()).strip()
    if not actor:
        raise SpecError("--actor is empty: say who acts, it is recorded in the registry history")
    return actor


def _cluster(args: argparse.Namespace) -> Any:
    from steps.rollout.serving.factory import rollout_plane
    from steps.rollout.serving.rollouts import RolloutOptions

    return rollout_plane(args.env, options=RolloutOptions(namespace=args.namespace))


def _local_plane() -> Any:
    from registry.settings import llmrelease_home
    from steps.rollout.serving.factory import serving_plane

    return serving_plane("", llmrelease_home())


# --- get ----------------------------------------------------------------------------------------------------------
def _cmd_get(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster is not None:
        return _get_cluster(cluster, args)
    return _get_local(args)


def _get_cluster(plane: Any, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from steps.rollout.serving.cluster import describe

    if args.watch:
        outcome = plane.follow(args.name, timeout_s=args.timeout, poll_s=args.interval, echo=print)
        status, measured, errors = outcome.status, outcome.measurements, outcome.run_errors
    else:
        status = plane.status(args.name)
        measured, errors = plane.measurements(args.name)
    if args.json:
        print(json.dumps({**asdict(status), "measurements": [asdict(m) for m in measured], "errors": errors}, indent=2))
    else:
        print(f"{args.name}: {describe(status)}")
        for m in measured:
            print(f"  {m.run} {m.metric}: {m.phase} {m.value if m.value is not None else ''}".rstrip())
        for error in errors:
            print(f"  {error}")
    return 1 if status.settled == "Degraded" else 0


def _local_view(name: str) -> dict[str, Any]:
    from steps.rollout.operations import current_lease
    from workflows.cli.models import require_model

    plane = _local_plane()
    lease = current_lease(require_model(name), name)
    state = plane.state(name)
    weights: dict[str, int] = {}
    if state.router_port is not None:
        try:
            weights = plane.router(state).weights()
        except Exception as e:  # get reports what it can
            weights = {"unreachable": 0}
            print(f"{name}: router not reachable ({e})")
    return {
        "model": name, "champion": state.champion, "previous": state.previous, "canary": state.canary,
        "weights": weights, "in_flight": lease.candidate if lease else None,
        "workflow": lease.workflow_uid if lease else None,
    }  # fmt: skip


def _get_local(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        view = _local_view(args.name)
        if view != last:
            if args.json:
                print(json.dumps(view))
            else:
                split = ", ".join(f"{k} {v}%" for k, v in view["weights"].items()) or "no router"
                flight = f"canary {view['in_flight']} in flight" if view["in_flight"] else "nothing in flight"
                print(f"{args.name}: champion {view['champion']}, previous {view['previous']}; {flight}; {split}")
        last = view
        if not args.watch or view["in_flight"] is None:
            return 0
        if time.monotonic() >= deadline:
            from registry.errors import SpecError

            raise SpecError(f"rollout of {args.name} still in flight after {args.timeout:g}s: watch again or abort it")
        time.sleep(args.interval)


# --- promote / abort / undo / retry -------------------------------------------------------------------------------
def _cmd_promote(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster is not None:
        print(cluster.promote(args.name, full=args.full))
        return 0
    from registry.errors import SpecError
    from steps.rollout.operations import request_canary_decision
    from workflows.cli.models import require_model

    if args.full:
        raise SpecError("--full: the local plane promotes one paused step at a time: run `rollout promote` again")
    actor = _actor(args)
    lease = request_canary_decision(require_model(args.name), args.name, "resume", actor)
    if lease is None:
        raise SpecError(f"no rollout of {args.name} is in flight: nothing to promote (see `rollout get`)")
    print(f"{args.name}: canary of version {lease.candidate}: promote requested by {actor}")
    return 0


def _cmd_abort(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster is not None:
        print(cluster.abort(args.name))
        return 0
    from steps.rollout.operations import abort
    from workflows.cli.models import require_model

    reason = f"aborted by {_actor(args)}: {args.reason}"
    aborted = abort(require_model(args.name), _local_plane(), model=args.name, workflow_uid=None, reason=reason)
    done = f"rollout of version {aborted} aborted; all traffic on the champion" if aborted else "no rollout in flight"
    print(f"{args.name}: {done}")
    return 0


def _cmd_undo(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster is not None:  # the Rollout's previous revision back, then `champion` (as `llmrelease rollback --env`)
        from steps.rollout.cluster_release import rollback as rollback_cluster
        from workflows.cli.models import require_model

        done = rollback_cluster(require_model(args.name), cluster, args.name, actor=_actor(args), reason=args.reason)
        print(
            f"{args.name}: undone: champion {done['from']} -> {done['to']}; the Rollout is Healthy on {done['to']} "
            f"{done['switched_s']:.1f}s after the command started"
        )
        return 0
    from steps.rollout.operations import rollback

    started = time.perf_counter()
    actor, plane = _actor(args), _local_plane()
    state = plane.state(args.name)
    if not state.servers and state.router_port is None:
        from workflows.cli.models import require_model

        require_model(args.name)
    result = rollback(plane, args.name, actor=actor, reason=args.reason)
    path = "hot previous" if result["fast"] else "previous started cold, then switched"
    print(
        f"{args.name}: undone: champion {result['from']} -> {result['to']}; all traffic on {result['to']} "
        f"{result['switched_s']:.3f}s after the command started ({path}); done in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster is not None:
        print(cluster.retry(args.name))
        return 0
    from registry.errors import SpecError

    raise SpecError(
        f"rollout retry {args.name}: the local plane keeps no aborted rollout to restart: resubmit the release "
        "(`llmrelease run`), or use --env for an environment on the cluster plane"
    )


def add_commands(sub: Any) -> None:
    """Add `rollout get|promote|abort|undo|retry` to the `llmrelease` parser."""
    rollout = sub.add_parser("rollout", help="a model's rollout: get, promote, abort, undo, retry (Argo Rollouts)")
    verbs = rollout.add_subparsers(dest="rollout_command", required=True)
    commands = {
        "get": (_cmd_get, "phase, step, weights and analysis of the model's rollout"),
        "promote": (_cmd_promote, "go on past the current pause or step (--full: to the end)"),
        "abort": (_cmd_abort, "abort the rollout in flight: all traffic back on stable"),
        "undo": (_cmd_undo, "back to the previous version (`llmrelease rollback` is its alias on the local plane)"),
        "retry": (_cmd_retry, "start an aborted rollout's steps again (cluster plane)"),
    }
    for verb, (func, text) in commands.items():
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("name", help="registered model name (the Rollout's name)")
        parser.add_argument("--env", default="", help="environment whose policy picks the plane (default: local)")
        parser.add_argument("--namespace", default="llmrelease", help="the Rollout's namespace (cluster plane)")
        parser.add_argument("--actor", default=None, help="who acts (recorded; default: $USER)")
        parser.set_defaults(func=func)
    get = verbs.choices["get"]
    get.add_argument("--watch", "-w", action="store_true", help="follow until the rollout settles")
    get.add_argument("--timeout", type=float, default=3600.0, help="seconds --watch waits (default 3600)")
    get.add_argument("--interval", type=float, default=5.0, help="seconds between reads with --watch")
    get.add_argument("--json", action="store_true")
    verbs.choices["promote"].add_argument("--full", action="store_true", help="skip the remaining steps and analysis")
    for verb in ("abort", "undo"):
        verbs.choices[verb].add_argument("--reason", default=f"manual {verb}", help="why (recorded)")
