"""The Kubernetes objects a pod's configuration comes from: ConfigMaps and Secrets, read from YAML files.

On a cluster, Argo's pods get their environment (`envFrom`, `valueFrom.configMapKeyRef` / `secretKeyRef`) and the
controller its artifact repository (the `artifact-repositories` ConfigMap) from the Kubernetes API. The local
runner reads the same objects from the YAML files of a folder (`llmrelease run --cluster-config DIR`): every
`kind: ConfigMap` and `kind: Secret` document in `DIR/*.yaml` (recursively), keyed by name. Secrets take `data`
(base64, as Kubernetes stores it) and `stringData` (plain), as `kubectl apply` does.

A missing object or key is what Kubernetes reports as CreateContainerConfigError: `MissingConfig` names it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from registry.errors import WorkflowError

__all__ = ["ClusterConfig", "MissingConfig"]


class MissingConfig(WorkflowError):
    """A ConfigMap, Secret or key a pod asks for is not there (Kubernetes: CreateContainerConfigError)."""


@dataclass(frozen=True)
class ClusterConfig:
    """ConfigMaps and Secrets by name, as the pods of one run see them."""

    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    source: str = "no cluster config"
    annotations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # ConfigMap name -> annotations
    claims: frozenset[str] = frozenset()  # PersistentVolumeClaim names (existing claims a volume may name)

    @classmethod
    def load(cls, folder: Path | None) -> ClusterConfig:
        """Every ConfigMap and Secret in `folder`'s YAML files (recursively); an empty config for None.

        Raises:
            WorkflowError: The folder does not exist, a file is not YAML, or a Secret's data is not base64.
        """
        if folder is None:
            return cls()
        if not folder.is_dir():
            raise WorkflowError(f"--cluster-config {folder}: not a folder; pass a folder of ConfigMap/Secret YAML")
        config_maps: dict[str, dict[str, str]] = {}
        secrets: dict[str, dict[str, str]] = {}
        annotations: dict[str, dict[str, str]] = {}
        claims: set[str] = set()
        for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
            for doc in _documents(path):
                kind, name = doc.get("kind"), str((doc.get("metadata") or {}).get("name", ""))
                if kind == "ConfigMap" and name:
                    config_maps[name] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
                    notes = (doc.get("metadata") or {}).get("annotations") or {}
                    annotations[name] = {str(k): str(v) for k, v in notes.items()}
                elif kind == "Secret" and name:
                    secrets[name] = _secret_data(doc, f"{path}: Secret {name}")
                elif kind == "PersistentVolumeClaim" and name:
                    claims.add(name)
        return cls(config_maps, secrets, str(folder), annotations, frozenset(claims))

    def config_map(self, name: str, *, optional: bool = False) -> Mapping[str, str]:
        """The data of ConfigMap `name` (empty when optional and missing).

        Raises:
            MissingConfig: It does not exist and is not optional.
        """
        return self._get(self.config_maps, "configmap", name, optional)

    def secret(self, name: str, *, optional: bool = False) -> Mapping[str, str]:
        """The decoded data of Secret `name` (empty when optional and missing).

        Raises:
            MissingConfig: It does not exist and is not optional.
        """
        return self._get(self.secrets, "secret", name, optional)

    def key(self, kind: str, name: str, key: str, *, optional: bool = False) -> str | None:
        """One key of a ConfigMap (`kind` "configmap") or Secret ("secret"); None when optional and missing.

        Raises:
            MissingConfig: The object or the key is missing and not optional.
        """
        data = self.config_map(name, optional=optional) if kind == "configmap" else self.secret(name, optional=optional)
        if key in data:
            return data[key]
        if optional:
            return None
        raise MissingConfig(
            f"couldn't find key {key} in {'ConfigMap' if kind == 'configmap' else 'Secret'} {name} "
            f"(CreateContainerConfigError): add it to {self.source}"
        )

    def _get(self, table: Mapping[str, Mapping[str, str]], kind: str, name: str, optional: bool) -> Mapping[str, str]:
        if name in table:
            return table[name]
        if optional:
            return {}
        noun = "ConfigMap" if kind == "configmap" else "Secret"
        raise MissingConfig(
            f'{kind} "{name}" not found (CreateContainerConfigError): add a {noun} named {name} to {self.source}'
        )


def _documents(path: Path) -> list[dict[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        raise WorkflowError(f"{path}: cannot read as YAML ({e}); fix or remove it from the cluster config") from e


def _secret_data(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as e:
            raise WorkflowError(f"{where}: data.{key} is not base64 text; put plain values under stringData") from e
    out.update({str(k): str(v) for k, v in (doc.get("stringData") or {}).items()})
    return out
