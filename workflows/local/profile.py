"""`llmrelease local up|down|status`: start, stop and show the local profile's services.

`up` is idempotent: a service already running is kept, only the missing ones start (Ray's second node with its
head). All start at once; each must be ready before the deadline, else every service this `up` started is stopped
and the error names the one that failed and its log. Then it writes the cluster config. `down` saves the S3 bucket
under `<LLMRELEASE_HOME>/local/s3/` (moto keeps it in memory) and stops every process group; it is idempotent too.
The ports and credentials stay in the state file, so the config written once stays valid across `down` and `up`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflows.local.config import config_data, prometheus_config, write_cluster_config
from workflows.local.services import (
    BUCKET,
    REGION,
    SERVICES,
    Layout,
    LocalProfileError,
    Service,
    free_port,
    plan,
    preflight,
    ray_auth_env,
    steps_pythonpath,
)
from workflows.local.state import ProfileState, ServiceRecord, is_running, locked, process_start, stop_group

__all__ = ["DownResult", "ServiceStatus", "UpResult", "down", "status", "up"]

DEMO_SHARDS = 2
"""The templates' default `eval-shards`: the warm-up starts the workers a step of that many gets."""
WARM_UP = "eval-warm"
"""The eval workers' warm-up `up` starts with a new Ray cluster (`_warm_evals`): not a service, stopped by `down`."""
PORT_NAMES = ("s3", "mlflow", "pushgateway", "prometheus", "serving", "ray", "ray-client")


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `status` shows it."""

    name: str
    running: bool
    url: str
    pid: int | None
    log: str


@dataclass(frozen=True)
class UpResult:
    """What `up` did: the services it started, those already running, its time and the config folder."""

    started: list[str]
    kept: list[str]
    seconds: float
    cluster_config: Path
    services: list[ServiceStatus]
    warm_up: str = ""
    """The eval warm-up's last line (a new Ray cluster only; `_warm_evals`); empty when none ran."""


@dataclass(frozen=True)
class DownResult:
    """What `down` did: the services it stopped, its time, and a note when the bucket could not be saved."""

    stopped: list[str]
    seconds: float
    note: str = ""


def up(
    home: Path,
    *,
    ray: bool = True,
    timeout: float = 180.0,
    ports: Mapping[str, int] | None = None,
    warm_evals: bool = True,
) -> UpResult:
    """Start every service of the local profile that is not running, then write the cluster config.

    Args:
        home: LLMRELEASE_HOME.
        ray: Start the two-node Ray cluster too (without it, RAY_ADDRESS stays out of the config).
        timeout: Seconds every service has to become ready, counted from the start.
        ports: Ports to use instead of those recorded (or free ones): keys s3, mlflow, pushgateway, prometheus,
            serving, ray (the GCS), ray-client (Ray Client, what the pods join).
        warm_evals: Start the eval workers of a new Ray cluster and wait for them (`_warm_evals`).

    Raises:
        LocalProfileError: A program is missing, a port is taken, or a service failed or was not ready in time;
            nothing this call started is left running.
    """
    started_at = time.monotonic()
    layout = Layout(home)
    with locked(layout.root / "lock"):
        state = ProfileState.load(layout.state)
        _settle(state, dict(ports or {}))
        services = plan(layout, state.ports, state.credentials, ray=ray)
        todo = [s for s in services if not _running(state, s.name)]
        if any(s.name == "ray-head" for s in todo) and ray and _running(state, "ray-worker"):
            stop_group(state.services.pop("ray-worker"))  # a new head needs a new second node
            todo.append(next(s for s in services if s.name == "ray-worker"))
        kept = [s.name for s in services if s not in todo]
        warm_up = ""
        if todo:
            preflight(todo)
            _start(layout, state, todo, started_at + timeout, timeout)
            write_cluster_config(layout.cluster_config, state.ports, state.credentials, ray=ray)
            if ray and warm_evals and any(s.name == "ray-head" for s in todo):
                warm_up = _warm_evals(layout, state, started_at + timeout)
        took = time.monotonic() - started_at
        return UpResult([s.name for s in todo], kept, took, layout.cluster_config, status(home), warm_up)


def down(home: Path) -> DownResult:
    """Save the S3 bucket, then stop every service's process group (none running: nothing to do)."""
    started_at = time.monotonic()
    layout = Layout(home)
    with locked(layout.root / "lock"):
        state = ProfileState.load(layout.state)
        note = ""
        if _running(state, "s3"):
            note = _save_bucket(state.services["s3"].url, state.credentials, layout.root / "s3" / BUCKET)
        if WARM_UP in state.services:
            stop_group(state.services.pop(WARM_UP), grace=2.0)  # still warming up: the cluster goes anyway
        order = [state.services[n] for n in reversed(SERVICES) if n in state.services]
        with ThreadPoolExecutor(max_workers=len(order) or 1) as pool:
            stopped = [r.name for r, did in zip(order, pool.map(stop_group, order), strict=True) if did]
        state.services.clear()
        state.save()
        if not layout.ray_temp.is_relative_to(layout.root):
            shutil.rmtree(layout.ray_temp, ignore_errors=True)  # Ray's sessions in /tmp: the home's path was too long
    return DownResult(stopped, time.monotonic() - started_at, note)


def status(home: Path) -> list[ServiceStatus]:
    """Every service of the profile, in start order: running or stopped, URL, pid and log."""
    layout = Layout(home)
    state = ProfileState.load(layout.state)
    out = []
    for name in SERVICES:
        record = state.services.get(name)
        running = record is not None and is_running(record)
        url = record.url if record else ""
        out.append(ServiceStatus(name, running, url, record.pid if record and running else None, str(layout.log(name))))
    return out


def _running(state: ProfileState, name: str) -> bool:
    return name in state.services and is_running(state.services[name])


def _settle(state: ProfileState, pinned: dict[str, int]) -> None:
    """Fill in the ports (pinned, else recorded, else free now) and the local credentials (new on first use)."""
    unknown = sorted(set(pinned) - set(PORT_NAMES))
    if unknown:
        raise LocalProfileError(f"--port {unknown[0]}=...: no such service; use one of {', '.join(PORT_NAMES)}")
    for name, port in pinned.items():
        owner = "ray-head" if name.startswith("ray") else name
        if state.ports.get(name) != port and _running(state, owner):
            raise LocalProfileError(
                f"{owner} runs on port {state.ports[name]}: run `llmrelease local down` before moving it to {port}"
            )
        state.ports[name] = port
    for name in PORT_NAMES:
        state.ports.setdefault(name, free_port())
    state.credentials.setdefault("s3_access_key", "llmrelease-local")
    state.credentials.setdefault("s3_secret_key", secrets.token_hex(20))
    state.credentials.setdefault("ray_token", uuid.uuid4().hex)
    state.save()


def _start(layout: Layout, state: ProfileState, todo: list[Service], deadline: float, timeout: float) -> None:
    """Start `todo` (the second Ray node once the head is ready) and wait for each; on failure stop them all."""
    for name in ("mlflow", "pushgateway", "prometheus/data"):
        (layout.root / name).mkdir(parents=True, exist_ok=True)
    (layout.root / "prometheus" / "prometheus.yml").write_text(
        prometheus_config(state.ports["pushgateway"], state.ports["prometheus"]), encoding="utf-8"
    )
    started: list[ServiceRecord] = []
    try:
        first = [s for s in todo if s.name != "ray-worker"]
        for service in first:
            started.append(_launch(layout, state, service))
        for service in _await(list(zip(first, started, strict=True)), deadline, timeout):
            if service.name == "s3":
                _restore_bucket(state.services["s3"].url, state.credentials, layout.root / "s3" / BUCKET)
        for service in todo:
            if service.name == "ray-worker":
                started.append(_launch(layout, state, service))
                list(_await([(service, started[-1])], deadline, timeout))
    except BaseException:
        for record in reversed(started):
            stop_group(record)
            state.services.pop(record.name, None)
        state.save()
        raise


def _warm_evals(layout: Layout, state: ProfileState, deadline: float) -> str:
    """Start the eval workers of a new Ray cluster (`steps.evals.warm`) as a 2-shard step gets them; its last line.

    The first delivery's eval steps then find them started instead of paying ~6-10 s for their start, and nothing
    of that start competes with its first steps. An optimisation, not a service: a warm-up that fails or is not done
    by the deadline is said in its line (the steps start the workers themselves), and `down` stops one still
    running. The workers hold their Ray CPUs while idle, as every warm worker does (until their idle timeout, or
    until a step of another shape ends them). Its output: the `eval-warm` log.
    """
    # what a pod gets: the ConfigMap's RAY_ADDRESS (the head's Ray Client server) and the llmrelease-ray Secret
    env = {"RAY_ADDRESS": config_data(state.ports, ray=True)["RAY_ADDRESS"], **ray_auth_env(state.credentials)}
    env["PYTHONPATH"] = steps_pythonpath()
    command = [sys.executable, "-m", "steps.evals.warm", "--shards", str(DEMO_SHARDS)]
    record = _launch(layout, state, Service(WARM_UP, command, "", lambda: True, env=env))
    while is_running(record) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = Path(record.log).read_text(errors="replace").strip().splitlines()
    said = next((ln for ln in reversed(lines) if ln.startswith("eval warm-up:")), "")
    if is_running(record):
        return f"eval warm-up: not done in time, left running (see {record.log})"
    return said or f"eval warm-up: ended without a word (see {record.log})"


def _launch(layout: Layout, state: ProfileState, service: Service) -> ServiceRecord:
    """Start `service` in a process group of its own, its output to its log; record it in the state at once."""
    previous = state.services.get(service.name)
    if previous is not None:
        stop_group(previous)  # what is left of a service that died without `down`
    log = layout.log(service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | dict(service.env)
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own command line
            service.command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=layout.root,
            env=env,
        )
    record = ServiceRecord(service.name, proc.pid, process_start(proc.pid), service.url, str(log))
    state.services[service.name] = record
    state.save()
    return record


def _await(pending: list[tuple[Service, ServiceRecord]], deadline: float, timeout: float) -> Iterator[Service]:
    """Yield each service as it becomes ready; fail at once when one exits, or at the deadline."""
    while pending:
        for service, record in list(pending):
            if service.ready():
                pending.remove((service, record))
                yield service
            elif not is_running(record):
                raise LocalProfileError(f"{service.name} exited before it was ready: see its log {record.log}")
        if pending and time.monotonic() > deadline:
            service, record = pending[0]
            raise LocalProfileError(
                f"{service.name} not ready within {timeout:.0f}s: see its log {record.log}; on a busy machine "
                "raise `local up --timeout`"
            )
        time.sleep(0.2)


def _s3(url: str, credentials: Mapping[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=credentials["s3_access_key"],
        aws_secret_access_key=credentials["s3_secret_key"],
    )


def _restore_bucket(url: str, credentials: Mapping[str, str], saved: Path) -> None:
    """Create the bucket in a fresh S3 server and load what `down` saved into it."""
    client = _s3(url, credentials)
    client.create_bucket(Bucket=BUCKET)
    for file in sorted(saved.rglob("*")) if saved.is_dir() else []:
        if file.is_file():
            client.upload_file(str(file), BUCKET, file.relative_to(saved).as_posix())


def _save_bucket(url: str, credentials: Mapping[str, str], saved: Path) -> str:
    """Copy the bucket to `saved` (replacing the last copy); a note instead when S3 does not answer."""
    from botocore.exceptions import BotoCoreError, ClientError

    partial = saved.with_name(saved.name + ".saving")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        client = _s3(url, credentials)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                target = (partial / item["Key"]).resolve()
                if item["Key"].endswith("/") or not target.is_relative_to(partial.resolve()):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(BUCKET, item["Key"], str(target))
    except (BotoCoreError, ClientError, OSError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        return f"the S3 bucket was not saved ({type(e).__name__}: {e}); the last saved copy in {saved} stays"
    partial.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(saved, ignore_errors=True)
    partial.rename(saved)
    return ""
