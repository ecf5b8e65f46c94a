"""The canary step: shift traffic to the candidate step by step, analysing each step against the champion.

For each weight of the spec's rollout steps (default 1 -> 5 -> 25 -> 50 -> 100; a canary never gets 0), the
router is set to champion 100-w / candidate w and an analysis run (see `steps.rollout.analysis`) takes measurements. A
measurement sends probe requests *through the router* (as users do: the `X-Served-By` header says which version
answered, and the observed split is logged) plus a few straight to each version, so that the canary has enough
samples to be judged even at 1%. Failed or Error aborts: the canary weight goes to 0 and all traffic back on the
champion (`steps.rollout.operations.abort`), the version is tagged, and the step fails with the analysis log.
Inconclusive pauses at the current weight until a human runs `llmrelease canary resume|abort NAME`, or
`pause_timeout_s` passes (then it aborts); it aborts at once when the champion's server process is gone.

On the local plane a heartbeat guards the canary (`steps.rollout.serving.guard`): the step renews it at every
analysis tick (each probe, each slice of the wait between measurements, each poll of a pause) and hands over to
the promote step with a longer deadline; when the step stops (killed, its runner killed, or failing), a detached
watchdog puts all traffic back on the champion within the deadline (LLMRELEASE_CANARY_HEARTBEAT_S, default 30 s).

Where the environment's policy sets `plane: kubernetes`, Argo Rollouts runs the steps and the analysis instead and
the step follows the Rollout to Healthy, Degraded or an Inconclusive pause (`steps.rollout.cluster_release`).

The whole log is written to `canary-log.json` (the release report and the evidence bundle read it).
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import httpx
from hera.workflows import Artifact, NoneArchiveStrategy, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.tags import CANARY_DECISION_TAG
from steps.core.artifacts import CANARY_LOG_OUT
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE
from steps.release.source import SPEC_IN
from steps.rollout.analysis import AnalysisPolicy, PrometheusCheck, Sample, query_prometheus, run_analysis
from steps.rollout.routing.base import canary_split
from steps.rollout.serving.base import ServingPlane, server_name
from steps.rollout.serving.cluster import RolloutPlane
from steps.rollout.serving.factory import release_plane
from steps.rollout.serving.guard import HANDOFF_FACTOR, CanaryGuard, GuardedPlane, GuardTripped, deadline_s

__all__ = [
    "CanaryParams",
    "CanaryResult",
    "Inputs",
    "Outputs",
    "Probe",
    "canary_step",
    "describe",
    "policy_from_spec",
    "run",
]

LOG_NAME = "canary-log.json"
_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


class Probe:
    """Sends probe chat completions (non-streaming, a few tokens) and records who served them and how fast.

    Two kinds per round: `router_probes` requests through the router, 4 at a time, as users send them (they
    show the live split and any errors users would see), and `direct` pairs sent one at a time, alternating
    canary and champion, straight to each version's server: a controlled comparison of latency that is not
    skewed by which side happened to get more of the concurrent router traffic.
    """

    def __init__(
        self,
        model: str,
        router_url: str,
        direct: dict[str, str],
        *,
        router_probes: int,
        timeout: float,
        tick: Callable[[], None] = lambda: None,
    ):
        """Probe `router_url` `router_probes` times, and each version in `direct` (name -> base URL) a few times.

        `tick` is called after every probe (the canary renews its heartbeat there).
        """
        self.model = model
        self.router_url = router_url
        self.direct = direct
        self.router_probes = router_probes
        self.timeout = timeout
        self.tick = tick

    async def _one(self, client: httpx.AsyncClient, base_url: str, side: str | None) -> Sample:
        started = time.perf_counter()
        try:
            response = await client.post(
                base_url.rstrip("/") + "/chat/completions",
                json={"model": self.model, "messages": _PROMPT, "max_tokens": 4},
            )
            ok = response.status_code == 200
            served_by = side or response.headers.get("x-served-by", "unknown")
        except httpx.HTTPError:
            ok, served_by = False, side or "unknown"
        self.tick()
        return Sample(
            served_by=served_by,
            latency_ms=(time.perf_counter() - started) * 1000,
            ok=ok,
            via="direct" if side else "router",
        )

    async def _all(self) -> list[Sample]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            semaphore = asyncio.Semaphore(4)

            async def bounded() -> Sample:
                async with semaphore:
                    return await self._one(client, self.router_url, None)

            samples = list(await asyncio.gather(*(bounded() for _ in range(self.router_probes))))
            for _ in range(max(3, self.router_probes // 3)):
                for name, url in self.direct.items():
                    samples.append(await self._one(client, url, name))
            return samples

    def samples(self) -> list[Sample]:
        """One round of probes."""
        return asyncio.run(self._all())


def policy_from_spec(analysis: Any) -> AnalysisPolicy:
    """The analysis policy of the spec's rollout.analysis."""
    prom = analysis.prometheus
    return AnalysisPolicy(
        interval_s=analysis.interval_s,
        count=analysis.count,
        failure_limit=analysis.failure_limit,
        inconclusive_limit=analysis.inconclusive_limit,
        max_error_rate=analysis.max_error_rate,
        max_p95_ratio=analysis.max_p95_ratio,
        p95_slack_ms=analysis.p95_slack_ms,
        min_samples=analysis.min_samples,
        prometheus=PrometheusCheck(url=prom.url, query=prom.query, max_value=prom.max_value) if prom else None,
    )


def _measure(probe: Probe, policy: AnalysisPolicy, canary: str, champion: str | None) -> Any:
    def measure() -> tuple[list[Sample], list[Sample], float | None]:
        samples = probe.samples()
        prom = query_prometheus(policy.prometheus, canary) if policy.prometheus else None
        return (
            [s for s in samples if s.served_by == canary],
            [s for s in samples if champion is not None and s.served_by == champion],
            prom,
        )

    return measure


def _wait_for_human(
    registry: Any, model: str, workflow_uid: str, timeout_s: float, tick: Callable[[], None]
) -> tuple[str, str]:
    """Poll the decision tag a `llmrelease canary resume|abort` writes; (action, actor), abort on timeout."""
    deadline = time.monotonic() + timeout_s
    print(
        f"canary: Inconclusive: paused; resume with `llmrelease canary resume {model} --actor <you>` "
        f"or abort with `llmrelease canary abort {model} --actor <you>`",
        flush=True,
    )
    while time.monotonic() < deadline:
        raw = registry.model_tags(model).get(CANARY_DECISION_TAG)
        if raw:
            decision = json.loads(raw)
            if decision.get("workflow_uid") in (workflow_uid, "*"):
                registry.delete_model_tag(model, CANARY_DECISION_TAG)
                return str(decision["action"]), str(decision.get("actor", ""))
        tick()
        time.sleep(1.0)
    return "abort", f"pause timeout ({timeout_s:g}s)"


def _pause(inputs: "Inputs", registry: Any, plane: ServingPlane, step: dict[str, Any], tick: Callable[[], None]) -> str:
    """Inconclusive: wait for a human's resume|abort (recorded in `step`); abort at once when the champion died.

    A champion whose server is gone (asked through the plane: a pid means nothing in the pod's namespace) leaves
    nothing to judge the canary against, and its share of the users' requests fails while the canary waits: the
    abort restarts it and puts all traffic back on it.
    """
    model = inputs.spec.model.name
    state = plane.state(model)
    champion = state.servers.get(state.champion or "")
    if champion is not None and not plane.is_ready(state, champion):
        action, actor = "abort", f"the champion's server (version {champion.version}) is gone: nothing to compare with"
    else:
        timeout_s = inputs.spec.rollout.analysis.pause_timeout_s
        action, actor = _wait_for_human(registry, model, inputs.workflow_uid, timeout_s, tick)
    step["decision"] = {"action": action, "actor": actor, "at": datetime.now(UTC).isoformat()}
    return action


class Inputs(BaseModel):
    """What the canary step needs: the release spec (its model, rollout steps and analysis), the workflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: Any
    """The `ReleaseSpec`, with the environment's policy floors applied."""
    workflow_uid: str
    work_dir: Path


class Outputs(BaseModel):
    """How the canary ended, and its log (also written to `<work_dir>/canary-log.json`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Literal["completed", "aborted"]
    log_path: Path
    log: dict[str, Any]

    @property
    def abort_reason(self) -> str:
        """Why the canary aborted ("" when it completed)."""
        return str(self.log.get("abort_reason") or "")


def _start_guard(plane: ServingPlane, model: str, workflow_uid: str, candidate: str) -> CanaryGuard | None:
    """Start the plane's heartbeat guard for this canary; None on a plane without one (Argo Rollouts guards there)."""
    if not isinstance(plane, GuardedPlane):
        return None
    guard = plane.canary_guard(model, workflow_uid, candidate, deadline_s())
    guard.start()
    return guard


def _renewing(sleep: Any, tick: Callable[[], None], slice_s: float) -> Any:
    """`sleep` in slices of at most `slice_s` seconds, renewing the heartbeat before and after each."""

    def nap(seconds: float) -> None:
        remaining = seconds
        while remaining > 0:
            tick()
            step = min(remaining, slice_s)
            sleep(step)
            remaining -= step
        tick()

    return nap


def _ticking(measure: Any, tick: Callable[[], None]) -> Any:
    def measured() -> Any:
        tick()
        return measure()

    return measured


def run(inputs: Inputs, registry: Any, plane: "ServingPlane | RolloutPlane", *, sleep: Any = time.sleep) -> Outputs:
    """Run (on the cluster: follow) the canary; returns the log, written to work_dir/canary-log.json."""
    from steps.rollout.operations import abort, require_lease

    if isinstance(plane, RolloutPlane):
        from steps.rollout.cluster_release import canary

        followed = canary(registry, plane, spec=inputs.spec, workflow_uid=inputs.workflow_uid, sleep=sleep)
        return Outputs(outcome=followed["outcome"], log_path=_write(followed, inputs.work_dir), log=followed)
    spec, workflow_uid = inputs.spec, inputs.workflow_uid
    model = spec.model.name
    lease = require_lease(registry, model, workflow_uid)
    guard = _start_guard(plane, model, workflow_uid, lease.candidate)
    log: dict[str, Any] = {
        "model_name": model,
        "candidate": lease.candidate,
        "champion": plane.state(model).champion,
        "router": "haproxy",
        "outcome": "completed",
        "steps": [],
        "aborted_at": None,
        "abort_reason": None,
    }
    try:
        _steps(inputs, registry, plane, log, guard=guard, sleep=sleep)
        if guard is not None and log["outcome"] == "completed":
            guard.renew(factor=HANDOFF_FACTOR)  # the promote step takes over from here
    except GuardTripped as e:  # the watchdog already moved all traffic back: record it, release what is left
        abort(registry, plane, model=model, workflow_uid=workflow_uid, reason=str(e))
        log.update(outcome="aborted", aborted_at=datetime.now(UTC).isoformat(), abort_reason=str(e))
    except BaseException as e:
        if guard is not None:
            guard.lapse(f"the canary step failed: {type(e).__name__}: {e}")
        raise
    path = _write(log, inputs.work_dir)
    return Outputs(outcome=log["outcome"], log_path=path, log=log)


def _steps(
    inputs: Inputs, registry: Any, plane: ServingPlane, log: dict[str, Any], *, guard: CanaryGuard | None, sleep: Any
) -> None:
    """Shift traffic step by step, analysing each; abort on Failed/Error (recorded in `log`)."""
    from steps.rollout.operations import abort, require_lease

    spec, workflow_uid, model = inputs.spec, inputs.workflow_uid, inputs.spec.model.name
    tick: Callable[[], None] = guard.renew if guard is not None else lambda: None
    state = plane.state(model)
    candidate = log["candidate"]
    canary, champion = server_name(candidate), server_name(state.champion) if state.champion else None
    direct = {canary: state.servers[candidate].base_url}
    if champion is not None and state.champion is not None:
        direct[champion] = state.servers[state.champion].base_url
    policy = policy_from_spec(spec.rollout.analysis)
    probes = spec.rollout.analysis.probes
    probe = Probe(model, plane.router_url(state), direct, router_probes=probes, timeout=10.0, tick=tick)
    nap = _renewing(sleep, tick, deadline_s() / 3) if guard is not None else sleep
    for weight in spec.rollout.steps:
        require_lease(registry, model, workflow_uid)  # a manual rollback or abort stops us here
        with plane.locked(model) as current:
            tick()  # under the plane lock: a tripped guard (traffic already back on the champion) stops us here
            weights = canary_split(weight, stable=champion, canary=canary) if champion else {canary: 100}
            plane.router(current).set_weights({k: v for k, v in weights.items() if k})
        step: dict[str, Any] = {"weight": weight, "started_at": datetime.now(UTC).isoformat()}
        phase, measurements = run_analysis(_ticking(_measure(probe, policy, canary, champion), tick), policy, sleep=nap)
        step.update(phase=phase, measurements=[m.model_dump() for m in measurements])
        log["steps"].append(step)
        print(f"canary: {weight:3d}% {phase}: {measurements[-1].reasons[0] if measurements else ''}", flush=True)
        if phase == "Inconclusive":
            if _pause(inputs, registry, plane, step, tick) == "resume":
                continue
            phase = "Failed"
        if phase in ("Failed", "Error"):
            reasons = "; ".join(r for m in measurements if m.phase in ("Failed", "Error") for r in m.reasons)
            reason = f"analysis {phase} at {weight}%: {reasons or 'decided by ' + str(step.get('decision'))}"
            abort(registry, plane, model=model, workflow_uid=workflow_uid, reason=reason)
            log.update(outcome="aborted", aborted_at=datetime.now(UTC).isoformat(), abort_reason=reason)
            return


def describe(outputs: Outputs) -> str:
    """The one human line: the steps and their phases, or where and why the canary aborted."""
    if outputs.outcome == "aborted":
        return f"canary: aborted, all traffic back on the champion: {outputs.abort_reason}"
    steps = " -> ".join(f"{s['weight']}% {s['phase']}" for s in outputs.log.get("steps", []))
    return f"canary: completed ({steps}); log {outputs.log_path}"


def _write(log: dict[str, Any], work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOG_NAME
    path.write_text(json.dumps(log, indent=2))
    return path


class CanaryParams(StepParams):
    """Argo input parameters of the canary template."""

    step: ClassVar[str] = "canary"

    release: str
    workflow_uid: str
    work_dir: Path
    environment: str = ""


class CanaryResult(Output):
    """Argo outputs: the outcome (the log file is the `canary-log` artifact, saved even when the step fails)."""

    outcome: Annotated[Literal["completed", "aborted"], Parameter(name="outcome")]


def _run_here(params: CanaryParams) -> Outputs:
    """`run` on the release spec (with the environment's floors), this environment's registry and plane."""
    from registry.facade import ModelRegistry
    from registry.settings import llmrelease_home
    from steps.release.policy import apply_environment
    from steps.release.spec import load_spec

    spec = apply_environment(load_spec(params.release), params.environment)
    plane = release_plane(params.environment, llmrelease_home())
    inputs = Inputs(spec=spec, workflow_uid=params.workflow_uid, work_dir=params.work_dir)
    return run(inputs, ModelRegistry.from_env(), plane)


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="canary",
    inputs=[Artifact(name="spec", path=SPEC_IN)],  # the validated spec from onboard; `release` names it
    outputs=[
        Artifact(
            name="canary-log",
            path=CANARY_LOG_OUT,
            global_name="canary-log",
            archive=NoneArchiveStrategy(),
            optional=True,
        )
    ],
)
def canary_step(params: CanaryParams) -> CanaryResult:
    """Hera entry: run the canary; exit 1 with the abort reason when it aborts (the log is saved either way)."""
    outputs = run_step("canary", lambda: _run_here(params))
    if outputs.outcome == "aborted":
        print(describe(outputs), file=sys.stderr)
        raise SystemExit(1)
    print(describe(outputs))
    return CanaryResult(outcome=outputs.outcome)
