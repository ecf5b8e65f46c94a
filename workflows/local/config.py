"""The configuration the local profile gives the pods, as Kubernetes objects in YAML files.

`llmrelease local up` writes them to `<LLMRELEASE_HOME>/local/cluster-config/`, the folder `llmrelease run
--cluster-config DIR` reads (`workflows.runner.cluster`):

* ConfigMap `llmrelease-config` (every step `envFrom`s it): MLflow, S3, Ray (RAY_ADDRESS: the head's Ray Client),
  Pushgateway, Prometheus, the serving plane's service (LLMRELEASE_SERVING_URL: steps drive the local plane);
* Secret `llmrelease-s3` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and Secret `llmrelease-ray` (the Ray cluster's
  token: RAY_AUTH_MODE, RAY_AUTH_TOKEN), for `secretKeyRef`;
* ConfigMap `artifact-repositories` (Argo's format): the default repository `local`, the S3 bucket;
* Secret `provider-api-keys`, empty, written only when missing: put provider API keys in it; `up` keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from workflows.local.services import BUCKET, HOST, REGION, ray_auth_env

__all__ = ["CONFIG_MAP", "config_data", "prometheus_config", "write_cluster_config"]

CONFIG_MAP = "llmrelease-config"
S3_SECRET = "llmrelease-s3"
RAY_SECRET = "llmrelease-ray"
_DEFAULT_REPOSITORY = "workflows.argoproj.io/default-artifact-repository"


def config_data(ports: Mapping[str, int], *, ray: bool) -> dict[str, str]:
    """The `llmrelease-config` ConfigMap's data (RAY_ADDRESS only when the Ray cluster runs).

    RAY_ADDRESS is the head's Ray Client server (`ray://`), as on a real cluster: a step pod stays the driver
    through one outbound port and needs nothing of a Ray node on its own disk (joining by the GCS address would).

    No LLMRELEASE_HOME: a pod keeps its image's (its own /tmp under pod isolation), never a folder of this machine.
    """
    s3 = f"http://{HOST}:{ports['s3']}"
    data = {
        "AWS_REGION": REGION,
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ENDPOINT_URL_S3": s3,
        "LLMRELEASE_S3_BUCKET": BUCKET,
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlartifacts",
        "LLMRELEASE_PUSHGATEWAY": f"http://{HOST}:{ports['pushgateway']}",
        "LLMRELEASE_PROMETHEUS": f"http://{HOST}:{ports['prometheus']}",
        "LLMRELEASE_SERVING_PLANE": "local",
        "LLMRELEASE_SERVING_URL": f"http://{HOST}:{ports['serving']}",
    }
    if ray:
        data["RAY_ADDRESS"] = f"ray://{HOST}:{ports['ray-client']}"
    return data


def _object(kind: str, name: str, body: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> Any:
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "llmrelease"}}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": kind, "metadata": metadata, **body}


def _artifact_repositories(s3_port: int) -> Any:
    entry = {
        "s3": {
            "bucket": BUCKET,
            "endpoint": f"{HOST}:{s3_port}",
            "insecure": True,
            "region": REGION,
            "keyFormat": "argo/{{workflow.name}}/{{pod.name}}",
            "accessKeySecret": {"name": S3_SECRET, "key": "AWS_ACCESS_KEY_ID"},
            "secretKeySecret": {"name": S3_SECRET, "key": "AWS_SECRET_ACCESS_KEY"},
        }
    }
    data = {"local": yaml.safe_dump(entry, sort_keys=False)}
    return _object("ConfigMap", "artifact-repositories", {"data": data}, {_DEFAULT_REPOSITORY: "local"})


def write_cluster_config(
    folder: Path, ports: Mapping[str, int], credentials: Mapping[str, str], *, ray: bool
) -> list[Path]:
    """Write the ConfigMaps and Secrets (owner-only files: they hold credentials); return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    secrets = [
        _object(
            "Secret",
            S3_SECRET,
            {
                "type": "Opaque",
                "stringData": {
                    "AWS_ACCESS_KEY_ID": credentials["s3_access_key"],
                    "AWS_SECRET_ACCESS_KEY": credentials["s3_secret_key"],
                },
            },
        )
    ]
    if ray:
        secrets.append(_object("Secret", RAY_SECRET, {"type": "Opaque", "stringData": ray_auth_env(credentials)}))
    files = {
        folder / "config.yaml": [_object("ConfigMap", CONFIG_MAP, {"data": config_data(ports, ray=ray)})],
        folder / "secrets.yaml": secrets,
        folder / "artifact-repositories.yaml": [_artifact_repositories(ports["s3"])],
    }
    providers = folder / "provider-api-keys.yaml"
    if not providers.exists():
        files[providers] = [_object("Secret", "provider-api-keys", {"type": "Opaque", "stringData": {}})]
    for path, documents in files.items():
        note = "; yours to edit: `up` keeps it" if path == providers else ""
        header = f"# Written by `llmrelease local up`{note}\n"
        path.write_text(header + yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
    return list(files)


def prometheus_config(pushgateway_port: int, prometheus_port: int) -> str:
    """Prometheus' configuration: scrape the Pushgateway (keeping the pushed labels) and itself every 5 s."""
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"{HOST}:{pushgateway_port}"]}],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{HOST}:{prometheus_port}"]}]},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
