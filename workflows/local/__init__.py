"""The local profile: what the cluster provides, as real services on 127.0.0.1 (`llmrelease local up|down|status`).

MLflow, S3, a two-node Ray cluster, Prometheus and a Pushgateway, the serving plane's service, and the
ConfigMaps/Secrets the pods get.

Modules: `services` (what runs and how it is started and probed), `state` (the state file and process groups),
`config` (the cluster config written for `llmrelease run --cluster-config`), `profile` (up, down, status).
"""

from workflows.local.profile import DownResult, ServiceStatus, UpResult, down, status, up
from workflows.local.services import BUCKET, SERVICES, Layout, LocalProfileError

__all__ = [
    "BUCKET",
    "SERVICES",
    "DownResult",
    "Layout",
    "LocalProfileError",
    "ServiceStatus",
    "UpResult",
    "down",
    "status",
    "up",
]
