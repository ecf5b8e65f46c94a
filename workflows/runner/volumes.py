"""A pod's volumes as folders of this machine: what each `volumeMounts` entry of a container shows at its path.

As the kubelet resolves them, a mount names a volume of the template (`volumes`), of the workflow
(`spec.volumes`) or a claim the workflow creates (`spec.volumeClaimTemplates`):
- `emptyDir`: a fresh folder per pod (`<node dir>/volumes/<name>`), shared by its init containers and main.
- a `volumeClaimTemplates` claim: one folder per workflow (`<run dir>/volumes/<name>`), as Argo creates one PVC
  per workflow and deletes it at the end (the folder is kept with the run's logs).
- `persistentVolumeClaim.claimName`: an existing claim, which must be a PersistentVolumeClaim of the cluster
  config; its data outlives workflows in `<runs dir>/../volumes/<claimName>`.
- `configMap` / `secret`: their keys (or `items`) written as files, read-only; `hostPath`: that path.
A mount of a volume that is not declared, of a missing claim, ConfigMap or Secret fails the pod with one line
naming it (Kubernetes: the pod never starts). Other volume types are refused with their name.
"""

from __future__ import annotations

import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError
from workflows.runner.cluster import ClusterConfig, MissingConfig

__all__ = ["InitContainer", "Mount", "VolumePlaces", "container_set", "init_containers", "mounts_of", "pod_mounts"]

_KINDS = ("emptyDir", "persistentVolumeClaim", "configMap", "secret", "hostPath")


@dataclass(frozen=True)
class Mount:
    """A folder of this machine seen at `path` in the pod (`read_only`: the pod cannot write to it)."""

    host: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class VolumePlaces:
    """Where a pod's volumes live on this machine."""

    node_dir: Path
    run_dir: Path
    claims: frozenset[str]  # names of the workflow's volumeClaimTemplates


def pod_mounts(
    template: Mapping[str, Any], spec: Mapping[str, Any], places: VolumePlaces, cluster: ClusterConfig
) -> list[Mount]:
    """The mounts of the template's main container, in its `volumeMounts` order.

    Raises:
        WorkflowError: A mount names an undeclared volume or one of a type the local runner cannot provide.
        MissingConfig: Its claim, ConfigMap or Secret is not there.
    """
    body = template.get("container") or template.get("script") or {}
    return mounts_of(body.get("volumeMounts") or [], template, spec, places, cluster)


@dataclass(frozen=True)
class InitContainer:
    """One of a template's `initContainers`, with its mounts (the main container's with `mirrorVolumeMounts`)."""

    container: Mapping[str, Any]
    mounts: tuple[Mount, ...]


def init_containers(
    template: Mapping[str, Any],
    spec: Mapping[str, Any],
    places: VolumePlaces,
    cluster: ClusterConfig,
    main: tuple[Mount, ...],
    key: str = "initContainers",
) -> tuple[InitContainer, ...]:
    """The template's init containers (or, with `key="sidecars"`, its sidecars) in order, with the volumes they see.

    Raises:
        WorkflowError: A container mounts an undeclared volume (see `pod_mounts`).
    """
    found = []
    for container in template.get(key) or []:
        body = {k: v for k, v in container.items() if k != "mirrorVolumeMounts"}
        own = mounts_of(container.get("volumeMounts") or [], template, spec, places, cluster)
        found.append(InitContainer(body, main if container.get("mirrorVolumeMounts") else tuple(own)))
    return tuple(found)


def container_set(
    template: Mapping[str, Any], spec: Mapping[str, Any], places: VolumePlaces, cluster: ClusterConfig
) -> tuple[InitContainer, ...]:
    """A containerSet's containers in order, each with its own `volumeMounts` plus the set's (Argo's GetContainers).

    Raises:
        WorkflowError: A container mounts an undeclared volume (see `pod_mounts`).
    """
    body = template.get("containerSet") or {}
    shared = list(body.get("volumeMounts") or [])
    found = []
    for container in body.get("containers") or []:
        entries = [*(container.get("volumeMounts") or []), *shared]
        found.append(InitContainer(container, tuple(mounts_of(entries, template, spec, places, cluster))))
    return tuple(found)


def mounts_of(
    entries: list[Mapping[str, Any]],
    template: Mapping[str, Any],
    spec: Mapping[str, Any],
    places: VolumePlaces,
    cluster: ClusterConfig,
) -> list[Mount]:
    """The mounts of a container's `volumeMounts` entries (see `pod_mounts`)."""
    declared = {str(v.get("name")): v for v in [*(spec.get("volumes") or []), *(template.get("volumes") or [])]}
    mounts = []
    for entry in entries:
        name, where = str(entry.get("name")), f"template {template.get('name')}: volumeMount {entry.get('name')}"
        if name in declared:
            host = _volume_folder(declared[name], places, cluster, where)
        elif name in places.claims:
            host = places.run_dir / "volumes" / name
            host.mkdir(parents=True, exist_ok=True)
        else:
            raise WorkflowError(f'{where}: volume "{name}" not found; declare it in volumes or volumeClaimTemplates')
        if entry.get("subPath"):
            host = host / str(entry["subPath"])
            host.mkdir(parents=True, exist_ok=True)
        read_only = bool(entry.get("readOnly")) or any(k in declared.get(name, {}) for k in ("configMap", "secret"))
        mounts.append(Mount(str(host), posixpath.normpath(str(entry["mountPath"])), read_only))
    return mounts


def _volume_folder(volume: Mapping[str, Any], places: VolumePlaces, cluster: ClusterConfig, where: str) -> Path:
    kind = next((k for k in _KINDS if k in volume), None)
    name = str(volume.get("name"))
    if kind is None:
        other = ", ".join(k for k in volume if k != "name") or "none"
        raise WorkflowError(f"{where}: volume type {other} cannot be provided locally; use one of {', '.join(_KINDS)}")
    source = volume[kind] or {}
    if kind == "hostPath":
        return Path(str(source.get("path")))
    if kind == "persistentVolumeClaim":
        claim = str(source.get("claimName"))
        if claim not in cluster.claims and claim not in places.claims:
            raise MissingConfig(
                f'persistentvolumeclaim "{claim}" not found: add a PersistentVolumeClaim named {claim} to '
                f"{cluster.source}"
            )
        folder = places.run_dir / "volumes" / claim if claim in places.claims else _claims_dir(places) / claim
    else:
        folder = places.node_dir / "volumes" / name
    if kind in ("configMap", "secret"):
        _write_keys(folder, kind, source, cluster)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _claims_dir(places: VolumePlaces) -> Path:
    return places.run_dir.parent.parent / "volumes"


def _write_keys(folder: Path, kind: str, source: Mapping[str, Any], cluster: ClusterConfig) -> None:
    """A configMap/secret volume: each key (or each of `items`, at its `path`) as a file."""
    name = str(source.get("name") or source.get("secretName"))
    optional = bool(source.get("optional"))
    read = cluster.config_map if kind == "configMap" else cluster.secret
    data = read(name, optional=optional)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        key = str(item["key"])
        if key not in data:
            if optional:
                continue
            raise MissingConfig(f"couldn't find key {key} in {kind} {name}: add it to {cluster.source}")
        target = folder / str(item.get("path", key))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[key])
