"""The files and environment of a container image, as a local pod sees them under bubblewrap.

Nothing is pulled. The project's steps image (`steps.core.images.STEPS_IMAGE`) is rebuilt as files from what
`images/steps/Dockerfile` says: the final stage's `COPY` lines land under its `WORKDIR` (/app), the Python packages
the build stage copies and installs (workflows/, steps/, registry/) go to a read-only folder on PYTHONPATH, and
`.dockerignore` filters both, with Docker's rules (patterns anchored at the build context's root, `**` for any
depth, `!` re-includes, the last match wins). The project's virtualenv stands in for the image's /opt/venv, and
the final stage's `ENV` lines are the environment. Any other image (alpine, python:alpine, debian...) is the
host's system folders, read-only, with Docker's default PATH. The images Argo's examples rely on for their own
entrypoint or binaries get stand-ins from workflows/runner/tools/: argoproj/argosay (entrypoint `/argosay`, and
`cowsay` on PATH as its base image has) and docker/whalesay (`cowsay`). Server images get the host's program
from its Debian package as their entrypoint, set up as the image sets it up: `nginx` (nginx:1.13's `nginx -g
'daemon off;'`, package nginx-light, with tools/nginx/nginx.conf over the host's: the image's site on port 80,
logs to stdout/stderr, its pid and temporary files in the pod's /tmp) and `influxdb` (`influxd`, package influxdb,
its data under the pod's /tmp). Where the host lacks the program the pod fails "cannot start PROGRAM".
`curlimages/curl` is an alpine image whose `sh` is busybox's ash (`>& FILE` redirects both streams, a syntax
error in dash): the host's busybox (package busybox), where installed, stands in for the host's /bin/sh there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pathspec

from registry.errors import WorkflowError
from steps.core.images import STEPS_IMAGE

__all__ = [
    "DEFAULT_PATH",
    "GAMES",
    "PROJECT",
    "SITE",
    "TOOLS",
    "ImageRoot",
    "build_steps_image",
    "entrypoint",
    "is_steps_image",
    "plain_image",
    "tool_image",
]

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's, for an image without ENV
SITE = "/opt/llmrelease"  # where the steps image's own packages are importable from (PYTHONPATH)
_DOCKERFILE = Path("images/steps/Dockerfile")
TOOLS = Path(__file__).resolve().parent / "tools"  # stand-ins for the binaries of the images below
GAMES = "/usr/games"  # where Debian's cowsay lives; on PATH in the images that have it
_TOOL_IMAGES = {"argoproj/argosay": ("/argosay",), "docker/whalesay": ("cowsay",)}  # repository -> entrypoint


@dataclass(frozen=True)
class _Packaged:
    """A server image stood in for by the host's program from a Debian package (see the module's docstring)."""

    entrypoint: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()  # (file under TOOLS, path in the pod), bound where the host has it
    env: Mapping[str, str] = field(default_factory=dict)


_INFLUX_DIRS = {"META_DIR": "meta", "DATA_DIR": "data", "DATA_WAL_DIR": "wal"}  # influxd reads INFLUXDB_<SECTION>_<KEY>
_BUSYBOX_SH = frozenset({"curlimages/curl"})  # alpine images whose /bin/sh matters: busybox's ash, not dash
_PACKAGED = {
    "nginx": _Packaged(("nginx", "-g", "daemon off;"), (("nginx/nginx.conf", "/etc/nginx/nginx.conf"),)),
    "influxdb": _Packaged(
        ("influxd",),
        env={
            "INFLUXDB_REPORTING_DISABLED": "true",
            **{f"INFLUXDB_{k}": f"/tmp/influxdb/{v}" for k, v in _INFLUX_DIRS.items()},
        },
    ),
}


@dataclass(frozen=True)
class ImageRoot:
    """What a pod of one image sees on top of the host's read-only system folders.

    Attributes:
        image: The image reference of the template.
        binds: (host path, container path) pairs, mounted read-only in this order.
        workdir: The image's WORKDIR (the pod's cwd unless the template sets `workingDir`).
        env: The image's environment (its ENV lines).
        python: What `python`/`python3` runs when the image has no interpreter of its own ("" = its PATH's).
    """

    image: str
    binds: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH, "HOME": "/root"})
    python: str = ""


def is_steps_image(image: str) -> bool:
    """Whether `image` is the project's steps image (any tag or digest of its repository)."""
    repository = STEPS_IMAGE.rsplit(":", 1)[0]
    return image.split("@", 1)[0].rsplit(":", 1)[0] == repository if image else False


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    tail = name.rsplit("/", 1)[-1]
    name = name.rsplit(":", 1)[0] if ":" in tail else name
    return name.removeprefix("docker.io/").removeprefix("quay.io/").removeprefix("library/")


def tool_image(image: str) -> bool:
    """Whether `image` is one whose binaries (argosay, cowsay) the runner stands in for from TOOLS."""
    return _repository(image) in _TOOL_IMAGES


def entrypoint(image: str) -> list[str]:
    """The image's ENTRYPOINT as the pod sees it, for a container without `command`; [] when unknown."""
    repository = _repository(image)
    packaged = _PACKAGED.get(repository)
    return list(packaged.entrypoint if packaged else _TOOL_IMAGES.get(repository, ()))


def plain_image(image: str) -> ImageRoot:
    """Any image but the steps image: the host's system folders; `python` is the host's base interpreter."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    packaged = _PACKAGED.get(_repository(image))
    if packaged:
        files = tuple((str(TOOLS / f), target) for f, target in packaged.files if os.path.exists(target))
        return ImageRoot(image, files, env={"PATH": DEFAULT_PATH, "HOME": "/root", **packaged.env}, python=base)
    busybox = shutil.which("busybox")
    if _repository(image) in _BUSYBOX_SH and busybox:
        return ImageRoot(image, ((busybox, os.path.realpath("/bin/sh")),), python=base)  # over /bin/sh's target
    if not tool_image(image):
        return ImageRoot(image, python=base)
    binds = ((str(TOOLS), GAMES), *((str(TOOLS / e.lstrip("/")), e) for e in entrypoint(image) if e[0] == "/"))
    env = {"PATH": f"{DEFAULT_PATH}:{GAMES}", "HOME": "/root"}
    return ImageRoot(image, binds, env=env, python=base)


def build_steps_image(image: str, into: Path) -> ImageRoot:
    """Lay out the steps image's files under `into` (app/ and site/) and return how to mount them.

    Raises:
        WorkflowError: The Dockerfile cannot be read or copies a path the checkout lacks.
    """
    dockerfile = PROJECT / _DOCKERFILE
    try:
        stages = _stages(dockerfile.read_text(encoding="utf-8"))
    except OSError as e:
        raise WorkflowError(f"{dockerfile}: cannot read it ({e.strerror}); the steps image is built from it") from e
    ignored = _dockerignore(PROJECT / ".dockerignore")
    app, site = into / "app", into / "site"
    for directory in (app, site):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    workdir, env = "/", {"PATH": DEFAULT_PATH}  # the final stage's, once the loop is done
    for index, stage in enumerate(stages):
        final = index == len(stages) - 1
        workdir, env = "/", {"PATH": DEFAULT_PATH}
        for keyword, rest in stage:
            if keyword == "WORKDIR":
                workdir = str(PurePosixPath(workdir) / _expand(rest.strip(), env))
            elif keyword == "ENV":
                env.update(_env_line(rest, env))
            elif keyword == "COPY" and final:
                _copy_into_app(rest, workdir, app, ignored, dockerfile)
            elif keyword == "COPY":
                _copy_packages(rest, site, ignored)
    if workdir != "/app":
        raise WorkflowError(f"{dockerfile}: the final stage's WORKDIR is {workdir}, the local runner expects /app")
    _byte_compile(site)
    venv = Path(sys.prefix)
    binds = [(str(venv), str(venv)), (str(venv), "/opt/venv"), (str(app), workdir), (str(site), SITE)]
    env["PYTHONPATH"] = SITE + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
    return ImageRoot(image, tuple(binds), workdir, env)


def _byte_compile(site: Path) -> None:
    """Byte-compile the image's packages, as `pip install` in the build stage does.

    A pod (read-only packages, PYTHONDONTWRITEBYTECODE) then loads them instead of compiling every module at every
    start; tracebacks name the paths the pod sees (/opt/llmrelease/...).
    """
    import compileall

    compileall.compile_dir(site, ddir=SITE, quiet=2, workers=0)


def _stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, rest) grouped by stage; continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def _words(rest: str) -> list[str]:
    if rest.startswith("["):
        return [str(w) for w in json.loads(rest)]
    return shlex.split(rest)


def _copy_sources(rest: str) -> tuple[list[str], str] | None:
    """(sources, destination) of a COPY line; None for `COPY --from=...` (it copies from another stage)."""
    words = _words(rest)
    if any(w.startswith("--from") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    return words[:-1], words[-1]


def _copy_into_app(rest: str, workdir: str, app: Path, ignored: pathspec.PathSpec, dockerfile: Path) -> None:
    parsed = _copy_sources(rest)
    if parsed is None:
        return
    sources, dest = parsed
    target = PurePosixPath(workdir) / dest
    if not str(target).startswith("/app"):
        return  # only what lands under WORKDIR is rebuilt; the rest of the image is the host's system folders
    host_target = app / target.relative_to("/app")
    for source in sources:
        origin = PROJECT / source
        if not origin.exists():
            raise WorkflowError(f"{dockerfile}: COPY {source} names a path the checkout lacks; fix the Dockerfile")
        if origin.is_dir():
            _copy_tree(origin, host_target, ignored)
        elif not ignored.match_file(source):
            place = host_target / origin.name if dest.endswith("/") or len(sources) > 1 else host_target
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, place)


def _copy_packages(rest: str, site: Path, ignored: pathspec.PathSpec) -> None:
    """A build stage's COPY of a Python package (a folder with __init__.py) becomes importable from site/."""
    parsed = _copy_sources(rest)
    for source in parsed[0] if parsed else []:
        origin = PROJECT / source
        if origin.is_dir() and (origin / "__init__.py").is_file():
            _copy_tree(origin, site / origin.name, ignored)


def _copy_tree(origin: Path, target: Path, ignored: pathspec.PathSpec) -> None:
    for path in _files(origin):
        relative = path.relative_to(PROJECT).as_posix()
        if ignored.match_file(relative):
            continue
        place = target / path.relative_to(origin)
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, place)


def _files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield from (Path(root) / f for f in files)


def _dockerignore(path: Path) -> pathspec.PathSpec:
    """`.dockerignore` as a path spec with Docker's semantics: every pattern is relative to the context root."""
    lines: list[str] = []
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = (line[1:] if negated else line).strip().lstrip("/")
        lines.append(("!" if negated else "") + (body if body.startswith("**") else "/" + body))
    return pathspec.PathSpec.from_lines("gitignore", lines)


def _env_line(rest: str, env: Mapping[str, str]) -> dict[str, str]:
    """`ENV K=V K2="v 2"` (or the legacy `ENV K V`), with $VAR / ${VAR} expanded from the environment so far."""
    words = shlex.split(rest, posix=False)
    if words and "=" not in words[0]:
        return {words[0]: _expand(rest.partition(" ")[2].strip(), env)}
    found: dict[str, str] = {}
    for word in words:
        name, _, value = word.partition("=")
        found[name] = _expand(value.strip('"').strip("'"), {**env, **found})
    return found


def _expand(text: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), text)
