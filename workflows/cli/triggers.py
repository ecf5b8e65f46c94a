"""`llmrelease` commands for triggers (added to the parser by `workflows.cli.main`).

* `submit TEMPLATE -p k=v [--watch]`: submit a rendered WorkflowTemplate to an Argo Server (Hera's
  WorkflowsService), after checking the parameters against argo/; `--watch` polls until the workflow ends.
* `cron next NAME [-n 5]`: the next fire times of a rendered CronWorkflow, in its time zone.
* `webhook simulate PAYLOAD.json --signature sha256=...`: a GitHub delivery through the rendered EventSource and
  Sensor (see `workflows.events.webhook`), then the resulting workflow on the local runner.

The Argo Server comes from the environment, as for the `argo` CLI: ARGO_SERVER (host:port, or a URL; default
localhost:2746), ARGO_SECURE (default true: https), ARGO_INSECURE_SKIP_VERIFY, ARGO_TOKEN (with or without
"Bearer "), ARGO_NAMESPACE (default argo), ARGO_BASE_HREF (the UI's base path, default /).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.errors import ReleaseError, SpecError
from workflows.cli.options import parse_pairs

__all__ = ["add_commands", "check_parameters", "next_fire_times"]

_DONE = ("Succeeded", "Failed", "Error")


def add_commands(sub: Any) -> None:
    """Add this module's subcommands to the `llmrelease` parser's subparsers."""
    submit = sub.add_parser("submit", help="submit a rendered WorkflowTemplate to an Argo Server")
    submit.add_argument("template", help="the WorkflowTemplate's name (as rendered in argo/)")
    submit.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    submit.add_argument("--watch", action="store_true", help="poll until the workflow ends; exit 1 unless it succeeds")
    submit.add_argument("--interval", type=float, default=5.0, help="seconds between polls with --watch")
    submit.add_argument("--argo-dir", default="argo")
    submit.set_defaults(func=_cmd_submit)

    cron = sub.add_parser("cron", help="CronWorkflow schedules")
    cron_sub = cron.add_subparsers(dest="cron_command", required=True)
    nxt = cron_sub.add_parser("next", help="the next fire times of a rendered CronWorkflow, in its time zone")
    nxt.add_argument("name", help="a CronWorkflow's name in argo/, or a YAML file")
    nxt.add_argument("-n", type=int, default=5, help="how many fire times (default 5)")
    nxt.add_argument("--schedule", action="append", default=[], help="preview another schedule instead")
    nxt.add_argument("--timezone", help="preview another IANA time zone instead")
    nxt.add_argument("--after", help="start from this ISO time (default now)")
    nxt.add_argument("--argo-dir", default="argo")
    nxt.add_argument("--json", action="store_true", help="print the schedules, time zone and times as JSON")
    nxt.set_defaults(func=_cmd_cron_next)

    hook = sub.add_parser("webhook", help="git-merge webhook")
    hook_sub = hook.add_subparsers(dest="webhook_command", required=True)
    sim = hook_sub.add_parser("simulate", help="run a GitHub delivery through the rendered EventSource and Sensor")
    sim.add_argument("payload", help="the delivery's JSON body, exactly as GitHub signed it")
    sim.add_argument("--signature", help="the X-Hub-Signature-256 header: sha256=<hex>")
    sim.add_argument("--secret-env", default="GITHUB_WEBHOOK_SECRET", help="env variable holding the webhook secret")
    sim.add_argument("--delivery-id", help="the X-GitHub-Delivery header (default: a new GUID)")
    sim.add_argument("--event", default="push", help="the X-GitHub-Event header (default push)")
    sim.add_argument("--sensor", help="the Sensor's name when argo/ has several")
    sim.add_argument("--dry-run", action="store_true", help="print the Workflow it would run; run and record nothing")
    sim.add_argument("--argo-dir", default="argo")
    sim.add_argument("--runs-dir", default=".llmrelease/runs")
    sim.set_defaults(func=_cmd_webhook_simulate)


# ---- submit -----------------------------------------------------------------------------------------------------


def check_parameters(template: Mapping[str, Any], given: Mapping[str, str]) -> None:
    """Refuse a parameter the WorkflowTemplate does not declare, or a value outside its enum.

    Raises:
        SpecError: Names the parameter and the allowed names or values.
    """
    name = template["metadata"]["name"]
    declared = {str(p["name"]): p for p in template["spec"].get("arguments", {}).get("parameters", [])}
    for key, value in given.items():
        if key not in declared:
            raise SpecError(
                f"parameter {key!r} is not a parameter of WorkflowTemplate {name}: allowed parameters "
                f"are {', '.join(declared) or 'none'}"
            )
        enum = [str(v) for v in declared[key].get("enum") or []]
        if enum and value not in enum:
            shown = ", ".join(v or "'' (empty)" for v in enum)
            raise SpecError(
                f"parameter {key}={value!r} is not allowed by WorkflowTemplate {name}: allowed values are {shown}"
            )


def _template(name: str, argo_dir: Path) -> dict[str, Any]:
    from workflows.argo.manifests import load_library

    found = load_library(argo_dir).by_name(name, ("WorkflowTemplate",))
    if found is None:
        raise SpecError(
            f"WorkflowTemplate {name!r} is not rendered in {argo_dir}/: run `llmrelease render`, or check the name"
        )
    return found[1]


def _server(env: Mapping[str, str]) -> tuple[str, bool, str | None, str]:
    """(base URL, verify TLS, token, namespace) from the argo CLI's environment variables."""
    server = env.get("ARGO_SERVER") or "localhost:2746"
    if "://" not in server:
        secure = env.get("ARGO_SECURE", "true").lower() not in ("false", "0", "no")
        server = f"{'https' if secure else 'http'}://{server}"
    verify = env.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() not in ("true", "1", "yes")
    return server.rstrip("/"), verify, env.get("ARGO_TOKEN") or None, env.get("ARGO_NAMESPACE") or "argo"


def _cmd_submit(args: argparse.Namespace) -> int:
    from hera.workflows.models import SubmitOpts, WorkflowSubmitRequest
    from hera.workflows.service import WorkflowsService

    params = parse_pairs(args.parameter, "-p")
    template = _template(args.template, Path(args.argo_dir))
    check_parameters(template, params)
    host, verify, token, namespace = _server(os.environ)
    service = WorkflowsService(host=host, verify_ssl=verify, token=token, namespace=namespace)
    request = WorkflowSubmitRequest(
        namespace=namespace,
        resource_kind="WorkflowTemplate",
        resource_name=args.template,
        submit_options=SubmitOpts(parameters=[f"{k}={v}" for k, v in params.items()]),
    )
    workflow = _call(host, lambda: service.submit_workflow(request, namespace=namespace))
    name = str(workflow.metadata.name)
    base = (os.environ.get("ARGO_BASE_HREF") or "/").strip("/")
    print(f"submitted workflow {name} from WorkflowTemplate {args.template} in namespace {namespace}")
    print(f"{host}/{base + '/' if base else ''}workflows/{namespace}/{name}")
    if not args.watch:
        return 0
    return _watch(service, host, name, namespace, args.interval)


def _watch(service: Any, host: str, name: str, namespace: str, interval: float) -> int:
    last = None
    while True:
        status = _call(host, lambda: service.get_workflow(name, namespace=namespace)).status
        phase = (status.phase if status else None) or "Pending"
        if phase != last:
            print(f"{time.strftime('%H:%M:%S')} {name}: {phase}", flush=True)
            last = phase
        if phase in _DONE:
            message = status.message if status and status.message else ""
            print(f"workflow {name} {phase}" + (f": {message}" if message else ""))
            return 0 if phase == "Succeeded" else 1
        time.sleep(interval)


def _call(host: str, fn: Any) -> Any:
    """Run a WorkflowsService call; every failure becomes one ReleaseError line."""
    import requests
    from hera.exceptions import HeraException

    try:
        return fn()
    except HeraException as e:
        raise ReleaseError(
            f"Argo Server at {host} refused ({type(e).__name__}: {' '.join(str(e).split())[:300]}): check "
            "ARGO_TOKEN, ARGO_NAMESPACE and that the template is installed there"
        ) from e
    except requests.RequestException as e:
        raise ReleaseError(
            f"cannot reach the Argo Server at {host} ({type(e).__name__}): check ARGO_SERVER "
            "(and ARGO_SECURE / ARGO_INSECURE_SKIP_VERIFY)"
        ) from e


# ---- cron -------------------------------------------------------------------------------------------------------


def next_fire_times(schedules: Sequence[str], timezone: str, after: datetime, n: int) -> list[datetime]:
    """The next `n` fire times of any of `schedules` after `after`, as aware datetimes in `timezone`.

    Raises:
        SpecError: A schedule or the time zone does not parse (checked as `llmrelease lint` does).
    """
    import zoneinfo

    from croniter import croniter

    from workflows.argo.lint import lint_document

    doc = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "CronWorkflow",
        "metadata": {"name": "preview"},
        "spec": {
            "schedules": list(schedules),
            "timezone": timezone,
            "workflowSpec": {"entrypoint": "x", "templates": [{"name": "x", "suspend": {}}]},
        },
    }
    faults = [p.message for p in lint_document("preview", doc) if p.message.startswith("cron:")]
    if faults:
        raise SpecError(f"{faults[0].removeprefix('cron: ')}: fix the schedule or the time zone")
    if any(s.strip().startswith("@every") for s in schedules):
        raise SpecError("@every schedules fire relative to the controller's start: there are no fixed times to show")
    zone = zoneinfo.ZoneInfo(timezone or "UTC")
    start = after.astimezone(zone) if after.tzinfo else after.replace(tzinfo=zone)
    times: set[datetime] = set()
    for schedule in schedules:
        it = croniter(schedule.strip(), start)
        times.update(it.get_next(datetime) for _ in range(n))
    return sorted(times)[:n]


def _cron_workflow(name: str, argo_dir: Path) -> tuple[str, dict[str, Any]]:
    """(file, document) of the CronWorkflow named `name` in argo/, or the first one in the YAML file `name`."""
    from workflows.argo.manifests import load_documents, load_library

    if name.endswith((".yaml", ".yml")):
        found = next(((f, d) for f, d in load_documents([name]) if d.get("kind") == "CronWorkflow"), None)
    else:
        found = load_library(argo_dir).by_name(name, ("CronWorkflow",))
    if found is None:
        raise SpecError(
            f"{name}: no CronWorkflow by that name in {argo_dir}/ or in that file: run `llmrelease "
            "render` or check the name"
        )
    return found


def _cmd_cron_next(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise SpecError(f"-n {args.n}: give a positive number of fire times")
    found = _cron_workflow(args.name, Path(args.argo_dir))
    spec = found[1]["spec"]
    schedules = args.schedule or [str(s) for s in spec.get("schedules") or [spec.get("schedule")] if s]
    timezone = args.timezone if args.timezone is not None else str(spec.get("timezone") or "UTC")
    try:
        after = datetime.fromisoformat(args.after) if args.after else datetime.now().astimezone()
    except ValueError as e:
        raise SpecError(f"--after {args.after!r} is not an ISO time such as 2026-11-23T22:00:00+01:00") from e
    times = next_fire_times(schedules, timezone, after, args.n)
    if args.json:
        print(
            json.dumps(
                {
                    "name": found[1]["metadata"]["name"],
                    "schedules": schedules,
                    "timezone": timezone,
                    "times": [t.isoformat() for t in times],
                },
                indent=2,
            )
        )
        return 0
    print(f"{found[1]['metadata']['name']}: {', '.join(schedules)} ({timezone})")
    for when in times:
        print(when.isoformat())
    return 0


# ---- webhook simulate -------------------------------------------------------------------------------------------


def _cmd_webhook_simulate(args: argparse.Namespace) -> int:
    import yaml

    from steps.core.tracking import llmrelease_home
    from workflows.events import webhook

    sensor, source = webhook.load_trigger(Path(args.argo_dir), args.sensor)
    body = webhook.read_body(Path(args.payload), webhook.payload_limit(source))  # refuses an over-size body unread
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise SpecError(
            f"--secret-env {args.secret_env}: the variable is unset or empty: export the webhook secret "
            "(the value of the Kubernetes Secret the EventSource reads)"
        )
    webhook.verify_signature(body, args.signature, secret)
    delivery = webhook.Delivery(
        body=body, signature=args.signature, event=args.event, delivery_id=args.delivery_id or str(uuid.uuid4())
    )
    data = webhook.event_data(delivery)
    try:
        webhook.evaluate(sensor, data)
    except webhook.Ignored as e:
        print(f"ignored delivery {delivery.delivery_id}: {e}; nothing run")
        return 0
    workflow = webhook.resolve_workflow(sensor, data)
    name = str(workflow["metadata"].get("name") or workflow["metadata"].get("generateName"))
    home = llmrelease_home()
    past = webhook.past_delivery(home, delivery.delivery_id)
    if past is not None:
        print(
            f"delivery {delivery.delivery_id} was already handled (workflow {past.get('workflow')}): "
            "not starting a second run"
        )
        return 0
    print(
        f"delivery {delivery.delivery_id} accepted: {name} with "
        + ", ".join(f"{p['name']}={p.get('value')}" for p in workflow["spec"]["arguments"]["parameters"])
    )
    if args.dry_run:
        print(yaml.safe_dump(workflow, sort_keys=False), end="")
        print("dry run: nothing run, delivery not recorded")
        return 0
    if not webhook.claim_delivery(home, delivery.delivery_id, name):
        print(f"delivery {delivery.delivery_id} is being handled by another process: not starting a second run")
        return 0
    manifest = home / "webhook-deliveries" / f"{delivery.delivery_id}.workflow.yaml"
    manifest.write_text(yaml.safe_dump(workflow, sort_keys=False), encoding="utf-8")
    return _run_local(manifest, args)


def _run_local(manifest: Path, args: argparse.Namespace) -> int:
    from workflows.runner import RunOptions, run_workflow

    started = time.monotonic()
    result = run_workflow(str(manifest), RunOptions(runs_dir=Path(args.runs_dir)), argo_dir=Path(args.argo_dir))
    print()
    print(result.tree)
    print(
        f"\nworkflow {result.name} {result.phase} in {time.monotonic() - started:.1f}s"
        + (f": {result.message}" if result.message else "")
    )
    print(f"logs: {result.run_dir}/")
    return 0 if result.phase == "Succeeded" else 1
