"""Run one container or script template as a local subprocess, the way an Argo pod would run it.

The image is recorded, not pulled: the command runs in the project's Python environment (`python` means this
interpreter). Each node gets a private directory; the absolute paths a template declares for its outputs and
input artifacts (and their parent folders, e.g. Hera's `/tmp/hera-outputs`) are mapped into it wherever they
appear in the command, args, script source and env, so parallel pods never share a file as they would not in
Argo. That is `--isolation none`; under `--isolation bwrap` (workflows/runner/sandbox.py) nothing is rewritten:
each pod runs in bubblewrap with its image's files, its declared paths bound where the template says, and only
the environment Argo gives it (workflows/runner/environment.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.runner.artifacts import ArtifactStore, input_source
from workflows.runner.cluster import ClusterConfig
from workflows.runner.environment import env_from_sources, expand_references, pod_environment
from workflows.runner.images import TOOLS, ImageRoot, entrypoint, tool_image
from workflows.runner.nodes import Node
from workflows.runner.sandbox import STAGED_SCRIPT, Sandbox
from workflows.runner.volumes import InitContainer, Mount

__all__ = ["PodSpec", "run_pod", "parse_duration", "RESULT_CAP"]

RESULT_CAP = 256 * 1024  # Argo caps `outputs.result` at 256 kB
_POLL_S = 0.1  # how often a running pod's deadline and the workflow's stop/terminate request are checked
_GRACE_S = 5.0  # SIGTERM -> SIGKILL (Kubernetes' terminationGracePeriodSeconds, shortened for a local run)
_PYTHONS = {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}


@dataclass(frozen=True)
class PodSpec:
    """What a leaf needs: its template, its substitution scope, where it lives, and its deadline."""

    template: Mapping[str, Any]
    scope: Mapping[str, str]
    node_dir: Path
    artifact_dir: Path
    input_artifacts: Mapping[str, Mapping[str, Any]]  # argument artifacts by name (`from` resolved)
    deadline_s: float | None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sandbox: Sandbox | None = None  # `--isolation bwrap`: run inside bubblewrap (None: a plain subprocess)
    store: ArtifactStore = field(default_factory=ArtifactStore)  # the run's artifact repository (or local folder)
    stopped: Callable[[], str] = field(default=lambda: "")  # why the running pod must be killed now ("" if not)
    mounts: tuple[Mount, ...] = ()  # its volumes (workflows/runner/volumes.py), in volumeMounts order
    init: tuple[InitContainer, ...] = ()  # its initContainers, run in order before the main container


def parse_duration(value: object, where: str) -> float:
    """Seconds from an Argo duration: an int, "30", "10s", "2m", "1h", "1h30m"."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise WorkflowError(f"{where}: duration {text!r} does not parse; write e.g. 30, '10s', '2m' or '1h'")
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * unit[u] for n, u in parts)


def _declared_paths(template: Mapping[str, Any]) -> list[str]:
    paths = [p.get("valueFrom", {}).get("path") for p in template.get("outputs", {}).get("parameters", [])]
    paths += [a.get("path") for a in template.get("outputs", {}).get("artifacts", [])]
    paths += [a.get("path") for a in template.get("inputs", {}).get("artifacts", [])]
    return [p for p in paths if p and str(p).startswith("/")]


def _remap_table(template: Mapping[str, Any], root: Path) -> dict[str, str]:
    """Container path -> node-private path, for declared paths and their parents (not / or /tmp)."""
    table: dict[str, str] = {}
    for declared in _declared_paths(template):
        path = PurePosixPath(declared)
        for candidate in (path, *path.parents):
            if str(candidate) == "/" or (str(candidate) == "/tmp" and candidate != path):
                break  # an output of /tmp itself is the pod's /tmp, never the host's
            table[str(candidate)] = str(root) + str(candidate)
    return table


def _remapper(table: Mapping[str, str]) -> Any:
    if not table:
        return lambda text: text
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) + r"(?![\w.-])" for k in keys))
    return lambda text: pattern.sub(lambda m: table[m.group(0)], text)


def _command(spec: PodSpec, remap: Any, image: ImageRoot | None = None, script_at: Path | None = None) -> list[str]:
    """The pod's argv; a script's source is written (executable, as Argo's executor does) and its path appended.

    Under isolation (`image` given) the script is written at `script_at` and seen at Argo's /argo/staging/script,
    and `python` is the image's own unless the image lacks one.
    """
    tmpl, where = spec.template, f"template {spec.template.get('name')}"
    body = tmpl.get("script") or tmpl.get("container") or {}
    command = [str(c) for c in body.get("command", [])] or entrypoint(str(body.get("image", "")))
    if not command:
        raise WorkflowError(
            f"{where}: container.command is required by the local runner (it cannot read the "
            "image's entrypoint); set command explicitly"
        )
    args = [str(a) for a in body.get("args", [])]
    words = [remap(substitute(w, spec.scope, where=where)) for w in command + args]
    if "script" in tmpl:
        source = remap(substitute(str(body.get("source", "")), spec.scope, where=where))
        script = script_at or spec.node_dir / "script"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(source)
        script.chmod(0o755)  # `command: [sh, -c]` or [bash, -c] runs the path as a program: 126 if not executable
        words.append(STAGED_SCRIPT if image else str(script))
    if image is None and tool_image(str(body.get("image", ""))) and words[0] in entrypoint(str(body["image"])):
        words[0] = str(TOOLS / words[0].lstrip("/"))  # --isolation none: the stand-in where it lies here
    if words[0] in _PYTHONS and (image is None or image.python):
        words[0] = image.python if image else sys.executable
    return words


def _environment(spec: PodSpec, remap: Any) -> dict[str, str]:
    env = dict(os.environ)
    if spec.cluster.source != ClusterConfig().source:  # --cluster-config given: envFrom as Kubernetes gives it
        env.update(env_from_sources(spec.template, spec.cluster))
    body = spec.template.get("script") or spec.template.get("container") or {}
    if tool_image(str(body.get("image", ""))):
        env["PATH"] = f"{env.get('PATH', '')}:{TOOLS}"  # the image's cowsay
    for item in body.get("env", []):
        name = str(item["name"])
        if "value" in item:
            env[name] = remap(substitute(str(item["value"]), spec.scope, where=f"env {name}"))
        # valueFrom (secretKeyRef / configMapKeyRef): taken from this machine's environment when set there,
        # which is how secrets reach steps locally without ever being written into a manifest.
    return env


def _stage_inputs(spec: PodSpec, remap: Any) -> None:
    """Place each input artifact at its path in the pod, from wherever Argo would take it (artifacts.py)."""
    for art in spec.template.get("inputs", {}).get("artifacts", []):
        source = input_source(art, spec.input_artifacts.get(str(art["name"])), str(spec.template.get("name")))
        if source is not None:
            spec.store.load(source, Path(remap(str(art["path"]))), spec.scope)


def _collect_outputs(spec: PodSpec, node: Node, remap: Any) -> str:
    """Fill node outputs; returns an error message, or "" when every required output was found."""
    for param in spec.template.get("outputs", {}).get("parameters", []):
        source = param.get("valueFrom", {})
        if "path" in source:
            path = Path(remap(str(source["path"])))
            if path.is_file():
                text = path.read_text()
                node.parameters[param["name"]] = text[:-1] if text.endswith("\n") else text
            elif "default" in source:
                node.parameters[param["name"]] = str(source["default"])
            else:
                return f"output parameter {param['name']!r}: {source['path']} was not written"
        elif "value" in param:
            node.parameters[param["name"]] = substitute(str(param["value"]), spec.scope, where="output")
    return _save_artifacts(spec, node, remap)


def _save_artifacts(spec: PodSpec, node: Node, remap: Any, *, best_effort: bool = False) -> str:
    """Store the output artifacts; a missing one is an error unless optional (or `best_effort`, after a failure)."""
    for art in spec.template.get("outputs", {}).get("artifacts", []):
        path = Path(remap(str(art["path"])))
        if not path.exists():
            if art.get("optional") or best_effort:
                continue
            return f"output artifact {art['name']!r}: {art['path']} was not written"
        try:
            node.artifacts[str(art["name"])] = spec.store.save(art, path, spec.scope, spec.artifact_dir)
        except WorkflowError as e:
            if not best_effort:
                return str(e)
    return ""


def run_pod(spec: PodSpec, node: Node) -> tuple[str, str]:
    """Run the leaf once; returns (phase, message) and fills node outputs, stdout and stderr files.

    Its init containers run first, in order, each as a process of the pod's image with the volumes it mounts; one
    that fails fails the pod (its logs under `<node dir>/init/<name>`), and the main container does not start.
    """
    spec.node_dir.mkdir(parents=True, exist_ok=True)
    for init in spec.init:
        name = str(init.container.get("name", "init"))
        template = {"name": spec.template.get("name"), "container": init.container}
        step = dataclasses.replace(spec, template=template, node_dir=spec.node_dir / "init" / name, init=())
        phase, message = run_pod(dataclasses.replace(step, mounts=init.mounts), Node(node.id, name, name, "Pod", name))
        if phase != "Succeeded":
            return phase, f"init container {name}: {message}"
    if spec.sandbox is not None:
        return _run_isolated(spec, spec.sandbox, node)
    table = _remap_table(spec.template, spec.node_dir / "root")
    table.update({m.path: m.host for m in spec.mounts})  # a volume is its folder, wherever its path appears
    remap = _remapper(table)
    for declared in _declared_paths(spec.template):
        Path(remap(declared)).parent.mkdir(parents=True, exist_ok=True)
    (spec.node_dir / "root" / "tmp").mkdir(parents=True, exist_ok=True)  # /tmp, when an output is /tmp itself
    _stage_inputs(spec, remap)
    argv = _command(spec, remap)
    (spec.node_dir / "command").write_text(" ".join(argv) + "\n")
    return _launch(spec, node, argv, _environment(spec, remap), remap)


def _run_isolated(spec: PodSpec, sandbox: Sandbox, node: Node) -> tuple[str, str]:
    """Run the leaf in bubblewrap: its own root (the image's files), only Argo's environment, no path rewriting.

    Declared paths are bound where the template says from the pod's folder (`<node dir>/pod`); `locate` maps a
    path to where it lies on this machine. The folder is removed afterwards: only collected outputs outlive it.
    """
    body = spec.template.get("script") or spec.template.get("container") or {}
    image = sandbox.image(str(body.get("image", "")))
    pod = spec.node_dir / "pod"
    workdir = str(body.get("workingDir") or image.workdir)

    def locate(path: str) -> str:
        path = posixpath.join(workdir, path)
        for mount in reversed(spec.mounts):  # a path in a volume lies in the volume's folder
            if path == mount.path or path.startswith(mount.path + "/"):
                return mount.host + path[len(mount.path) :]
        return str(pod) + path

    sandbox.prepare(pod)
    try:
        env, variables = pod_environment(spec.template, spec.scope, spec.cluster, image.env, spec.deadline_s)
        _stage_inputs(spec, locate)
        argv = [expand_references(w, variables) for w in _command(spec, str, image, Path(locate(STAGED_SCRIPT)))]
        (spec.node_dir / "command").write_text(" ".join(argv) + "\n")
        declared = [*_declared_paths(spec.template), *([STAGED_SCRIPT] if "script" in spec.template else [])]
        wrapped = sandbox.wrap(argv, image, pod, workdir, str(spec.scope.get("pod.name", "pod")), declared, spec.mounts)
        (spec.node_dir / "sandbox").write_text(" ".join(wrapped) + "\n")
        return _launch(spec, node, wrapped, env, locate, settle=lambda: sandbox.settle(pod))
    finally:
        shutil.rmtree(pod, ignore_errors=True)


def _launch(
    spec: PodSpec,
    node: Node,
    argv: list[str],
    env: Mapping[str, str],
    locate: Any,
    settle: Callable[[], None] = lambda: None,
) -> tuple[str, str]:
    """Start `argv` in its own process group, wait for it, `settle` its files, and read back its result and outputs.

    At its deadline, or when `spec.stopped` says the workflow is being stopped or terminated, the whole group is
    killed (SIGTERM, then SIGKILL after a grace period, as the kubelet does), bubblewrap's pod included.
    """
    stdout_path, stderr_path = spec.node_dir / "stdout", spec.node_dir / "stderr"
    try:
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, process_group=0)
            killed = _wait(proc, spec)
    except OSError as e:
        return "Error", f"cannot start {argv[0]}: {e.strerror}"
    if killed:
        settle()
        return "Failed", killed
    settle()
    stdout = stdout_path.read_bytes()[:RESULT_CAP].decode(errors="replace")
    node.result = stdout[:-1] if stdout.endswith("\n") else stdout
    node.exit_code = proc.returncode
    if proc.returncode != 0:
        _save_artifacts(spec, node, locate, best_effort=True)  # Argo's wait container saves them on failure too
        tail = stderr_path.read_text(errors="replace").strip().splitlines()
        return "Failed", f"exit code {proc.returncode}" + (f": {tail[-1][:300]}" if tail else "")
    problem = _collect_outputs(spec, node, locate)
    return ("Error", problem) if problem else ("Succeeded", "")


def _wait(proc: subprocess.Popen[bytes], spec: PodSpec) -> str:
    """Wait for the pod's process; "" when it ended by itself, else why its process group was killed.

    Its exit wakes the wait at once (a pidfd), while every `_POLL_S` the deadline and a stop/terminate are checked.
    """
    until = None if spec.deadline_s is None else time.monotonic() + spec.deadline_s
    pidfd = _pidfd(proc.pid)
    why = ""
    try:
        while proc.poll() is None and not why:
            left = _POLL_S if until is None else max(0.0, min(_POLL_S, until - time.monotonic()))
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=left)
            if proc.poll() is not None:
                break
            if until is not None and time.monotonic() >= until:
                why = f"Pod was active on the node longer than the specified deadline ({spec.deadline_s:.0f}s)"
            else:
                why = spec.stopped()
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if proc.poll() is None:
            _kill_group(proc)
    return why


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux 5.3+), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the pod's process group, SIGKILL what is left of it after the grace period; reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    until = time.monotonic() + _GRACE_S
    while _group_alive(proc):
        if time.monotonic() >= until:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap the leader once it exits, or its zombie keeps the group alive
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def backoff_delays(strategy: Mapping[str, Any], where: str) -> tuple[float, float, float | None]:
    """(first delay, factor, maxDuration) of a retryStrategy.backoff."""
    backoff = strategy.get("backoff") or {}
    first = parse_duration(backoff["duration"], where) if "duration" in backoff else 0.0
    factor = float(backoff.get("factor", 1) or 1)
    limit = parse_duration(backoff["maxDuration"], where) if "maxDuration" in backoff else None
    return first, factor, limit


def sleep_until(deadline: float) -> None:
    """Sleep until a time.monotonic() deadline."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
