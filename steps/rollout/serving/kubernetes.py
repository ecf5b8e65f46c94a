"""vLLM on Kubernetes: render one model version's Deployment + Service, and create-or-patch them on the cluster.

`render_vllm` fills the template operators can read, `infrastructure/serving/vllm.yaml` (found next to the
checkout, in the working directory, or at `$LLMRELEASE_VLLM_TEMPLATE`), and returns plain dicts. Its choices, all
visible in the template: objects are named `<model>-v<version>`; every version answers to the same model name
(`--served-model-name`); weights are copied from the version's `s3://` URI into an emptyDir by an initContainer
(boto3 in the steps image, IAM role by IRSA) and vLLM loads that local directory; a startupProbe on `/health`
(which only says the process is up) gates the start, and the pod is Ready only while a real one-token chat
completion succeeds.

`apply` creates each object, or patches it when it exists, through the official Kubernetes client's
`AppsV1Api` and `CoreV1Api` (anything with the same methods: the `KubernetesApi` Protocol).

The cluster serving plane does not apply these objects: it takes the Deployment's pod template into the model's
Argo Rollouts `Rollout` (`steps.rollout.serving.rollouts`). `apply` stays for serving one version by hand, under an
operator's account (the steps' Role grants no Deployments).
"""

from __future__ import annotations

import copy
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from steps.core.images import STEPS_IMAGE
from steps.core.kube import api_error_fix, api_status, describe_api_error
from steps.rollout.serving.base import ServingError

__all__ = [
    "TEMPLATE_ENV",
    "AppliedObject",
    "AppsApi",
    "ClusterApi",
    "CoreApi",
    "KubernetesApi",
    "apply",
    "default_template",
    "object_name",
    "render_vllm",
    "substitute",
]

TEMPLATE_ENV = "LLMRELEASE_VLLM_TEMPLATE"
_TEMPLATE = Path("infrastructure") / "serving" / "vllm.yaml"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_NOT_FOUND = 404


class AppsApi(Protocol):
    """The Deployment calls of `kubernetes.client.AppsV1Api` that `apply` uses."""

    def read_namespaced_deployment(self, name: str, namespace: str) -> Any:
        """Return the Deployment; raise an exception with `status == 404` when there is none."""
        ...

    def create_namespaced_deployment(self, namespace: str, body: Any) -> Any:
        """Create the Deployment."""
        ...

    def patch_namespaced_deployment(self, name: str, namespace: str, body: Any) -> Any:
        """Patch the Deployment (the client sends a dict as a strategic merge patch)."""
        ...


class CoreApi(Protocol):
    """The Service calls of `kubernetes.client.CoreV1Api` that `apply` uses."""

    def read_namespaced_service(self, name: str, namespace: str) -> Any:
        """Return the Service; raise an exception with `status == 404` when there is none."""
        ...

    def create_namespaced_service(self, namespace: str, body: Any) -> Any:
        """Create the Service."""
        ...

    def patch_namespaced_service(self, name: str, namespace: str, body: Any) -> Any:
        """Patch the Service."""
        ...


class KubernetesApi(Protocol):
    """What `apply` is given: an apps client and a core client."""

    @property
    def apps(self) -> AppsApi:
        """`kubernetes.client.AppsV1Api` or a stand-in."""
        ...

    @property
    def core(self) -> CoreApi:
        """`kubernetes.client.CoreV1Api` or a stand-in."""
        ...


@dataclass(frozen=True)
class ClusterApi:
    """The two official clients, bundled; `from_cluster` builds them from the pod's account or a kubeconfig."""

    apps: AppsApi
    core: CoreApi

    @classmethod
    def from_cluster(cls) -> ClusterApi:
        """In-cluster service account, else the local kubeconfig.

        Raises:
            ServingError: the `kubernetes` package is missing or no configuration can be loaded.
        """
        from steps.core.kube import kube_client

        client = kube_client(ServingError, "vLLM serving")
        return cls(apps=client.AppsV1Api(), core=client.CoreV1Api())


@dataclass(frozen=True)
class AppliedObject:
    """One object `apply` handled: what it is and whether it was created or patched."""

    kind: str
    namespace: str
    name: str
    action: Literal["created", "patched"]


def object_name(model_name: str, version: str) -> str:
    """The Deployment and Service name of a model version, `<model>-v<version>` (also its backendRef name).

    Raises:
        ServingError: the name is not a DNS-1035 label (what a Service name must be).
    """
    name = f"{model_name}-v{version}"
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise ServingError(
            f"model {model_name!r} version {version!r}: {name!r} is not a valid Service name (lowercase letters, "
            "digits and '-', starting with a letter, at most 63 characters): register the model under such a name"
        )
    return name


def default_template() -> Path:
    """The vLLM template: `$LLMRELEASE_VLLM_TEMPLATE`, else next to the checkout, else under the working directory.

    Raises:
        ServingError: none of them exists.
    """
    candidates = [Path(p) for p in [os.environ.get(TEMPLATE_ENV)] if p]
    candidates += [Path(__file__).resolve().parents[3] / _TEMPLATE, Path.cwd() / _TEMPLATE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ServingError(
        f"vLLM template not found (looked at {', '.join(map(str, candidates))}): run from the repository root "
        f"or set {TEMPLATE_ENV}"
    )


def render_vllm(
    model_name: str,
    version: str,
    model_uri: str,
    *,
    image: str,
    namespace: str = "llmrelease",
    gpus: int = 1,
    served_model_name: str | None = None,
    max_model_len: int | None = None,
    weights_image: str = STEPS_IMAGE,
    template: Path | None = None,
    served_prompt: str = "",
) -> list[dict[str, Any]]:
    """The vLLM Deployment and Service of one model version, from the template.

    Args:
        model_name: Registered model name (the `llmrelease.io/model` label).
        version: Registered version (the `llmrelease.io/version` label, the `-v<version>` suffix).
        model_uri: `s3://bucket/prefix` holding the version's weights directory (config, tokenizer, safetensors).
        image: The vLLM image, pinned (e.g. `vllm/vllm-openai:v0.32.0`).
        namespace: Namespace of both objects.
        gpus: GPUs per replica (also vLLM's tensor-parallel size).
        served_model_name: The name clients send; the model's name by default, so every version answers to it.
        max_model_len: vLLM's context cap; None keeps the model's own.
        weights_image: Image of the initContainer that copies the weights (needs python and boto3).
        template: Another template file (default: `default_template()`).
        served_prompt: A prompted version's `ServedPrompt` as JSON (the initContainer applies it to the weights:
            `steps.rollout.serving.prompted.apply_in_place`); "" serves the weights as they are.

    Returns:
        `[deployment, service]` as dicts, ready for `apply` or `yaml.safe_dump_all`.

    Raises:
        ServingError: a bad name, URI, GPU count or context length, or a template that does not render.
    """
    name = object_name(model_name, version)
    served = served_model_name or model_name
    _check_inputs(model_name, version, model_uri, image, gpus, max_model_len)
    values = {
        "NAME": name, "NAMESPACE": namespace, "MODEL": model_name, "VERSION": version, "MODEL_URI": model_uri,
        "SERVED_PROMPT": served_prompt,
        "IMAGE": image, "WEIGHTS_IMAGE": weights_image, "SERVED_MODEL_NAME": served, "GPUS": str(gpus),
        "CPUS": str(3 * gpus), "MEMORY": f"{24 * gpus}Gi",
    }  # fmt: skip
    path = template or default_template()
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        rendered = [substitute(doc, values) for doc in documents]
    except (OSError, yaml.YAMLError) as e:
        raise ServingError(f"vLLM template {path}: cannot be read as YAML ({e}): fix the file") from e
    except (KeyError, ValueError) as e:
        raise ServingError(
            f"vLLM template {path}: unknown or malformed placeholder {e}: use only {', '.join(sorted(values))}"
        ) from e
    kinds = sorted(doc.get("kind", "?") for doc in rendered)
    if kinds != ["Deployment", "Service"]:
        raise ServingError(f"vLLM template {path}: holds {kinds}, not one Deployment and one Service: fix the file")
    if max_model_len is not None:
        deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
        _container(deployment, "vllm", path)["args"] += ["--max-model-len", str(max_model_len)]
    return sorted(rendered, key=lambda doc: doc["kind"])


def apply(manifests: Sequence[dict[str, Any]], api: KubernetesApi) -> list[AppliedObject]:
    """Create each Deployment/Service, or patch it (strategic merge of the whole manifest) when it exists.

    Idempotent: applying the same manifests again patches the objects to what they already are.

    Raises:
        ServingError: a kind other than Deployment/Service (nothing applied), or naming the object when the API
            refuses (with the fix: RBAC, namespace, the manifest).
    """
    calls = {
        "Deployment": (api.apps.read_namespaced_deployment, api.apps.create_namespaced_deployment,
                       api.apps.patch_namespaced_deployment),
        "Service": (api.core.read_namespaced_service, api.core.create_namespaced_service,
                    api.core.patch_namespaced_service),
    }  # fmt: skip
    for manifest in manifests:
        if manifest.get("kind") not in calls:
            raise ServingError(f"apply: cannot apply kind {manifest.get('kind')!r}: only Deployment and Service")
    done: list[AppliedObject] = []
    for manifest in manifests:
        kind, meta = manifest["kind"], manifest["metadata"]
        name, namespace = meta["name"], meta.get("namespace", "default")
        read, create, patch = calls[kind]
        try:
            exists = _exists(read, name, namespace)
            if exists:
                patch(name=name, namespace=namespace, body=manifest)
            else:
                create(namespace=namespace, body=manifest)
        except Exception as e:  # kubernetes.client.ApiException, urllib3 errors, ...
            why = f"the API refused ({describe_api_error(e)}): {_fix(e, kind)}"
            raise ServingError(f"{kind} {namespace}/{name}: {why}") from e
        done.append(AppliedObject(kind, namespace, name, "patched" if exists else "created"))
    return done


def _check_inputs(
    model_name: str, version: str, model_uri: str, image: str, gpus: int, max_model_len: int | None
) -> None:
    for what, value in (("model name", model_name), ("version", version)):
        if not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ServingError(f"{what} {value!r} is not a valid Kubernetes label value: use letters, digits, '-._'")
    if not model_uri.startswith("s3://") or len(model_uri.rstrip("/")) <= len("s3://"):
        raise ServingError(
            f"model {model_name} version {version}: model_uri {model_uri!r} is not s3://bucket/prefix: pass the "
            "S3 URI of the registered weights"
        )
    if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        raise ServingError(f"vLLM image {image!r} has no tag or digest: pin it (e.g. vllm/vllm-openai:v0.32.0)")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ServingError(f"gpus={gpus!r}: a vLLM replica needs at least 1 GPU")
    if max_model_len is not None and (isinstance(max_model_len, bool) or max_model_len < 1):
        raise ServingError(f"max_model_len={max_model_len!r}: give a positive token count or None")


def substitute(node: Any, values: dict[str, str]) -> Any:
    """Fill `${NAME}` placeholders in every string of a parsed document (structure never comes from values)."""
    if isinstance(node, dict):
        return {substitute(k, values): substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(item, values) for item in node]
    if isinstance(node, str):
        return string.Template(node).substitute(values)
    return copy.deepcopy(node)


def _container(deployment: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container.get("name") == name:
            container.setdefault("args", [])
            found: dict[str, Any] = container
            return found
    raise ServingError(f"vLLM template {path}: no container named {name!r} in the Deployment: fix the file")


def _exists(read: Any, name: str, namespace: str) -> bool:
    try:
        read(name=name, namespace=namespace)
    except Exception as e:  # see apply
        if api_status(e) == _NOT_FOUND:
            return False
        raise
    return True


def _fix(error: Exception, kind: str) -> str:
    resource = "deployments.apps" if kind == "Deployment" else "services"
    return api_error_fix(
        error,
        {
            403: f"grant the step's ServiceAccount get, create and patch on {resource} (infrastructure/base/rbac.yaml)",
            404: "create the namespace (infrastructure/base/namespace.yaml) or fix `namespace`",
            409: "another writer changed the object: retry the step",
            422: "the API server rejected the manifest: check infrastructure/serving/vllm.yaml",
        },
    )
