"""The services of the local profile: what the cluster provides, as real processes on 127.0.0.1.

Each `Service` says how to start it (command and environment), where it listens, and how to tell it is ready:

* `s3`: an S3 API (moto's server). moto keeps objects in memory: `down` saves the bucket under
  `<LLMRELEASE_HOME>/local/s3/` and `up` loads it back (see `workflows.local.profile`).
* `mlflow`: an MLflow tracking server, its backend store sqlite under `<LLMRELEASE_HOME>/local/mlflow/`, its
  artifacts proxied (`--artifacts-destination s3://<bucket>/mlartifacts`): clients upload through the server,
  which writes to the S3 bucket; a client needs no S3 credentials for MLflow's artifacts.
* `pushgateway` and `prometheus` (the Debian packages); Prometheus scrapes the gateway and itself every 5 s.
* `serving`: the local serving plane's service (`steps.rollout.serving.service`): it owns the model servers,
  HAProxy routers and canary watchdogs, so they outlive the step pods that asked for them; steps reach it at
  LLMRELEASE_SERVING_URL. `down` stops it, and it stops every router and model server it owns.
* `ray-head` and `ray-worker`: a two-node Ray cluster (`ray start --head --block`, then `ray start --address`),
  the CPUs split between the two, token authentication on (the token is a Secret), every port its own. Ray
  advertises the machine's address and listens on every interface (its design): the token is what guards it.
  The head also serves Ray Client on a port of its own (`--ray-client-server-port`): pods join the cluster
  through it (`RAY_ADDRESS=ray://...`), as they would on a real cluster; a pod cannot join by the GCS address,
  which needs the node's session folder and the raylet's sockets on the driver's own disk.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import WorkflowError

__all__ = [
    "BUCKET",
    "HOST",
    "RAY_HEAD_CLIENT_ENV",
    "REGION",
    "SERVICES",
    "Layout",
    "LocalProfileError",
    "Service",
    "free_port",
    "plan",
    "preflight",
    "ray_auth_env",
    "steps_pythonpath",
]

HOST = "127.0.0.1"
BUCKET = "llmrelease-local"
REGION = "us-east-1"
SERVICES = ("s3", "mlflow", "pushgateway", "prometheus", "serving", "ray-head", "ray-worker")
_RAY_READY = "Ray runtime started."
RAY_HEAD_CLIENT_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false", "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "10"}
"""The Ray head's Ray Client settings: no gRPC fork handlers, a 10 s wait for a session server (`_ray_nodes`)."""
_SOCKET_ROOM = 44  # Ray's socket paths (<temp>/session_<40 chars>/sockets/plasma_store) must fit in 107 bytes
_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # per node: two nodes share a small machine
_REPO = Path(__file__).resolve().parents[2]  # the serving service runs the steps' code from this checkout


class LocalProfileError(WorkflowError):
    """The local profile cannot start or stop a service: the message names it, its log, and the fix."""


@dataclass(frozen=True)
class Layout:
    """Where the local profile keeps its files: `<LLMRELEASE_HOME>/local/`."""

    home: Path

    @property
    def root(self) -> Path:
        """The profile's folder."""
        return self.home / "local"

    @property
    def state(self) -> Path:
        """The state file: ports, credentials, started services."""
        return self.root / "state.json"

    @property
    def cluster_config(self) -> Path:
        """The ConfigMaps and Secrets `llmrelease run --cluster-config` reads."""
        return self.root / "cluster-config"

    def log(self, service: str) -> Path:
        """The log (stdout and stderr) of `service`."""
        return self.root / "logs" / f"{service}.log"

    @property
    def ray_temp(self) -> Path:
        """Ray's temp folder: under the profile, unless that path is too long for Ray's sockets."""
        candidate = self.root / "ray"
        if len(str(candidate)) <= _SOCKET_ROOM:
            return candidate
        import hashlib

        return Path("/tmp") / f"llmrelease-ray-{hashlib.sha256(str(self.root).encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Service:
    """One service: how to start it, where it answers, and how to tell it is ready."""

    name: str
    command: list[str]
    url: str
    ready: Callable[[], bool]
    port: int | None = None  # checked free before anything starts
    env: Mapping[str, str] = field(default_factory=dict)
    install: str = ""  # how to get the program when it is missing
    more_ports: Mapping[str, int] = field(default_factory=dict)  # its other ports (checked free too), by `--port` name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def http_ready(url: str) -> Callable[[], bool]:
    """A probe: GET `url` answers 200."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback URL we built
                return int(response.status) == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False

    return probe


def log_says(path: Path, marker: str) -> Callable[[], bool]:
    """A probe: the log at `path` holds `marker`."""

    def probe() -> bool:
        try:
            return marker in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    return probe


def port_open(port: int) -> Callable[[], bool]:
    """A probe: something accepts TCP connections on 127.0.0.1:`port`."""

    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex((HOST, port)) == 0

    return probe


def _all(*probes: Callable[[], bool]) -> Callable[[], bool]:
    """A probe: every one of `probes` says ready."""
    return lambda: all(probe() for probe in probes)


def _tool(name: str) -> str:
    """The virtualenv's own console script `name` (beside this Python), else the one on PATH, else `name`."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


def plan(layout: Layout, ports: Mapping[str, int], credentials: Mapping[str, str], *, ray: bool) -> list[Service]:
    """The services to run, in start order (Ray's two nodes last, when `ray`)."""
    root = layout.root
    s3_url = f"http://{HOST}:{ports['s3']}"
    s3_env = {
        "AWS_ACCESS_KEY_ID": credentials["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": credentials["s3_secret_key"],
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
    }
    # What the cluster's serving pods and Ray workers get from the ConfigMap and the S3 Secret: the weights store.
    store_env = {**s3_env, "AWS_ENDPOINT_URL_S3": s3_url, "LLMRELEASE_S3_BUCKET": BUCKET}
    services = [
        Service(
            "s3",
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(ports["s3"])],
            s3_url,
            http_ready(f"{s3_url}/moto-api/"),
            ports["s3"],
            install="pip install 'moto[server]'",
        ),
        _mlflow(layout, ports["mlflow"], s3_env),
        _pushgateway(layout, ports["pushgateway"]),
        Service(
            "prometheus",
            [
                "prometheus",
                f"--config.file={root / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'prometheus' / 'data'}",
                f"--web.listen-address={HOST}:{ports['prometheus']}",
            ],
            f"http://{HOST}:{ports['prometheus']}",
            http_ready(f"http://{HOST}:{ports['prometheus']}/-/ready"),
            ports["prometheus"],
            install="apt-get install prometheus (.ci/install-system-packages.sh prometheus)",
        ),
        _serving(layout, ports["serving"], ports["mlflow"], store_env),
    ]
    return services + (_ray_nodes(layout, ports, credentials, store_env) if ray else [])


def _mlflow(layout: Layout, port: int, s3_env: Mapping[str, str]) -> Service:
    store = layout.root / "mlflow" / "mlflow.db"
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}"]
    command += ["--artifacts-destination", f"s3://{BUCKET}/mlartifacts", "--host", HOST, "--port", str(port)]
    command += ["--workers", "1"]
    return Service("mlflow", command, url, http_ready(f"{url}/health"), port, s3_env, "pip install mlflow")


def ray_auth_env(credentials: Mapping[str, str]) -> dict[str, str]:
    """Ray's token authentication: what the nodes run with and the `llmrelease-ray` Secret gives a pod."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": credentials["ray_token"]}


def steps_pythonpath() -> str:
    """PYTHONPATH for a process of this machine that runs the steps' code from this checkout (and the caller's)."""
    return os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p)


def _serving(layout: Layout, port: int, mlflow_port: int, store_env: Mapping[str, str]) -> Service:
    """The serving plane's service; its canary watchdogs release a dead canary's lease through MLflow."""
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "steps.rollout.serving.service", "--home", str(layout.home), "--port", str(port)]
    env = {"MLFLOW_TRACKING_URI": f"http://{HOST}:{mlflow_port}", "LLMRELEASE_HOME": str(layout.home), **store_env}
    env["PYTHONPATH"] = steps_pythonpath()
    return Service("serving", command, url, http_ready(f"{url}/healthz"), port, env, "pip install -e .[ml]")


def _pushgateway(layout: Layout, port: int) -> Service:
    url = f"http://{HOST}:{port}"
    command = ["prometheus-pushgateway", f"--web.listen-address={HOST}:{port}"]
    command.append(f"--persistence.file={layout.root / 'pushgateway' / 'metrics'}")
    install = "apt-get install prometheus-pushgateway (.ci/install-system-packages.sh prometheus-pushgateway)"
    return Service("pushgateway", command, url, http_ready(f"{url}/-/ready"), port, install=install)


def _ray_nodes(
    layout: Layout, ports: Mapping[str, int], credentials: Mapping[str, str], store_env: Mapping[str, str]
) -> list[Service]:
    """The head (GCS on ports["ray"], Ray Client on ports["ray-client"]) and a second node joining it by address.

    Each node's other ports are chosen free now.
    """
    gcs_port, client_port = ports["ray"], ports["ray-client"]
    cpus = os.cpu_count() or 2
    head_cpus = max(1, cpus // 2)
    address = f"{HOST}:{gcs_port}"
    env = {**ray_auth_env(credentials), "RAY_USAGE_STATS_ENABLED": "0"}
    env.update(store_env)  # the workers fetch the weights from the store themselves
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # `down` stops the whole cluster: nothing to drain for
    # Ray Client's proxier starts a session server per client (fork, then exec). With gRPC's fork handlers on, a
    # fork while another session's gRPC threads run skips them ("Other threads are currently calling into gRPC")
    # and the child dies at once ("epoll_wait error: Bad file descriptor"; ray-project/ray#63202, open); the
    # client hears "Initialization failure" only 20-40 s later and retries (steps/evals/ray_connect.py). Seen in
    # make demo when batch-eval and safety join together, and when one joins while the other evaluates. The
    # proxier's children exec at once, so they need no gRPC state from it: GRPC_ENABLE_FORK_SUPPORT=false (2 of
    # 12 joins beside a busy session failed with the handlers on, 0 of 12 without; docs/performance.md). The
    # channel wait stays at 10 s (default 30) should a session server still fail: a live one is ready in seconds.
    env.update(RAY_HEAD_CLIENT_ENV)
    common = ["start", "--block", f"--node-ip-address={HOST}", f"--object-store-memory={_OBJECT_STORE_BYTES}"]
    common += ["--disable-usage-stats"]
    head = [_tool("ray"), *common, "--head", f"--port={gcs_port}", f"--num-cpus={head_cpus}"]
    head += ["--include-dashboard=false", f"--dashboard-port={free_port()}", f"--temp-dir={layout.ray_temp}"]
    head += [f"--ray-client-server-port={client_port}", *_node_ports()]
    worker = [_tool("ray"), *common, f"--address={address}", f"--num-cpus={max(1, cpus - head_cpus)}"]
    worker += _node_ports()
    install = "pip install 'ray[data]'"
    return [
        Service(
            "ray-head",
            head,
            address,
            _all(log_says(layout.log("ray-head"), _RAY_READY), port_open(client_port)),
            gcs_port,
            env,
            install,
            {"ray-client": client_port},
        ),
        Service("ray-worker", worker, address, log_says(layout.log("ray-worker"), _RAY_READY), None, env, install),
    ]


def _node_ports() -> list[str]:
    """A Ray node's own ports, free now: two nodes on one machine must not share any."""
    names = ["node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port"]
    names += ["dashboard-agent-listen-port", "dashboard-agent-grpc-port"]
    return [f"--{name}={free_port()}" for name in names]


def preflight(services: list[Service]) -> None:
    """Refuse before anything starts: a program that is missing, or a port that something else holds.

    Raises:
        LocalProfileError: names the service, the program or port, and the fix.
    """
    for service in services:
        program = service.command[0]
        module = service.command[2] if program == sys.executable else ""
        found = importlib.util.find_spec(module) is not None if module else shutil.which(program) is not None
        if not found:
            missing = module or program
            raise LocalProfileError(f"{service.name}: {missing} not found: {service.install}, then rerun `local up`")
        ports = {service.name.split("-")[0]: service.port} if service.port is not None else {}
        for name, port in {**ports, **service.more_ports}.items():
            if not _port_free(port):
                raise LocalProfileError(
                    f"{service.name}: port {HOST}:{port} is taken by another process: stop it, or pick "
                    f"another with `llmrelease local up --port {name}=<port>`"
                )


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True
