"""The persisted shards of one eval run key (model digest + suite hash + generation settings), and who runs which.

A `ShardLedger` keeps, in an `EvalStore` (`s3://$LLMRELEASE_S3_BUCKET/evals/shards/<run key>`, else
`<work_dir>/eval-shards/<run key>`):

* `shard-<k>.jsonl`: shard k's results, one `ExampleResult` per line, written once: first writer wins, and a
  writer that loses uses the stored rows, so every example has exactly one row however many attempts overlap;
* `claim-<k>.json`: who is running shard k now (`{"owner", "at"}`): taken with a first-writer-wins create,
  renewed every third of the claim's time to live by a heartbeat thread of its driver (`keep_alive`: also while
  the driver starts Ray or waits for a restarting worker), deleted when the shard is stored (a driver killed
  between the two leaves its claim beside a stored shard: ignored, as a stored shard is never claimed again).
  A claim not renewed within its time to live (its pod died) is taken over. Two drivers of one run key (a
  retried pod and its predecessor, or the batch-eval and safety pods on one suite) thus split the shards
  instead of computing each twice;
* `engine.json`: the engine the workers chose (backend, device), for a run that finds every shard done.

Claim times are the claimants' wall clocks: the nodes' clocks are assumed synchronised (NTP) to well within the
time to live (`ShardOptions.claim_ttl_s`, LLMRELEASE_EVAL_CLAIM_TTL_S in the batch-eval step; 30 s by default).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import ValidationError

from steps.evals.results import ExampleResult
from steps.evals.store import EvalStore

__all__ = ["SHARDS_LABEL", "ShardLedger", "new_owner"]

SHARDS_LABEL = "eval shards"
_ENGINE = "engine.json"


def new_owner() -> str:
    """A claimant id unique to this driver: host (the pod's name), pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ShardLedger:
    """Shard results, claims and the engine record of one run key; see the module docs.

    Args:
        store: The run key's store.
        ttl_s: A claim not renewed for this long is taken over.
        owner: This driver's claimant id (default `new_owner()`).
    """

    def __init__(self, store: EvalStore, ttl_s: float = 30.0, owner: str | None = None) -> None:
        self.store, self.ttl_s, self.owner = store, ttl_s, owner or new_owner()
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def finished(self, k: int, ids: Sequence[str]) -> list[ExampleResult] | None:
        """Shard k's stored results if they hold exactly `ids` in order, else None (missing or stale)."""
        text = self.store.read(f"shard-{k}.jsonl")
        if text is None:
            return None
        try:
            results = [ExampleResult.model_validate_json(line) for line in text.splitlines() if line.strip()]
        except (ValidationError, ValueError):
            return None
        return results if [r.id for r in results] == list(ids) else None

    def record(self, k: int, ids: Sequence[str], results: list[ExampleResult]) -> list[ExampleResult]:
        """Store shard k's results unless a valid copy is there; the stored rows (the first writer's); unclaim."""
        text = "\n".join(r.model_dump_json() for r in results) + "\n"
        name = f"shard-{k}.jsonl"
        if not self.store.create(name, text):
            stored = self.finished(k, ids)
            if stored is not None:
                results = stored
            else:
                self.store.write(name, text)
        self.release(k)
        return results

    def claim(self, k: int) -> bool:
        """Take shard k for this driver: free, already ours, or its claim went stale; False while another holds it."""
        with self._lock:
            taken = self._take(k)
            if taken:
                self._held.add(k)
            return taken

    def claimable(self, k: int) -> bool:
        """Whether `claim(k)` would take shard k now (no claim, ours, or stale); takes nothing."""
        held = _parse_claim(self.store.read(f"claim-{k}.json"))
        return held is None or held[0] == self.owner or time.time() - held[1] > self.ttl_s

    def _take(self, k: int) -> bool:
        name, body = f"claim-{k}.json", self._claim_body()
        if self.store.create(name, body):
            return True
        found = self.store.read_tagged(name)
        if found is None:
            return self.store.create(name, body)
        owner, at = _parse_claim(found[0]) or ("", 0.0)
        if owner != self.owner and time.time() - at <= self.ttl_s:
            return False
        return self.store.replace(name, body, found[1])  # of two drivers taking over a stale claim, one wins

    def renew(self) -> None:
        """Refresh the claims this driver still holds (at least every third of the time to live: `keep_alive`).

        A claim another driver took over meanwhile (this one was too slow to renew) is left to it.
        """
        with self._lock:
            for k in sorted(self._held):
                name = f"claim-{k}.json"
                found = self.store.read_tagged(name)
                held = _parse_claim(found[0]) if found else None
                if found is None or held is None or held[0] != self.owner:
                    self._held.discard(k)
                    continue
                self.store.replace(name, self._claim_body(), found[1])

    def release(self, k: int) -> None:
        """Drop this driver's claim on shard k."""
        with self._lock:
            self._held.discard(k)
            self.store.delete(f"claim-{k}.json")

    def release_all(self) -> None:
        """Drop every claim this driver holds (it stops: failed or done)."""
        for k in sorted(self._held):
            self.release(k)

    @contextmanager
    def keep_alive(self) -> Iterator[None]:
        """Renew this driver's claims from a background thread every third of the time to live, while inside."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Exception:  # the driver's own next store call reports an outage
                    pass

        thread = threading.Thread(target=beat, name="shard-claims", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def record_engine(self, backend: str, device: str) -> None:
        """Keep the engine the workers chose."""
        self.store.write(_ENGINE, json.dumps({"backend": backend, "device": device}) + "\n")

    def engine(self) -> tuple[str, str]:
        """The (backend, device) a run's workers chose for this run key; ("", "") when unknown."""
        try:
            raw = json.loads(self.store.read(_ENGINE) or "")
            return str(raw["backend"]), str(raw["device"])
        except (ValueError, KeyError, TypeError):
            return "", ""

    def _claim_body(self) -> str:
        return json.dumps({"owner": self.owner, "at": time.time()})


def _parse_claim(text: str | None) -> tuple[str, float] | None:
    """(owner, time) of a claim object; None when it is gone; a garbled claim reads as long stale."""
    if text is None:
        return None
    try:
        raw = json.loads(text)
        return str(raw["owner"]), float(raw["at"])
    except (ValueError, KeyError, TypeError):
        return "", 0.0
