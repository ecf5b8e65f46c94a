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

import dataclasses
import functools
import os
import posixpath
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.runner import process
from workflows.runner.artifacts import ArtifactStore, input_source
from workflows.runner.cluster import ClusterConfig
from workflows.runner.environment import env_from_sources, expand_references, pod_environment
from workflows.runner.images import TOOLS, ImageRoot, entrypoint, tool_image
from workflows.runner.nodes import Node
from workflows.runner.sandbox import STAGED_SCRIPT, Sandbox
from workflows.runner.sidecars import Sidecars
from workflows.runner.volumes import InitContainer, Mount

__all__ = [
    "PodSpec",
    "Prepared",
    "RESULT_CAP",
    "collect_outputs",
    "parse_duration",
    "prepare",
    "run_container",
    "run_pod",
]

RESULT_CAP = 256 * 1024  # Argo caps `outputs.result` at 256 kB
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
    sidecars: tuple[InitContainer, ...] = ()  # its sidecars, run alongside the main container
    containers: tuple[InitContainer, ...] = ()  # a containerSet's containers (workflows/runner/containerset.py)
    readiness: Callable[[], bool] | None = None  # a daemon's readiness probe, polled until it first says True


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


def _in(path: str, mounts: tuple[Mount, ...]) -> bool:
    """Whether `path` lies in one of the volumes (there, a volume's folder stands for it)."""
    return any(path == m.path or path.startswith(m.path + "/") for m in mounts)


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


@dataclass(frozen=True)
class Prepared:
    """A container ready to start: its argv and environment, where its paths lie here, and how to clean up."""

    argv: list[str]
    env: dict[str, str]
    locate: Callable[[str], str]  # a path in the container -> where it lies on this machine
    settle: Callable[[], None] = lambda: None  # after it ends: drop placeholders it did not write
    cleanup: Callable[[], None] = lambda: None  # after its outputs are read: remove its private files
    missing: str = ""  # the command, when it is on none of the pod's PATH folders: the pod cannot start it


def run_pod(spec: PodSpec, node: Node) -> tuple[str, str]:
    """Run the leaf once; returns (phase, message) and fills node outputs, stdout and stderr files.

    Its init containers run first, in order, each as a process of the pod's image with the volumes it mounts; one
    that fails fails the pod (its logs under `<node dir>/init/<name>`), and the main container does not start.
    Its sidecars run alongside the main container (`workflows.runner.sidecars`) and are killed when it ends.
    """
    spec.node_dir.mkdir(parents=True, exist_ok=True)
    for init in spec.init:
        name = str(init.container.get("name", "init"))
        template = {"name": spec.template.get("name"), "container": init.container}
        step = dataclasses.replace(spec, template=template, node_dir=spec.node_dir / "init" / name, init=())
        phase, message = run_pod(dataclasses.replace(step, mounts=init.mounts), Node(node.id, name, name, "Pod", name))
        if phase != "Succeeded":
            return phase, f"init container {name}: {message}"
    sidecars = Sidecars()
    try:
        for car in spec.sidecars:
            name = str(car.container.get("name", "sidecar"))
            template = {"name": spec.template.get("name"), "container": car.container}
            logs = spec.node_dir / "sidecars" / name
            one = dataclasses.replace(spec, template=template, node_dir=logs, mounts=car.mounts, readiness=None)
            sidecars.start(name, logs, functools.partial(prepare, one))
        phase, message = run_container(spec, node)
    finally:
        problem = sidecars.stop()
    return ("Failed", problem) if problem and phase == "Succeeded" else (phase, message)


def run_container(spec: PodSpec, node: Node, later: list[Prepared] | None = None) -> tuple[str, str]:
    """Run the template's one container (no init containers, no sidecars) and read back its outputs.

    With `later`, its outputs are not read: its files are kept (appended to `later`) for `collect_outputs`.
    """
    spec.node_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    prepared = prepare(spec)
    if later is not None:
        later.append(prepared)
        return _launch(spec, node, prepared, collect=False)
    try:
        return _launch(spec, node, prepared, inputs_s=time.monotonic() - started)
    finally:
        prepared.cleanup()


def collect_outputs(spec: PodSpec, node: Node, prepared: Prepared) -> str:
    """Read the outputs of a container run with `later`, then remove its files; a problem (one line) or ""."""
    try:
        return _collect_outputs(spec, node, prepared.locate)
    finally:
        prepared.cleanup()


def prepare(spec: PodSpec) -> Prepared:
    """Stage the container's inputs and build its command line, under the spec's isolation."""
    if spec.sandbox is not None:
        return _prepare_isolated(spec, spec.sandbox)
    table = {k: v for k, v in _remap_table(spec.template, spec.node_dir / "root").items() if not _in(k, spec.mounts)}
    table.update({m.path: m.host for m in spec.mounts})  # a volume is its folder, wherever its path appears
    remap = _remapper(table)
    for declared in _declared_paths(spec.template):
        Path(remap(declared)).parent.mkdir(parents=True, exist_ok=True)
    (spec.node_dir / "root" / "tmp").mkdir(parents=True, exist_ok=True)  # /tmp, when an output is /tmp itself
    _stage_inputs(spec, remap)
    argv = _command(spec, remap)
    (spec.node_dir / "command").write_text(" ".join(argv) + "\n")
    return Prepared(argv, _environment(spec, remap), remap)


def _prepare_isolated(spec: PodSpec, sandbox: Sandbox) -> Prepared:
    """The leaf in bubblewrap: its own root (the image's files), only Argo's environment, no path rewriting.

    Declared paths are bound where the template says from the pod's folder (`<node dir>/pod`); `locate` maps a
    path to where it lies on this machine. The folder is removed by `cleanup`: only collected outputs outlive it.
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
        missing = (
            argv[0] if argv and sandbox.missing(argv[0], image, env.get("PATH", image.env.get("PATH", ""))) else ""
        )
    except BaseException:
        shutil.rmtree(pod, ignore_errors=True)
        raise
    return Prepared(
        wrapped, env, locate, lambda: sandbox.settle(pod), lambda: shutil.rmtree(pod, ignore_errors=True), missing
    )


def _launch(
    spec: PodSpec, node: Node, prepared: Prepared, *, collect: bool = True, inputs_s: float | None = None
) -> tuple[str, str]:
    """Start the container in its own process group, wait for it, settle its files, read its result and outputs.

    At its deadline, or when `spec.stopped` says the workflow is being stopped or terminated, the whole group is
    killed (SIGTERM, then SIGKILL after a grace period, as the kubelet does), bubblewrap's pod included. Given
    `inputs_s` (how long staging its inputs took), a pod that ran writes `<node dir>/timings`: inputs, process
    and outputs seconds on one line (where a slow pod spends its time).
    """
    if prepared.missing:
        return "Error", f"cannot start {prepared.missing}: No such file or directory"
    try:
        proc = process.start(prepared.argv, prepared.env, spec.node_dir)
    except OSError as e:
        return "Error", f"cannot start {prepared.argv[0]}: {e.strerror}"
    started = time.monotonic()
    killed = process.wait(proc, spec.deadline_s, spec.stopped, spec.readiness)
    ran_s = time.monotonic() - started
    prepared.settle()
    if killed:
        return "Failed", killed
    stdout = (spec.node_dir / "stdout").read_bytes()[:RESULT_CAP].decode(errors="replace")
    node.result = stdout[:-1] if stdout.endswith("\n") else stdout
    node.exit_code = process.exit_status(proc)
    if node.exit_code != 0:
        _save_artifacts(spec, node, prepared.locate, best_effort=True)  # Argo's wait container saves them too
        tail = (spec.node_dir / "stderr").read_text(errors="replace").strip().splitlines()
        return "Failed", f"exit code {node.exit_code}" + (f": {tail[-1][:300]}" if tail else "")
    problem = _collect_outputs(spec, node, prepared.locate) if collect else ""
    if inputs_s is not None:
        outputs_s = time.monotonic() - started - ran_s
        line = f"inputs {inputs_s:.2f}s process {ran_s:.2f}s outputs {outputs_s:.2f}s\n"
        (spec.node_dir / "timings").write_text(line)
    return ("Error", problem) if problem else ("Succeeded", "")
