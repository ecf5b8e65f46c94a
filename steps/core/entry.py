"""The one contract of a step's Hera entry function: one line on stderr and the error's exit code, never a traceback.

Every step entry module (steps/<step>.py) has pydantic `Inputs` and `Outputs`, a `run(Inputs, <clients>) ->
Outputs`, a `describe(Outputs) -> str` and a Hera entry that only maps Argo parameters to `Inputs`, calls
`run_step(<step>, lambda: run(...))`, prints `describe(outputs)` and maps `Outputs` to its Hera `Output`:

    @script(constructor="runner", image=STEPS_IMAGE, name="register")
    def register_step(params: RegisterParams) -> RegisterResult:
        outputs = run_step("register", lambda: run(Inputs(...), ModelRegistry.from_env()))
        print(describe(outputs))
        return RegisterResult(...)

The Argo parameters are a `StepParams` (a Hera `Input`) with typed fields: Hera's runner `json.loads` each value
whose field is not a str and pydantic validates it; a value that does not validate is one line naming the
parameter, exit 2, before the step runs.

Input artifacts are annotated fields (`Annotated[Path, Artifact(name=..., path=...)]`); Hera's runner hands the
field the artifact's container path. The local runner (workflows/runner) gives each pod a private folder and maps
the container paths it finds in the script source and env into it, so a template declares `pod_env()` and the
step reads `in_pod(params.<artifact>)`: under Argo the two are the same path.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

from hera.workflows import Env, Input, Parameter
from pydantic import ModelWrapValidatorHandler, ValidationError, model_validator

from registry.errors import ReleaseError, SpecError
from steps.core.artifacts import ROOT

__all__ = [
    "DEBUG_ENV",
    "POD_ROOT_ENV",
    "PROFILE_ENV",
    "StepParams",
    "fail",
    "in_pod",
    "one_line",
    "parameter_error",
    "pod_env",
    "process_age_s",
    "run_step",
]

DEBUG_ENV = "LLMRELEASE_DEBUG"
"""Set to 1 to get the traceback of an unexpected exception instead of its one line."""
PROFILE_ENV = "LLMRELEASE_PROFILE"
"""Set to 1 to get the step's cProfile (the 25 slowest calls, cumulative) on stderr after its work."""
POD_ROOT_ENV = "LLMRELEASE_POD_ROOT"
"""Where the pod sees `steps.core.artifacts.ROOT` (ROOT itself under Argo; a private folder locally)."""

T = TypeVar("T")


def one_line(text: str, limit: int = 2000) -> str:
    """`text` with every run of whitespace (newlines included) as one space, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def fail(step: str, message: str, exit_code: int) -> NoReturn:
    """Print `<step>: <message>` as one line on stderr and exit with `exit_code`."""
    print(f"{step}: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") == "1"


def run_step(step: str, body: Callable[[], T], *, timed: bool = True) -> T:
    """Run a step's body: a `ReleaseError` or any other exception becomes one line on stderr and an exit.

    Args:
        step: The step's name, the prefix of the line (`deploy: ...`).
        body: The step's work, e.g. `lambda: run(inputs, registry)`.
        timed: Print `<step>: timing: start-up Xs, work Ys` on stderr when it succeeds (the process's start-up,
            imports included, and the body): False for a helper call of an entry that times its main call.

    In a pod's process (Hera's runner is `__main__`) the objects alive before and after the body are frozen
    (`gc.freeze`): no collection walks the imported modules again, the interpreter's exit included.

    Returns:
        What `body` returns.

    Raises:
        SystemExit: With the error's `exit_code` for a `ReleaseError` (`<step>: <message>`), with 1 for any other
            exception (`<step>: unexpected <Type>: <message>; report this bug`), which is re-raised as is
            instead when LLMRELEASE_DEBUG=1.
    """
    started = time.monotonic()
    pod = _is_pod_process()
    if pod:
        gc.freeze()  # what the imports made lives as long as the process: no collection in the work walks it again
    try:
        result = _profiled(step, body) if timed and os.environ.get(PROFILE_ENV, "") == "1" else body()
    except ReleaseError as e:
        fail(step, str(e), e.exit_code)
    except Exception as e:
        if _debug():
            raise
        fail(step, f"unexpected {type(e).__name__}: {e}; report this bug", 1)
    finally:
        if pod:
            # Nor the interpreter's exit: with torch, transformers and mlflow imported its last collections took
            # 0.5-1.4 s of every pod; frozen, 0.05-0.23 s (atexit handlers, threads and flushing run as before).
            gc.freeze()
    if timed:
        _timing(step, started)
    return result


def _is_pod_process() -> bool:
    """True in a pod's process (Hera's runner is `__main__`), which ends with its step; False in a test or a CLI."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "hera.workflows.runner"


def _profiled(step: str, body: Callable[[], T]) -> T:
    """`body` under cProfile; the 25 calls with the most cumulative time go to stderr (LLMRELEASE_PROFILE=1)."""
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    try:
        return profile.runcall(body)
    finally:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
        print(f"{step}: profile:\n{out.getvalue()}", file=sys.stderr, flush=True)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux's /proc; None elsewhere): the interpreter and imports so far."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks


def _timing(step: str, started: float) -> None:
    """One stderr line: how long the pod's process took to reach the step (start-up, imports) and the step itself."""
    age = process_age_s()
    work = time.monotonic() - started
    before = f"start-up {age - work:.2f}s, " if age is not None else ""
    print(f"{step}: timing: {before}work {work:.2f}s", file=sys.stderr, flush=True)


def parameter_error(step: str, error: ValidationError) -> SpecError:
    """The first invalid parameter of `error` as a `SpecError` naming it, its value and the fix."""
    first = error.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "parameters"
    value = f"={first['input']!r}" if "input" in first and first["type"] != "missing" else ""
    return SpecError(f"parameter {where}{value} is invalid ({first['msg']}); fix that parameter of the {step} step")


class StepParams(Input):
    """Base of a step's Argo input parameters (typed fields; set `step` to the template's name).

    A value that does not validate ends the process with one line (`<step>: parameter rate='abc' is invalid
    (...)`) and exit 2, as a `SpecError` would from `run_step`: Hera's runner validates the parameters before
    the entry function, hence before `run_step`, runs. LLMRELEASE_DEBUG=1 raises the ValidationError instead.
    """

    step: ClassVar[str] = "step"

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_on_bad_parameter(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        try:
            return handler(data)
        except ValidationError as e:
            if _debug():
                raise
            error = parameter_error(cls.step, e)
            fail(cls.step, str(error), error.exit_code)

    @classmethod
    def _get_parameters(cls, object_override: Any = None) -> list[Parameter]:
        """Hera's parameters, with the default `null` for an optional field whose Python default is None.

        Hera gives such a parameter no default, which would make it required; the runner `json.loads` `null`
        back to None. (The field must use its own name as the parameter's name.)
        """
        parameters: list[Parameter] = super()._get_parameters(object_override)
        nulls = {name for name, field in cls.model_fields.items() if field.default is None and not field.is_required()}
        for parameter in parameters:
            if parameter.name in nulls and parameter.default is None:
                parameter.default = "null"
        return parameters


def pod_env() -> list[Env]:
    """The env a template with input artifacts declares, so that `in_pod` finds them wherever the pod runs."""
    return [Env(name=POD_ROOT_ENV, value=ROOT)]


def in_pod(path: Path | str) -> Path:
    """`path` (a container path under ROOT, e.g. an input artifact's) as this process sees it ($LLMRELEASE_POD_ROOT)."""
    path = Path(path)
    root = os.environ.get(POD_ROOT_ENV, "")
    if not root or root == ROOT or not path.is_relative_to(ROOT):
        return path
    return Path(root) / path.relative_to(ROOT)
