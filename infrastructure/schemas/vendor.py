"""Regenerate the vendored CRD JSON schemas under infrastructure/schemas/ from registry packages (offline after).

    python infrastructure/schemas/vendor.py            # needs `npm` (npm registry) and the project's venv (hera)

Sources (see SOURCES.md):
- npm `@kubernetes-models/gateway-api@0.5.0`: the openAPIV3Schema of the Gateway API v1.0.0 CRDs (Gateway,
  GatewayClass, HTTPRoute v1), as plain JSON-schema object literals inside the package's CommonJS modules.
- npm `@kubernetes-models/argo-rollouts@0.3.2`: Rollout and AnalysisTemplate (argoproj.io v1alpha1), from the Argo
  Rollouts v1.5.0 CRDs (the first release with traffic-router plugins, which the Gateway API plugin needs).
- npm `@kubernetes-models/prometheus-operator@1.6.3`: ServiceMonitor, PodMonitor, PrometheusRule (monitoring v1).
- PyPI `hera` (the version in constraints.txt): Argo Events Sensor and EventSource, from Hera's models, which are
  generated from Argo Events' OpenAPI spec (pydantic `model_json_schema`).
The RayCluster, ExternalSecret, ClusterSecretStore and EventBus schemas are written by hand (no registry package
ships them) and are not touched by this script.

Every object schema that lists `properties` and neither `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields` is closed (`additionalProperties: false`), which is what the API server's
strict field validation (`kubectl apply --validate=strict`) does with unknown fields. References to Kubernetes'
own types point at kubernetes-validate's bundled definitions (`$id` https://kubernetes.io/api/_definitions.json).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"
NPM_SOURCES: dict[str, list[tuple[str, str]]] = {
    "@kubernetes-models/gateway-api@0.5.0": [
        ("gateway.networking.k8s.io/v1/HTTPRoute.js", "gateway.networking.k8s.io/httproute_v1.json"),
        ("gateway.networking.k8s.io/v1/Gateway.js", "gateway.networking.k8s.io/gateway_v1.json"),
        ("gateway.networking.k8s.io/v1/GatewayClass.js", "gateway.networking.k8s.io/gatewayclass_v1.json"),
    ],
    "@kubernetes-models/argo-rollouts@0.3.2": [
        ("argoproj.io/v1alpha1/Rollout.js", "argoproj.io/rollout_v1alpha1.json"),
        ("argoproj.io/v1alpha1/AnalysisTemplate.js", "argoproj.io/analysistemplate_v1alpha1.json"),
    ],
    "@kubernetes-models/prometheus-operator@1.6.3": [
        ("monitoring.coreos.com/v1/ServiceMonitor.js", "monitoring.coreos.com/servicemonitor_v1.json"),
        ("monitoring.coreos.com/v1/PodMonitor.js", "monitoring.coreos.com/podmonitor_v1.json"),
        ("monitoring.coreos.com/v1/PrometheusRule.js", "monitoring.coreos.com/prometheusrule_v1.json"),
    ],
}
# Where Hera's model is the Go struct but the YAML is the value's JSON form, the JSON form.
_HERA_WIRE_TYPES: dict[str, Any] = {
    # A trigger's inline resource is an arbitrary Kubernetes object (Hera: a base64 string).
    "K8SResource": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    # Argo Events' Int64OrString marshals as a number or a string ("10s"), its Amount as a number.
    "Int64OrString": {"type": ["integer", "string"]},
    "Amount": {"type": ["number", "string"]},
    "Quantity": {"type": ["string", "number"]},
}
# Fields Hera types from the protobuf OpenAPI (int64 -> string) whose Go type is a plain int64: a JSON number.
_HERA_FIELD_WIRE_TYPES: dict[tuple[str, str], Any] = {
    ("WebhookContext", "maxPayloadSize"): {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
}
_SCHEMA_LITERAL = re.compile(r"^const schema = (\{.*?^\});$", re.S | re.M)


def close_objects(node: Any) -> Any:
    """Return `node` with every open object schema that lists properties closed (`additionalProperties: false`)."""
    if isinstance(node, list):
        return [close_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: close_objects(value) for key, value in node.items()}
    props = out.get("properties")
    if isinstance(props, dict) and props and "additionalProperties" not in out:
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def _k8s_refs(node: Any) -> Any:
    if isinstance(node, list):
        return [_k8s_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _k8s_refs(value) for key, value in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("io.k8s."):
        out["$ref"] = K8S_DEFS + ref.rstrip("#")
    return out


def from_npm(package: str, members: list[tuple[str, str]], work: Path) -> None:
    """Extract the schema literal of each module of one npm package into its vendored file."""
    subprocess.run(["npm", "pack", package, "--pack-destination", str(work)], check=True, capture_output=True)
    tarball = next(work.glob("*.tgz"))
    with tarfile.open(tarball) as tar:
        for module, target in members:
            member = tar.extractfile(f"package/{module}")
            if member is None:
                raise SystemExit(f"{package}: no {module} in the package")
            match = _SCHEMA_LITERAL.search(member.read().decode("utf-8"))
            if match is None:
                raise SystemExit(f"{package}/{module}: no `const schema = {{...}};` literal: has the layout changed?")
            schema = close_objects(_k8s_refs(json.loads(match.group(1))))
            _write(target, schema, f"npm {package} ({module})")


def from_hera() -> None:
    """Argo Events Sensor and EventSource from Hera's generated models."""
    import hera
    from hera.events import models

    for model, kind in ((models.Sensor, "Sensor"), (models.EventSource, "EventSource")):
        schema: dict[str, Any] = model.model_json_schema(by_alias=True, mode="validation")
        schema["$defs"].update(_HERA_WIRE_TYPES)
        for (definition, field), wire in _HERA_FIELD_WIRE_TYPES.items():
            if field in schema["$defs"].get(definition, {}).get("properties", {}):
                schema["$defs"][definition]["properties"][field] = wire
        schema["properties"]["apiVersion"] = {"type": "string", "enum": ["argoproj.io/v1alpha1"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        schema["properties"]["metadata"] = {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        schema = close_objects(_without_prose(schema))
        _write(f"argoproj.io/{kind.lower()}_v1alpha1.json", schema, f"PyPI hera=={hera.__version__}")


def _without_prose(node: Any) -> Any:
    """Drop pydantic's titles and descriptions (a third of the size, none of the checks)."""
    if isinstance(node, list):
        return [_without_prose(item) for item in node]
    if not isinstance(node, dict):
        return node
    prose = ("title", "description")
    return {k: _without_prose(v) for k, v in node.items() if k not in prose or not isinstance(v, str)}


def _write(target: str, schema: dict[str, Any], source: str) -> None:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "x-llmrelease-source": source, **schema}
    path = HERE / target
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parent.parent)} from {source}")


def main() -> int:
    """Regenerate every vendored schema this script owns."""
    with tempfile.TemporaryDirectory() as tmp:
        for index, (package, members) in enumerate(NPM_SOURCES.items()):
            work = Path(tmp) / str(index)
            work.mkdir()
            from_npm(package, members, work)
    from_hera()
    return 0


if __name__ == "__main__":
    sys.exit(main())
