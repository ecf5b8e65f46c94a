"""The `ServingPlane` interface, the local plane that implements it, and the one factory that chooses a plane."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from registry.errors import SpecError
from steps.release.policy import load_policy
from steps.rollout.routing.base import BackendRouter, Router
from steps.rollout.routing.gateway import GatewayRouter
from steps.rollout.routing.haproxy import HAProxyRouter
from steps.rollout.serving.base import PlaneState, ServingPlane
from steps.rollout.serving.factory import serving_plane
from steps.rollout.serving.guard import CanaryGuard, GuardedPlane
from steps.rollout.serving.local import LocalServing
from steps.rollout.serving.remote import SERVING_URL_ENV, RemoteGuard, RemoteRouter, RemoteServing

REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICY = REPO / "policy" / "platform-policy.yaml"
# What the rollout code asks of a plane: deploy/promote/abort/rollback, the canary step, the serving commands.
PLANE_USERS = (
    "steps/rollout/operations.py",
    "steps/rollout/serving/guard.py",
    "steps/canary.py",
    "workflows/cli/serving.py",
)
GUARDED = {"canary_guard"}  # GuardedPlane: the local plane guards its canaries with a heartbeat
MEMBERS = {
    "locked", "state", "ensure_server", "ensure_servers", "is_ready", "stop_server", "reap",
    "router", "ensure_router", "router_url", "shutdown",
}  # fmt: skip


def _used_on_plane(path: Path) -> set[str]:
    """Names the module reads off a plane: `plane.router(...)`, `serving_plane(...).shutdown(...)`."""

    def is_plane(node: ast.expr) -> bool:
        if isinstance(node, ast.Call):
            return isinstance(node.func, ast.Name) and node.func.id == "serving_plane"
        return isinstance(node, ast.Name) and node.id == "plane"

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and is_plane(node.value)}


def _policy_file(root: Path, plane: str) -> None:
    raw = yaml.safe_load(SHIPPED_POLICY.read_text(encoding="utf-8"))
    raw["environments"]["prod"]["plane"] = plane
    (root / "policy").mkdir()
    (root / "policy" / "platform-policy.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


def test_local_serving_is_a_serving_plane(tmp_path: Path) -> None:
    """GIVEN the local plane WHEN checked against the interface (at run time, and by mypy on the assignment)
    THEN it is a ServingPlane, and its router (HAProxy) is a BackendRouter."""
    plane: ServingPlane = LocalServing(tmp_path)
    assert isinstance(plane, ServingPlane)
    router: BackendRouter = HAProxyRouter({"v1": "127.0.0.1:9"}, port=9)
    assert isinstance(router, BackendRouter) and isinstance(router, Router)


def test_remote_serving_is_a_guarded_serving_plane() -> None:
    """GIVEN the client of the local plane's service WHEN checked against the interfaces (at run time, and by mypy
    on the assignments) THEN it is a ServingPlane and a GuardedPlane, its router a BackendRouter, its guard a
    CanaryGuard: the steps drive it exactly as the in-process plane."""
    plane: ServingPlane = RemoteServing("http://127.0.0.1:9")
    assert isinstance(plane, ServingPlane) and isinstance(plane, GuardedPlane)
    remote = RemoteServing("http://127.0.0.1:9")
    router: BackendRouter = RemoteRouter(remote, PlaneState(model="m"))
    guard: CanaryGuard = RemoteGuard(remote, "m", workflow_uid="u", candidate="2", deadline=30.0)
    assert isinstance(guard, CanaryGuard)  # (isinstance on the router would read its live `backends`: mypy checks it)
    assert all(callable(getattr(router, name)) for name in ("set_weights", "weights", "add_backend", "stop"))


def test_the_serving_url_selects_the_service(tmp_path: Path, monkeypatch: Any) -> None:
    """GIVEN LLMRELEASE_SERVING_URL (the local profile's ConfigMap sets it) WHEN a plane is asked for, with or
    without an environment THEN it is the service's client at that URL; unset, the in-process plane."""
    monkeypatch.setenv(SERVING_URL_ENV, "http://127.0.0.1:8790/")
    plane = serving_plane("prod", tmp_path, load_policy(SHIPPED_POLICY))
    assert isinstance(plane, RemoteServing) and plane.url == "http://127.0.0.1:8790"
    assert isinstance(serving_plane("", tmp_path), RemoteServing)
    monkeypatch.delenv(SERVING_URL_ENV)
    assert isinstance(serving_plane("", tmp_path), LocalServing)


def test_the_interface_holds_exactly_what_the_rollout_code_uses() -> None:
    """GIVEN the modules that drive a plane WHEN the members they use are collected
    THEN they are the interface's members, no more (mypy would refuse) and no fewer (no dead member)."""
    used = set().union(*(_used_on_plane(REPO / path) for path in PLANE_USERS))
    assert used - GUARDED == MEMBERS
    assert GUARDED <= used and all(hasattr(GuardedPlane, name) for name in GUARDED)


@pytest.mark.parametrize("missing", sorted(MEMBERS))
def test_an_object_missing_one_member_is_not_a_plane(missing: str) -> None:
    """GIVEN an object with every member but one WHEN checked THEN it is not a ServingPlane (all are required)."""
    complete = type("Complete", (), {name: (lambda *_: None) for name in MEMBERS})()
    partial = type("Partial", (), {name: (lambda *_: None) for name in MEMBERS - {missing}})()
    assert isinstance(complete, ServingPlane)
    assert not isinstance(partial, ServingPlane)


def test_a_router_that_cannot_add_backends_is_not_a_backend_router() -> None:
    """GIVEN the Gateway API router (it can split, not add or remove backends yet)
    THEN it is a Router but not a BackendRouter: no plane could be built on it today."""
    gateway = GatewayRouter(cast(Any, None), namespace="llmrelease", name="demo-qa")
    assert isinstance(gateway, Router)
    assert not isinstance(gateway, BackendRouter)


@pytest.mark.parametrize("environment", ["dev", "stage", "prod"])
def test_factory_picks_the_local_plane_from_the_shipped_policy(environment: str, tmp_path: Path) -> None:
    """GIVEN the shipped platform policy WHEN the plane of each environment is asked for
    THEN it is the local plane, keeping its state under the given home."""
    policy = load_policy(SHIPPED_POLICY)
    assert policy.environment(environment).plane == "local"
    plane = serving_plane(environment, tmp_path, policy)
    assert isinstance(plane, LocalServing)
    assert plane.model_dir("demo-qa") == tmp_path / "serving" / "demo-qa"


def test_factory_reads_the_policy_file_of_the_working_directory(tmp_path: Path, monkeypatch: Any) -> None:
    """GIVEN no policy object WHEN run from the repository THEN the factory reads policy/platform-policy.yaml;
    from a folder without one it says the policy is missing, in one line."""
    monkeypatch.chdir(REPO)
    assert isinstance(serving_plane("prod", tmp_path), LocalServing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="platform policy not found") as info:
        serving_plane("prod", tmp_path)
    assert "\n" not in str(info.value)


def test_no_environment_is_the_local_plane_without_reading_a_policy(tmp_path: Path, monkeypatch: Any) -> None:
    """GIVEN no environment (the serving commands, promote, rollback) and no policy file in sight
    WHEN a plane is asked for THEN it is the local plane."""
    monkeypatch.chdir(tmp_path)
    assert isinstance(serving_plane("", tmp_path), LocalServing)


def test_kubernetes_plane_is_not_a_local_serving_plane(tmp_path: Path, monkeypatch: Any) -> None:
    """GIVEN a policy whose prod sets plane: kubernetes WHEN prod's local ServingPlane is asked for
    THEN one line names the rule and points at the Argo Rollouts plane (rollout_plane); dev still works."""
    _policy_file(tmp_path, "kubernetes")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        serving_plane("prod", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "environments.prod.plane is 'kubernetes'" in message
    assert "Argo Rollouts" in message and "rollout_plane" in message
    assert isinstance(serving_plane("dev", tmp_path), LocalServing)


def test_unknown_plane_is_refused_in_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    """GIVEN a policy whose prod sets plane: docker WHEN any plane is asked for
    THEN one line names the file, the field and the allowed values."""
    _policy_file(tmp_path, "docker")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        serving_plane("dev", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("policy/platform-policy.yaml: environments.prod.plane: ")
    assert "'local' or 'kubernetes'" in message


def test_unknown_environment_is_refused(tmp_path: Path) -> None:
    """GIVEN the shipped policy WHEN an environment it does not define is asked for THEN it names the known ones."""
    with pytest.raises(SpecError, match=r"environment 'qa' is not defined \(defined: dev, stage, prod\)"):
        serving_plane("qa", tmp_path, load_policy(SHIPPED_POLICY))
