"""The cluster serving plane: drive a model's Argo Rollouts `Rollout` (deploy, follow, promote, abort, retry, undo).

Argo Rollouts' controller moves the traffic (through the Gateway API plugin on the model's HTTPRoute) and runs the
analysis; this class only writes what `kubectl argo rollouts` writes and reads what it reads:

- deploy: create the model's objects (`rollouts.render_rollout`), or replace the Rollout's spec and its
  AnalysisTemplate's when they exist (a new pod template starts a canary). Services and the HTTPRoute are created
  once and never patched: the controller owns their selectors and weights.
- follow: read the Rollout until it settles: `Healthy` (the new version is stable), `Degraded` (aborted: analysis
  Failed or Error, a progress deadline, a manual abort; all traffic is on stable), or `Paused` on an Inconclusive
  analysis (a human promotes or aborts). The AnalysisRuns' measurements come back with the outcome.
- promote / abort / retry: the status patches of `kubectl argo rollouts promote|abort|retry` (status subresource).
- undo: put the previous version's pod template back (the version recorded in the `llmrelease.io/serving-previous`
  annotation, rendered again); within `rollbackWindow` and `scaleDownDelaySeconds` that is a traffic switch.

All calls go through the official client's `CustomObjectsApi` and `CoreV1Api` (Protocols below).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from steps.rollout.serving.base import ServingError
from steps.rollout.serving.cluster_api import ClusterObjects, CoreApi, CustomObjectsApi
from steps.rollout.serving.kubernetes import render_vllm
from steps.rollout.serving.rollouts import (
    SERVING_ANNOTATION,
    STAGED_STEP,
    RolloutOptions,
    ServedVersion,
    render_rollout,
)

__all__ = ["PREVIOUS_ANNOTATION", "Measurement", "Outcome", "RolloutPlane", "RolloutStatus"]

PREVIOUS_ANNOTATION = "llmrelease.io/serving-previous"
GROUP, VERSION = "argoproj.io", "v1alpha1"
_INCONCLUSIVE = "InconclusiveAnalysis"
_PAUSE_STEP = "CanaryPauseStep"
Settled = Literal["Healthy", "Degraded", "Paused"]


@dataclass(frozen=True)
class Measurement:
    """One AnalysisRun measurement, flattened for the step log and the evidence."""

    run: str
    metric: str
    phase: str
    value: str | None
    started_at: str | None
    finished_at: str | None
    message: str | None = None


@dataclass(frozen=True)
class RolloutStatus:
    """What `kubectl argo rollouts get` shows of a Rollout."""

    name: str
    phase: str
    message: str
    step: int | None
    steps: int
    canary_weight: int
    aborted: bool
    paused_for: list[str]
    version: str | None
    stable_hash: str | None
    current_hash: str | None
    observed: bool

    @property
    def settled(self) -> Settled | None:
        """Healthy / Degraded / Paused (on Inconclusive) once the controller saw the latest spec; else None."""
        if not self.observed:
            return None
        if self.phase == "Healthy" and self.current_hash == self.stable_hash:
            return "Healthy"
        if self.phase == "Degraded" or self.aborted:
            return "Degraded"
        if self.phase == "Paused" and _INCONCLUSIVE in self.paused_for:
            return "Paused"
        return None

    @property
    def staged(self) -> bool:
        """The candidate's pods run at weight 0, paused at the staging step (`rollouts.STAGE_STEPS`)."""
        return self.observed and self.step == STAGED_STEP and _PAUSE_STEP in self.paused_for and not self.aborted


@dataclass(frozen=True)
class Outcome:
    """How a followed Rollout settled, with every AnalysisRun measurement taken on the way."""

    settled: Settled
    status: RolloutStatus
    measurements: list[Measurement] = field(default_factory=list)
    run_errors: list[str] = field(default_factory=list)


class RolloutPlane:
    """One namespace's Rollouts: apply a model's objects, follow, promote, abort, retry, undo."""

    def __init__(
        self,
        custom: CustomObjectsApi,
        core: CoreApi,
        options: RolloutOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind the plane to the two clients (`kubernetes.client.CustomObjectsApi`, `CoreV1Api` or stand-ins)."""
        self.options = options or RolloutOptions()
        self._objects = ClusterObjects(custom, core, self.options.namespace)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_cluster(cls, options: RolloutOptions | None = None) -> RolloutPlane:
        """In-cluster service account, else the local kubeconfig.

        Raises:
            ServingError: the `kubernetes` package is missing or no configuration can be loaded.
        """
        from steps.core.kube import kube_client

        client = kube_client(ServingError, "Argo Rollouts")
        return cls(client.CustomObjectsApi(), client.CoreV1Api(), options)

    # --- writing -------------------------------------------------------------------------------------------------
    def deploy(self, model: str, served: ServedVersion, rollout: Any) -> list[str]:
        """Create or update the model's objects so that the Rollout serves `served`; return what was done.

        The controller then runs the canary steps (nothing to do on the first deploy: it becomes stable at once).
        """
        docs = render_rollout(model, served, rollout, self.options)
        live = self._objects.get_rollout(model)
        done: list[str] = []
        for doc in docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            if kind == "Rollout":
                done.append(self._apply_rollout(doc, live))
            elif kind == "AnalysisTemplate":
                done.append(self._objects.upsert_custom("analysistemplates", doc))
            else:
                done.append(self._objects.create_once(kind, doc))
            done[-1] = f"{kind} {self.options.namespace}/{name}: {done[-1]}"
        return done

    def _apply_rollout(self, doc: dict[str, Any], live: dict[str, Any] | None) -> str:
        if live is None:
            return self._objects.create_custom("rollouts", doc)
        # The controller's own annotations (rollout.argoproj.io/revision, ...) stay; ours are set over them.
        live_annotations = dict(live.get("metadata", {}).get("annotations") or {})
        annotations = {**live_annotations, **(doc["metadata"].get("annotations") or {})}
        current = live_annotations.get(SERVING_ANNOTATION)
        if current and current != annotations[SERVING_ANNOTATION]:
            annotations[PREVIOUS_ANNOTATION] = current
        # A JSON patch replaces the spec whole (a merge patch would keep keys the new render dropped); the test op
        # makes a concurrent writer's change a 409 instead of being overwritten.
        ops: list[dict[str, Any]] = []
        if rv := live.get("metadata", {}).get("resourceVersion"):
            ops.append({"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        ops += [
            {"op": "replace", "path": "/spec", "value": doc["spec"]},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]
        self._objects.patch_custom("rollouts", doc["metadata"]["name"], ops)
        return "replaced"

    def promote(self, model: str, *, full: bool = False) -> str:
        """`kubectl argo rollouts promote [--full]`: go on past a pause (or the current step), or to the end."""
        live = self._require(model)
        spec, status = live.get("spec", {}), live.get("status", {})
        if full:
            if status.get("currentPodHash") == status.get("stableRS"):
                return f"Rollout {self._where(model)}: nothing to promote (the current version is stable)"
            self._objects.patch_status(model, {"status": {"promoteFull": True}})
            return f"Rollout {self._where(model)}: fully promoted"
        if spec.get("paused"):
            self._objects.patch_custom("rollouts", model, {"spec": {"paused": False}})
        if status.get("pauseConditions"):
            self._objects.patch_status(model, {"status": {"pauseConditions": None}})
        elif "currentStepIndex" in status:
            steps = len(spec.get("strategy", {}).get("canary", {}).get("steps") or [])
            index = min(int(status["currentStepIndex"]) + 1, steps)
            self._objects.patch_status(model, {"status": {"pauseConditions": None, "currentStepIndex": index}})
        return f"Rollout {self._where(model)}: promoted"

    def abort(self, model: str) -> str:
        """`kubectl argo rollouts abort`: stop the canary, all traffic back on the stable version."""
        self._require(model)
        self._objects.patch_status(model, {"status": {"abort": True}})
        return f"Rollout {self._where(model)}: aborted; all traffic goes back to stable"

    def retry(self, model: str) -> str:
        """`kubectl argo rollouts retry`: start an aborted canary again from its first step."""
        live = self._require(model)
        if not live.get("status", {}).get("abort"):
            raise ServingError(f"Rollout {self._where(model)} is not aborted: nothing to retry (see `rollout get`)")
        self._objects.patch_status(model, {"status": {"abort": False}})
        return f"Rollout {self._where(model)}: retrying"

    def undo(self, model: str) -> str:
        """`kubectl argo rollouts undo`: the previous version's pod template back in the Rollout, nothing else.

        Within `rollbackWindow` and `scaleDownDelaySeconds` (keep_previous_hot_s) its pods still run, so the
        controller skips the steps: a traffic switch, not a cold start.
        """
        live = self._require(model)
        annotations = dict(live.get("metadata", {}).get("annotations") or {})
        previous = annotations.get(PREVIOUS_ANNOTATION)
        if not previous:
            raise ServingError(
                f"Rollout {self._where(model)} has no previous version ({PREVIOUS_ANNOTATION} unset): nothing to undo"
            )
        served = ServedVersion.from_json(previous, f"Rollout {self._where(model)}")
        pods = render_vllm(
            model,
            served.version,
            served.model_uri,
            image=served.image,
            namespace=self.options.namespace,
            gpus=served.gpus,
            max_model_len=served.max_model_len,
            served_prompt=served.prompt,
        )
        template = next(doc for doc in pods if doc["kind"] == "Deployment")["spec"]["template"]
        annotations[PREVIOUS_ANNOTATION] = annotations.get(SERVING_ANNOTATION, "")
        annotations[SERVING_ANNOTATION] = previous
        ops: list[dict[str, Any]] = []
        if rv := live.get("metadata", {}).get("resourceVersion"):
            ops.append({"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        ops += [
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]
        self._objects.patch_custom("rollouts", model, ops)
        return f"Rollout {self._where(model)}: undo to version {served.version}"

    # --- reading -------------------------------------------------------------------------------------------------
    def status(self, model: str) -> RolloutStatus:
        """The Rollout's phase, step, weight, pause reasons and version.

        Raises:
            ServingError: there is no such Rollout, or the API refused.
        """
        return rollout_status(self._require(model))

    def previous(self, model: str) -> ServedVersion | None:
        """The version `undo` would serve again (the `llmrelease.io/serving-previous` annotation), or None."""
        annotations = self._require(model).get("metadata", {}).get("annotations") or {}
        raw = annotations.get(PREVIOUS_ANNOTATION)
        return ServedVersion.from_json(raw, f"Rollout {self._where(model)}") if raw else None

    def measurements(self, model: str) -> tuple[list[Measurement], list[str]]:
        """Every measurement of the Rollout's AnalysisRuns, and the runs that ended in Error (with their message)."""
        runs = self._objects.list_custom("analysisruns")
        measured: list[Measurement] = []
        errors: list[str] = []
        for run in runs:
            owners = run.get("metadata", {}).get("ownerReferences") or []
            if not any(o.get("kind") == "Rollout" and o.get("name") == model for o in owners):
                continue
            name, status = run["metadata"]["name"], run.get("status") or {}
            if status.get("phase") == "Error":
                errors.append(f"AnalysisRun {name}: Error: {status.get('message') or 'no message'}")
            for result in status.get("metricResults") or []:
                measured += [_measurement(name, result, m) for m in result.get("measurements") or []]
        return measured, errors

    def follow(
        self, model: str, *, timeout_s: float, poll_s: float = 5.0, echo: Callable[[str], None] | None = None
    ) -> Outcome:
        """Read the Rollout every `poll_s` until it settles; `echo` gets a line at every change.

        Raises:
            ServingError: the Rollout did not settle within `timeout_s` (naming its phase and step), or it vanished.
        """
        deadline = self._clock() + timeout_s
        last = ""
        while True:
            status = self.status(model)
            line = describe(status)
            if echo is not None and line != last:
                echo(line)
            last = line
            if (settled := status.settled) is not None:
                measured, errors = self.measurements(model)
                return Outcome(settled, status, measured, errors)
            if self._clock() >= deadline:
                raise ServingError(
                    f"Rollout {self._where(model)} did not settle within {timeout_s:g}s ({line}): "
                    f"watch it with `llmrelease rollout get {model} --watch`, or abort it"
                )
            self._sleep(poll_s)

    def wait_staged(
        self, model: str, *, timeout_s: float, poll_s: float = 5.0, echo: Callable[[str], None] | None = None
    ) -> RolloutStatus:
        """Read the Rollout until the candidate is staged (weight 0, paused), or Healthy (a first deploy: stable).

        Raises:
            ServingError: the Rollout went Degraded (its message), or was neither within `timeout_s`.
        """
        deadline = self._clock() + timeout_s
        last = ""
        while True:
            status = self.status(model)
            if echo is not None and (line := describe(status)) != last:
                echo(line)
                last = line
            if status.staged or status.settled == "Healthy":
                return status
            if status.settled == "Degraded":
                raise ServingError(
                    f"Rollout {self._where(model)} went Degraded while starting the candidate: {describe(status)}"
                )
            if self._clock() >= deadline:
                raise ServingError(
                    f"Rollout {self._where(model)}: the candidate's pods did not start within {timeout_s:g}s "
                    f"({describe(status)}): see `llmrelease rollout get {model} --watch` and the pods' events"
                )
            self._sleep(poll_s)

    def _require(self, model: str) -> dict[str, Any]:
        live = self._objects.get_rollout(model)
        if live is None:
            raise ServingError(f"Rollout {self._where(model)} does not exist: deploy a version of {model} first")
        return live

    def _where(self, model: str) -> str:
        return f"{self.options.namespace}/{model}"


def rollout_status(live: dict[str, Any]) -> RolloutStatus:
    """Read a Rollout object (as the API returns it) into a `RolloutStatus`."""
    meta, spec, status = live.get("metadata", {}), live.get("spec", {}), live.get("status") or {}
    steps = spec.get("strategy", {}).get("canary", {}).get("steps") or []
    served = (meta.get("annotations") or {}).get(SERVING_ANNOTATION)
    version = ServedVersion.from_json(served, f"Rollout {meta.get('name')}").version if served else None
    weights = (status.get("canary") or {}).get("weights") or {}
    observed = str(status.get("observedGeneration", "")) == str(meta.get("generation", ""))
    return RolloutStatus(
        name=str(meta.get("name")),
        phase=str(status.get("phase") or "Progressing"),
        message=str(status.get("message") or ""),
        step=int(status["currentStepIndex"]) if "currentStepIndex" in status else None,
        steps=len(steps),
        canary_weight=int((weights.get("canary") or {}).get("weight", 0)),
        aborted=bool(status.get("abort")),
        paused_for=[str(c.get("reason")) for c in status.get("pauseConditions") or []],
        version=version,
        stable_hash=status.get("stableRS"),
        current_hash=status.get("currentPodHash"),
        observed=observed and bool(status),
    )


def describe(status: RolloutStatus) -> str:
    """One line: phase, step, canary weight, pause reasons, version, message."""
    step = f"step {status.step}/{status.steps}" if status.step is not None else f"{status.steps} steps"
    parts = [status.phase, step, f"canary weight {status.canary_weight}%", f"version {status.version}"]
    if status.aborted:
        parts.append("aborted")
    if status.paused_for:
        parts.append(f"paused for {', '.join(status.paused_for)}")
    if status.message:
        parts.append(status.message)
    return "; ".join(parts)


def _measurement(run: str, result: dict[str, Any], measurement: dict[str, Any]) -> Measurement:
    return Measurement(
        run=run,
        metric=str(result.get("name")),
        phase=str(measurement.get("phase")),
        value=measurement.get("value"),
        started_at=measurement.get("startedAt"),
        finished_at=measurement.get("finishedAt"),
        message=measurement.get("message"),
    )
