"""What a Ray eval worker needs to build its engine itself: `EngineSpec` and the weights it fetches (`WeightsRef`).

The driver (the batch-eval step's pod) hands a worker no path of its own: for a registered weights model the spec
is `auto` with a `WeightsRef` (the version's source URI, digest, MLflow tracking URI and onboarding run id). On
the worker, `EngineSpec.on_worker` downloads the weights from that URI (the digest-addressed weights store, so the
node needs the store's endpoint and credentials: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...) into that node's
model cache (`download_weights`: digest-keyed, manifest-verified), and picks the engine there: vLLM when the
worker holds a GPU and vllm is importable, else transformers on cuda (a GPU, no vllm) or cpu. The worker reports
what it chose, and the results record it (`GenerationSettings.backend` and `.device`).

A node's model cache: `$LLMRELEASE_WORKER_CACHE`, else `$LLMRELEASE_HOME`, else `~/.cache/llmrelease` (the
environment of the worker's node, e.g. the RayCluster's worker pods). The one exception is a local Ray (no
RAY_ADDRESS): its workers are processes of this machine, so the driver passes its own LLMRELEASE_HOME
(`WeightsRef.cache`) and the step and its workers share one cache.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steps.evals.engines.base import GENERATE, LOGLIKELIHOOD, Engine
from steps.evals.engines.factory import make_engine

__all__ = ["EngineSpec", "WeightsRef", "local_engine_kind", "worker_home"]


@dataclass(frozen=True)
class WeightsRef:
    """A registered version's weights as a worker fetches them (picklable, no driver-local path).

    Attributes:
        source: The version's source URI: its weights store location (s3://bucket/weights/sha256/<hex>, or
            file://... on one machine), or an MLflow artifact URI for versions registered before the store.
        digest: The version's `llmrelease.digest`: the manifest must hash to it, the files must match it.
        tracking_uri: The MLflow tracking URI the onboarding run (and its manifest) is read from.
        run_id: The onboarding run that logged the weights manifest (read only for versions from before the store).
        cache: The LLMRELEASE_HOME whose model cache to use; empty: the worker node's own (`worker_home`).
    """

    source: str
    digest: str
    tracking_uri: str
    run_id: str
    cache: str = ""

    def fetch(self) -> Path:
        """Download (once per node) and verify the weights; the local folder on this node.

        Raises:
            EvalError: The download or the manifest failed.
            IntegrityError: A file differs from the manifest.
        """
        from steps.evals.weights import download_weights

        home = Path(self.cache) if self.cache else worker_home()
        return download_weights(self.source, self.digest, home, self.tracking_uri, self.run_id)


def worker_home(environ: dict[str, str] | None = None) -> Path:
    """This node's cache root: LLMRELEASE_WORKER_CACHE, else LLMRELEASE_HOME, else ~/.cache/llmrelease."""
    env = os.environ if environ is None else environ
    chosen = env.get("LLMRELEASE_WORKER_CACHE") or env.get("LLMRELEASE_HOME")
    return Path(chosen) if chosen else Path.home() / ".cache" / "llmrelease"


def local_engine_kind(use_gpu: bool) -> tuple[str, str]:
    """(engine kind, device) on this machine: vllm on a GPU when vllm is importable, else transformers on cuda/cpu.

    Args:
        use_gpu: Whether this worker was given a GPU (num_gpus > 0); without one it runs on cpu even where a
            GPU is visible (the GPU is not reserved for it).
    """
    if not use_gpu:
        return "transformers", "cpu"
    import torch

    if torch.cuda.is_available():
        return ("vllm" if importlib.util.find_spec("vllm") else "transformers"), "cuda"
    return "transformers", "cpu"


@dataclass(frozen=True)
class EngineSpec:
    """How a worker builds its engine (picklable: the engine itself is built inside the worker).

    Attributes:
        kind: transformers, vllm, http, or auto (a registered weights model: chosen on the worker).
        options: Keyword arguments of the engine's constructor (model_dir, device, batch_size / base_url, model);
            for auto, `weights` (a `WeightsRef`) instead of model_dir.
    """

    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, kind: str, **options: Any) -> EngineSpec:
        """An engine spec from keyword options."""
        return cls(kind, tuple(sorted(options.items())))

    @property
    def weights(self) -> WeightsRef | None:
        """The weights the worker fetches itself (auto specs), else None."""
        found = dict(self.options).get("weights")
        return found if isinstance(found, WeightsRef) else None

    @property
    def capabilities(self) -> frozenset[str]:
        """What the engine will be able to do, known without building it."""
        if self.kind == "http" and not dict(self.options).get("logprobs", False):
            return frozenset({GENERATE})
        return frozenset({GENERATE, LOGLIKELIHOOD})

    @property
    def name(self) -> str:
        """The backend name, for messages."""
        return "transformers/vllm" if self.kind == "auto" else self.kind

    def on_worker(self, use_gpu: bool) -> tuple[EngineSpec, str]:
        """The concrete spec for this node, and its device: the kind chosen here, the weights fetched here.

        Args:
            use_gpu: Whether this worker holds a GPU (its actor asked for num_gpus > 0).

        Raises:
            EvalError: The weights cannot be fetched.
            IntegrityError: The fetched weights differ from the registered manifest.
        """
        options = dict(self.options)
        if self.kind == "http":
            return self, "remote"
        if self.kind != "auto":
            return self, str(options.get("device", "cuda" if self.kind == "vllm" else "cpu"))
        kind, device = local_engine_kind(use_gpu)
        weights = options.pop("weights")
        options["model_dir"] = str(weights.fetch())
        if kind == "transformers":
            options["device"] = device
        return replace(self, kind=kind, options=tuple(sorted(options.items()))), device

    def build(self, num_threads: int | None = None) -> Engine:
        """Build the engine (a concrete kind); transformers engines get `num_threads` torch threads."""
        options = dict(self.options)
        if self.kind == "transformers" and num_threads is not None:
            options["num_threads"] = num_threads
        return make_engine(self.kind, **options)  # type: ignore[arg-type]
