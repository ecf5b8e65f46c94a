"""Pod isolation with bubblewrap: `llmrelease run --isolation bwrap` runs each pod the way a cluster would.

Each pod gets its own mount, pid, ipc and uts namespaces (hostname = pod name) and dies with the runner
(`--die-with-parent`: a runner killed mid-pod leaves no pod process). Its root `/` is bubblewrap's in-memory tmpfs
(writable like a container's top layer, gone with the pod) holding fresh /dev and /proc, the host's system folders
read-only (they stand in for the image's OS), the checkout hidden under an empty tmpfs, the image's own files (see
`workflows.runner.images`), and node-private folders of this machine (`<node dir>/pod/...`) bound where the
template declares paths: /tmp (private to the pod), the folder of each declared input artifact and output, and
Argo's /argo/staging for a script. No path is rewritten; outputs are read back from those folders, which are
deleted afterwards, so a write anywhere else leaves nothing on the host. A declared path directly under `/` is
bound as a file (a placeholder still untouched afterwards was not written). The network is the host's (pods reach
the local MLflow, router and S3 endpoints as a cluster's pods reach services).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from registry.errors import WorkflowError
from workflows.runner.images import PROJECT, ImageRoot, build_steps_image, is_steps_image, plain_image
from workflows.runner.volumes import Mount

__all__ = ["ISOLATIONS", "STAGED_SCRIPT", "Sandbox", "bwrap_problem", "sandbox_for"]

ISOLATIONS = ("none", "bwrap")
STAGED_SCRIPT = "/argo/staging/script"  # where Argo's executor writes a script template's source
_NOT_SHARED = frozenset({"tmp", "dev", "proc", "run", "mnt", "media", "lost+found"})
_FIX = "install it with `apt-get install bubblewrap` (Debian/Ubuntu) or run with --isolation none"


def bwrap_problem() -> str | None:
    """None when bubblewrap can sandbox a process here; otherwise one line saying why and how to fix it."""
    exe = shutil.which("bwrap")
    if exe is None:
        return f"--isolation bwrap: bubblewrap (bwrap) is not installed; {_FIX}"
    try:
        done = subprocess.run(
            [exe, "--bind", "/", "/", "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"--isolation bwrap: {exe} cannot start ({e}); {_FIX}"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return (
            f"--isolation bwrap: {exe} cannot create namespaces here ({why}); run as root or enable "
            f"unprivileged user namespaces, or {_FIX.split(' or ')[-1]}"
        )
    return None


class Sandbox:
    """The isolation of one run: builds each image root once (under `images_dir`) and wraps pod commands."""

    def __init__(self, images_dir: Path) -> None:
        """Prepare a sandbox whose image roots are cached under `images_dir` (the run's folder)."""
        self.images_dir = images_dir
        self.bwrap = shutil.which("bwrap") or "bwrap"
        self._roots: dict[str, ImageRoot] = {}
        self._lock = threading.Lock()
        self._host = sorted(os.scandir("/"), key=lambda e: e.name)

    def image(self, name: str) -> ImageRoot:
        """The root of image `name`, built on first use and reused by every later pod of this run."""
        with self._lock:
            if name not in self._roots:
                slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "image"
                built = build_steps_image(name, self.images_dir / slug) if is_steps_image(name) else plain_image(name)
                self._roots[name] = built
            return self._roots[name]

    @staticmethod
    def missing(program: str, image: ImageRoot, path: str) -> bool:
        """Whether a bare command name is on none of the pod's `path` folders, as the image's files lie here.

        The container runtime looks the command up before the container starts (runc's "executable file not found
        in $PATH", a StartError); bubblewrap would only fail at its exec, after it has started, which races with a
        main container that ends first. A name with a slash is left to the exec.
        """
        if not program or "/" in program:
            return False
        here = [_on_host(folder, image) for folder in path.split(":") if folder]
        return shutil.which(program, path=os.pathsep.join(here)) is None

    @staticmethod
    def prepare(pod: Path) -> None:
        """A fresh folder for the pod's files on this machine, with a world-writable /tmp, as a container starts."""
        shutil.rmtree(pod, ignore_errors=True)
        (pod / "tmp").mkdir(parents=True)
        (pod / "tmp").chmod(0o1777)

    @staticmethod
    def settle(pod: Path) -> None:
        """Remove the placeholders of declared root-level paths the pod did not write (still at mtime 0)."""
        for entry in os.scandir(pod):
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime == 0:
                os.unlink(entry.path)

    def wrap(
        self,
        argv: Sequence[str],
        image: ImageRoot,
        pod: Path,
        workdir: str,
        hostname: str,
        declared: Sequence[str],
        mounts: Sequence[Mount] = (),
    ) -> list[str]:
        """The bwrap command line running `argv` as a pod of `image`, `declared` paths bound from `pod`.

        `mounts` (its volumes) are bound last, so a volume shows over a declared path's folder.
        """
        replaced = {PurePosixPath(target).parts[1] for _, target in image.binds if _is_replaced(target)}
        words = [self.bwrap]
        shared: set[str] = set()
        for entry in self._host:
            if entry.name in _NOT_SHARED or entry.name in replaced:
                continue
            if entry.is_symlink():
                words += ["--symlink", os.readlink(entry.path), f"/{entry.name}"]
            elif entry.is_dir():
                words += ["--ro-bind", entry.path, f"/{entry.name}"]
                shared.add(entry.name)
        words += ["--dev", "/dev", "--proc", "/proc", "--bind", str(pod / "tmp"), "/tmp"]
        if len(PROJECT.parts) > 1 and PROJECT.parts[1] in shared:
            words += ["--tmpfs", str(PROJECT)]
        for source, target in image.binds:
            words += ["--ro-bind", source, target]
        occupied = shared | {PurePosixPath(target).parts[1] for _, target in image.binds}
        words += _declared_mounts(pod, declared, occupied)
        for mount in mounts:
            words += ["--ro-bind" if mount.read_only else "--bind", mount.host, mount.path]
        words += [
            *(["--dir", workdir] if workdir != "/" else []),
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            hostname[:63],
            "--die-with-parent",
            "--chdir",
            workdir,
            "--",
            *argv,
        ]
        return words


def _declared_mounts(pod: Path, declared: Sequence[str], occupied: set[str]) -> list[str]:
    """Binds putting each declared path (outside /tmp) in `pod` on this machine: a folder, or itself at the root.

    The folder is the path's top-level one when neither the host nor the image has it (so /mnt/out is not there
    until the pod makes it, as in a container), else its parent. Only the outermost of nested folders is bound. A
    root-level path that is not there yet (an output) is bound as an empty placeholder file at mtime 0, which
    `Sandbox.settle` removes if the pod never wrote it.
    """
    words: list[str] = []
    bound = ["/tmp"]
    for path in sorted({posixpath.normpath(p) for p in declared}, key=len):
        parent, top = posixpath.dirname(path), PurePosixPath(path).parts[1]
        target = path if parent == "/" else parent if top in occupied else f"/{top}"
        if any(target == b or target.startswith(b + "/") for b in bound):
            continue
        host = pod / target.lstrip("/")
        if target == path and not host.exists():
            host.touch()
            os.utime(host, (0, 0))
        elif target != path:
            host.mkdir(parents=True, exist_ok=True)
        words += ["--bind", str(host), target]
        bound.append(target)
    return words


def _on_host(folder: str, image: ImageRoot) -> str:
    """Where a pod's `folder` lies on this machine: under the image bind that covers it, else the host's own."""
    for source, target in reversed(image.binds):
        if folder == target or folder.startswith(target + "/"):
            return source + folder[len(target) :]
    return folder


def _is_replaced(target: str) -> bool:
    """An image folder the host lacks (e.g. /opt/venv) replaces the host's top-level folder it is in (/opt)."""
    return not os.path.lexists(target)


def sandbox_for(isolation: str, run_dir: Path) -> Sandbox | None:
    """The run's bubblewrap sandbox for `--isolation bwrap`, None for `none`; refused where bwrap cannot run."""
    if isolation not in ISOLATIONS:
        raise WorkflowError(f"--isolation {isolation}: not one of {', '.join(ISOLATIONS)}")
    if isolation == "none":
        return None
    problem = bwrap_problem()
    if problem:
        raise WorkflowError(problem)
    return Sandbox(run_dir / "images")
