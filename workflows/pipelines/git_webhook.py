"""The git-merge trigger: an Argo Events GitHub EventSource and a Sensor that delivers merged release specs.

A push to `main` that adds or changes a file under `releases/` (`releases/*.yaml`) submits a Workflow from the
`golden-delivery` WorkflowTemplate with `release` = that file, `git-commit` = the pushed head commit
(`body.after`) and `git-repo` = the pushed repository's clone URL (`body.repository.clone_url`): onboard reads the
spec from that repository at that commit, so the run evaluates exactly what was merged. No `environment` is
passed: the run delivers to the spec's own `environment` field (dev when the spec has none). Written as plain
dicts: Hera's events models cannot inline a Workflow in a Sensor trigger.

Safety properties, each a fact that bites when forgotten:

* the EventSource always has `webhookSecret` (Argo Events skips the HMAC check when it is empty); GitHub signs
  every delivery with HMAC SHA-256 of the body (`X-Hub-Signature-256`), which the EventSource verifies;
* data filters are regular expressions matched anywhere in the value, so every one is anchored (`^...$`);
* the release file must be `releases/<name>.yaml`, `<name>` a DNS-1123 label (`RELEASE_FILE_PATTERN`): no `..`,
  no subfolder, no absolute path (the spec step checks the same, `steps.release.spec.resolve_spec_path`);
* the EventSource accepts bodies up to `MAX_PAYLOAD_BYTES` (GitHub caps payloads at 25 MB; Argo Events' own
  default, 1 MiB, would drop large pushes), and refuses larger ones without reading them;
* the Workflow is named `golden-delivery-<X-GitHub-Delivery>`: a redelivered event cannot start a second run
  (the API server refuses the existing name);
* no secret travels as a parameter: only the spec path, the commit and the repository URL do (a private
  repository's credentials are the golden-delivery `git` artifact's, patched in by the installation).

`llmrelease webhook simulate` applies these rendered objects (filters and parameter mapping read from argo/) to
a payload on this machine and runs the resulting workflow with the local runner.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEPENDENCY",
    "EVENT_NAME",
    "EVENT_SOURCE",
    "MAX_PAYLOAD_BYTES",
    "RELEASE_FILE_KEY",
    "RELEASE_FILE_PATTERN",
    "SECRET_KEY",
    "SECRET_NAME",
    "SENSOR",
    "build",
]

EVENT_SOURCE = "llmrelease-github"
EVENT_NAME = "release-merge"
SENSOR = "release-merge"
DEPENDENCY = "release-merged"
SECRET_NAME, SECRET_KEY = "llmrelease-github-webhook", "secret"
REPOSITORY = {"owner": "llmrelease", "names": ["llmrelease"]}  # override per installation (infrastructure/)
TEMPLATE = "golden-delivery"
# The first file added or modified by the pushed head commit under releases/ (gjson: multipath, flatten, query).
RELEASE_FILE_KEY = '[body.head_commit.added,body.head_commit.modified]|@flatten|#(%"releases/*.yaml")'
# What that file must be (an RE2 regex, anchored): directly under releases/, named by a DNS-1123 label.
RELEASE_FILE_PATTERN = r"^releases/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.yaml$"
MAX_PAYLOAD_BYTES = 25 * 1024 * 1024  # the EventSource's webhook.maxPayloadSize; GitHub caps payloads at 25 MB
_LABELS = {"app.kubernetes.io/part-of": "llmrelease"}


def _event_source() -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": EVENT_SOURCE, "labels": _LABELS},
        "spec": {
            "service": {"ports": [{"port": 12000, "targetPort": 12000}]},
            "github": {
                EVENT_NAME: {
                    "repositories": [REPOSITORY],
                    "webhook": {
                        "endpoint": "/github",
                        "port": "12000",
                        "method": "POST",
                        "maxPayloadSize": MAX_PAYLOAD_BYTES,
                    },
                    "events": ["push"],
                    "contentType": "json",
                    "active": True,
                    "insecure": False,
                    "webhookSecret": {"name": SECRET_NAME, "key": SECRET_KEY},
                },
            },
        },
    }


def _workflow() -> dict[str, Any]:
    """The Workflow the trigger submits; the trigger's parameters fill in name, release, commit and repository."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": f"{TEMPLATE}-", "labels": {**_LABELS, "llmrelease/trigger": "git-merge"}},
        "spec": {
            "workflowTemplateRef": {"name": TEMPLATE},
            "arguments": {
                "parameters": [
                    {"name": "release", "value": ""},
                    {"name": "git-commit", "value": ""},
                    {"name": "git-repo", "value": ""},
                ]
            },
        },
    }


def _sensor() -> dict[str, Any]:
    def source(data_key: str) -> dict[str, str]:
        return {"dependencyName": DEPENDENCY, "dataKey": data_key}

    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Sensor",
        "metadata": {"name": SENSOR, "labels": _LABELS},
        "spec": {
            "template": {"serviceAccountName": "llmrelease-sensor"},
            "dependencies": [
                {
                    "name": DEPENDENCY,
                    "eventSourceName": EVENT_SOURCE,
                    "eventName": EVENT_NAME,
                    "filters": {
                        "dataLogicalOperator": "and",
                        "data": [
                            {"path": "body.X-GitHub-Event", "type": "string", "value": ["^push$"]},
                            {"path": "body.ref", "type": "string", "value": ["^refs/heads/main$"]},
                            {"path": "body.deleted", "type": "bool", "value": ["false"]},
                            {"path": RELEASE_FILE_KEY, "type": "string", "value": [RELEASE_FILE_PATTERN]},
                        ],
                    },
                }
            ],
            "triggers": [
                {
                    "template": {
                        "name": f"{TEMPLATE}-on-merge",
                        "argoWorkflow": {
                            "operation": "submit",
                            "source": {"resource": _workflow()},
                            "parameters": [
                                {
                                    "src": source("body.X-GitHub-Delivery"),
                                    "dest": "metadata.name",
                                    "operation": "append",
                                },
                                {"src": source(RELEASE_FILE_KEY), "dest": "spec.arguments.parameters.0.value"},
                                {"src": source("body.after"), "dest": "spec.arguments.parameters.1.value"},
                                {
                                    "src": source("body.repository.clone_url"),
                                    "dest": "spec.arguments.parameters.2.value",
                                },
                            ],
                        },
                    },
                    "retryStrategy": {"steps": 3, "duration": "10s"},
                }
            ],
        },
    }


def build() -> list[Any]:
    """The GitHub EventSource and the Sensor that turns a merged release spec into a golden-delivery run."""
    return [_event_source(), _sensor()]
