"""What the Argo controller does around each step: retries on transient failures, deadlines and resource requests.

One table for every step template the pipelines use, applied after a pipeline is built (`apply_controls`), so a
platform engineer reads and tunes it in one place instead of in fourteen decorators:

- Retries: a step exits with `TRANSIENT_EXIT_CODE` (75, EX_TEMPFAIL) when MLflow, S3 or a provider stayed
  unreachable past the service deadline (registry/retry.py), and Argo retries it with backoff, as it does a pod that
  ended in Error (evicted, node lost). A decision (a failed gate, a failed latency check, a rejected version) exits
  0 or 1 and is never retried: retrying a decision could only change it by chance. The canary is not retried either:
  it moves live traffic, and the exit handler aborts a failed one.
- Deadlines: `activeDeadlineSeconds` per template, so a hung step fails (Argo's "Pod was active on the node longer
  than the specified deadline") instead of holding a model's rollout; each pipeline also has a workflow deadline.
- Requests: every step requests what it uses, so the scheduler places it and a ResourceQuota can count it. The eval
  driver is light: the model work runs on Ray workers, which request their own CPUs and GPUs.
- Configuration as Kubernetes gives it: every step `envFrom`s the ConfigMap `llmrelease-config` (MLflow, S3, Ray,
  Pushgateway addresses: infrastructure/base/config.yaml on a cluster, `llmrelease local up` on one machine); the
  Secrets a step needs come by `secretRef` to that step only: provider keys (`provider-api-keys`) where a provider
  model is called, S3 keys (`llmrelease-s3`, absent where IRSA gives them) and the Ray token (`llmrelease-ray`,
  local profile) where weights or Ray are used. All optional, so a cluster without one of them still runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hera.workflows import ConfigMapEnvFrom, Resources, RetryStrategy, Script, SecretEnvFrom
from hera.workflows.models import Backoff

from registry.errors import TRANSIENT_EXIT_CODE

__all__ = ["CONFIG_MAP", "CONTROLS", "TRANSIENT_RETRY", "Control", "apply_controls"]

TRANSIENT_RETRY = RetryStrategy(
    limit="3",
    retry_policy="Always",
    backoff=Backoff(duration="10s", factor="2", max_duration="5m"),
    expression=f"lastRetry.status == 'Error' || asInt(lastRetry.exitCode) == {TRANSIENT_EXIT_CODE}",
)


CONFIG_MAP = "llmrelease-config"
PROVIDER_KEYS = "provider-api-keys"
S3_KEYS = "llmrelease-s3"
RAY_TOKEN = "llmrelease-ray"


@dataclass(frozen=True)
class Control:
    """A step template's controls: requests, deadline, retry, and the Secrets it gets as env.

    Attributes:
        cpu: CPU request (Kubernetes quantity).
        memory: Memory request.
        deadline_s: The template's activeDeadlineSeconds.
        retry: Whether it carries the transient retry (never a step that moves live traffic).
        secrets: The Secrets it `envFrom`s, besides the ConfigMap every step gets.
    """

    cpu: str
    memory: str
    deadline_s: int
    retry: bool = True
    secrets: tuple[str, ...] = ()


MINUTE = 60
HOUR = 60 * MINUTE

EVAL_SECRETS = (PROVIDER_KEYS, S3_KEYS, RAY_TOKEN)

CONTROLS: dict[str, Control] = {
    "onboard": Control("500m", "1Gi", 30 * MINUTE, secrets=(PROVIDER_KEYS, S3_KEYS)),  # hashes weights; probes
    "register": Control("250m", "1Gi", 30 * MINUTE, secrets=(S3_KEYS,)),  # checks the manifest at the weights URI
    "batch-eval": Control("1", "4Gi", 2 * HOUR, secrets=EVAL_SECRETS),  # drives Ray: the workers run the model
    "nightly-eval": Control("1", "4Gi", 2 * HOUR, secrets=EVAL_SECRETS),
    "list-champions": Control("100m", "256Mi", 10 * MINUTE),
    "gate": Control("100m", "256Mi", 10 * MINUTE),
    "reject": Control("100m", "256Mi", 10 * MINUTE),
    "deploy": Control("250m", "512Mi", 30 * MINUTE, secrets=(S3_KEYS,)),  # waits for the candidate to serve
    "latency": Control("500m", "512Mi", 30 * MINUTE),  # the load generator
    "record-approval": Control("100m", "256Mi", 10 * MINUTE),
    "canary": Control("250m", "512Mi", 2 * HOUR, retry=False, secrets=(S3_KEYS,)),  # may restart the champion
    "promote": Control("100m", "256Mi", 10 * MINUTE, secrets=(S3_KEYS,)),
    "finalize": Control("250m", "512Mi", 30 * MINUTE),  # evidence bundle and report
    "rollback": Control("100m", "256Mi", 10 * MINUTE, secrets=(S3_KEYS,)),  # may start the previous version
}


def apply_controls(workflow: Any) -> Any:
    """Set requests, deadlines, the transient retry (where allowed) and the env sources on every step template.

    Raises:
        KeyError: A script template the table does not name (a new step must be given its controls).
    """
    for template in workflow.templates:
        if not isinstance(template, Script):
            continue
        control = CONTROLS[str(template.name)]
        template.resources = Resources(cpu_request=control.cpu, memory_request=control.memory)
        template.active_deadline_seconds = control.deadline_s
        template.retry_strategy = TRANSIENT_RETRY if control.retry else None
        template.env_from = [
            ConfigMapEnvFrom(name=CONFIG_MAP, optional=True),
            *(SecretEnvFrom(name=name, optional=True) for name in control.secrets),
        ]
    return workflow
