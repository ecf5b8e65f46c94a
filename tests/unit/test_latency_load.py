"""The latency load a release must hold and its capacity search: spec and policy fields, precedence, bad values,
the step's inputs, and the search's bracketing and time bound (on a simulated endpoint and clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import SpecError
from steps.latency import LatencyParams, inputs_from_params
from steps.release.policy import apply_environment, load_policy
from steps.release.spec import load_spec
from steps.release.traffic import DEFAULT_LOAD, LatencyLoad, load_fields, merge, synthetic_prompt
from steps.rollout.capacity import Probe, search_capacity
from tests.unit.test_spec import REPO, refused, with_change, write


def _policy(tmp_path: Path, latency: dict[str, Any]) -> Path:
    raw = yaml.safe_load((REPO / "policy" / "platform-policy.yaml").read_text())
    raw["environments"]["dev"]["latency"] = latency
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_spec_load_wins_field_by_field_over_the_environment_default(tmp_path: Path) -> None:
    """GIVEN a spec setting concurrency 3 and warmup 0, and a dev policy default of rate 8, 3 s, 64 output tokens
    WHEN the spec is applied in dev
    THEN concurrency and warmup come from the spec (rate dropped with the mode), duration and output tokens from
    the policy, the rest from the built-in defaults; without an environment only the spec and the defaults count.
    """
    spec = load_spec(write(tmp_path, with_change("gates", {"latency": {"load": {"concurrency": 3, "warmup": 0}}})))
    policy = load_policy(_policy(tmp_path, {"load": {"rate": 8, "duration_s": 3, "output_tokens": 64}}))
    load = apply_environment(spec, "dev", policy).gates.latency.load
    assert (load.concurrency, load.rate, load.warmup, load.duration_s, load.output_tokens) == (3, None, 0, 3.0, 64)
    fields = load_fields(load, ["q1", "q2"])
    assert fields["mode"] == "concurrency" and fields["concurrency"] == 3 and "rate" not in fields
    assert fields["prompts"] == ["q1", "q2"] and fields["max_tokens"] == 64 and fields["requests"] is None
    bare = load_fields(apply_environment(spec, "", policy).gates.latency.load, [])
    assert bare["duration_s"] == DEFAULT_LOAD.duration_s and bare["max_tokens"] == DEFAULT_LOAD.output_tokens


def test_a_spec_rate_replaces_a_policy_concurrency_and_synthetic_prompts_have_the_asked_length() -> None:
    """GIVEN a policy default in concurrency mode and a spec rate with synthetic prompts of 50 tokens
    WHEN merged THEN the mode is the spec's rate, and each prompt is 50 words, distinct per request."""
    load = merge(LatencyLoad(rate=2.5, prompts="synthetic", prompt_tokens=50), LatencyLoad(concurrency=8))
    fields = load_fields(load, ["ignored"])
    assert fields["mode"] == "constant" and fields["rate"] == 2.5 and "concurrency" not in fields
    assert all(len(p.split()) == 50 for p in fields["prompts"]) and len(set(fields["prompts"])) > 1
    assert synthetic_prompt(5, 1) == synthetic_prompt(5, 1) != synthetic_prompt(5, 2)


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        ({"rate": 0}, "gates.latency.load.rate: input should be greater than 0"),
        ({"rate": 2, "concurrency": 2}, "gates.latency.load: set rate or concurrency, not both"),
        ({"duration_s": "long"}, "gates.latency.load.duration_s: input should be a valid number"),
        ({"arrival": "bursty"}, "gates.latency.load.arrival: input should be 'constant' or 'poisson'"),
        ({"prompts": "file"}, "expected suite (the first eval suite's prompts"),
        ({"rps": 2}, "gates.latency.load.rps: unknown field (allowed here: rate, concurrency, arrival"),
    ],
)
def test_bad_load_values_are_one_line_naming_the_field(tmp_path: Path, load: dict[str, Any], expected: str) -> None:
    """GIVEN a spec with a bad gates.latency.load WHEN loaded THEN one line names the field and what is expected."""
    assert expected in refused(tmp_path, with_change("gates", {"latency": {"load": load}}))


def test_bad_capacity_values_and_bad_policy_defaults_are_refused_naming_the_field(tmp_path: Path) -> None:
    """GIVEN a capacity precision of 1.5 in a spec, and a policy default with a negative duration
    WHEN loaded THEN each is one line naming its field."""
    message = refused(tmp_path, with_change("gates", {"latency": {"capacity": {"precision": 1.5}}}))
    assert message.startswith("gates.latency.capacity.precision: input should be less than 1")
    with pytest.raises(SpecError) as info:
        load_policy(_policy(tmp_path, {"load": {"duration_s": -1}}))
    assert "environments.dev.latency.load.duration_s: Input should be greater than 0" in str(info.value)
    assert "\n" not in str(info.value)


def test_the_step_takes_its_load_from_the_release_and_refuses_a_load_parameter(tmp_path: Path) -> None:
    """GIVEN releases/demo.yaml in dev (no load in the spec: the dev policy default)
    WHEN the latency step's inputs are made, then again with the parameter rate=3
    THEN the load is the policy's (rate 8 for 3 s, the golden-qa prompts in turn) with a capacity search of 5 s;
    the parameter is refused in one line naming it and gates.latency.load.
    """
    base = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "work_dir": tmp_path, "release": "releases/demo.yaml"}
    inputs = inputs_from_params(LatencyParams.model_validate({**base, "environment": "dev"}))
    policy = load_policy().environment("dev").latency
    assert (inputs.load.mode, inputs.load.rate, inputs.load.duration_s) == ("constant", policy.load.rate, 3.0)
    assert inputs.load.requests is None and len(inputs.load.prompts) > 10
    assert inputs.capacity is not None and inputs.capacity.enabled and inputs.capacity.max_time_s == 5
    with pytest.raises(SpecError) as info:
        inputs_from_params(LatencyParams.model_validate({**base, "environment": "dev", "rate": 3}))
    assert str(info.value).startswith("parameter rate=3.0: the release spec decides the load")
    assert "gates.latency.load" in str(info.value)


class _Endpoint:
    """A simulated endpoint holding its SLO up to `capacity` req/s; each probe advances a fake clock."""

    def __init__(self, capacity: float, probe_s: float = 5.0) -> None:
        self.capacity, self.probe_s, self.now, self.rates = capacity, probe_s, 0.0, list[float]()

    def measure(self, rate: float, left_s: float) -> Probe | None:
        self.rates.append(rate)
        if left_s < self.probe_s:
            self.now += left_s
            return None
        self.now += self.probe_s
        holds = rate <= self.capacity
        return Probe(rate, holds, 100.0 if holds else 5000.0, 0.0, min(rate, self.capacity), 0.0, 10, self.probe_s)


def test_the_search_brackets_then_bisects_to_the_precision_within_its_budget() -> None:
    """GIVEN an endpoint that holds up to 13 req/s WHEN searched from 4 req/s (held) with 10% precision
    THEN it doubles to 16 (missed), bisects, and reports a capacity within 10% below 13, the probes by rate."""
    ep = _Endpoint(13.0)
    cap = search_capacity(
        ep.measure, start=4, start_holds=True, max_time_s=300, min_probe_s=5, max_rate=1000, precision=0.1,
        clock=lambda: ep.now,
    )  # fmt: skip
    assert ep.rates[:3] == [8, 16, 12] and cap.capacity_req_per_s is not None
    assert 13 / 1.1 <= cap.capacity_req_per_s <= 13 and cap.stopped.startswith("bracketed within 10%")
    assert [p.rate for p in cap.table()] == sorted(ep.rates)


def test_a_load_above_capacity_searches_down_and_the_budget_bounds_the_search() -> None:
    """GIVEN an endpoint holding up to 3 req/s and a required 20 req/s (missed)
    WHEN searched with a 300 s budget, then with 12 s (two 5-s probes)
    THEN the first halves to 2.5 (held) and bisects up to ~3; the second stops after two probes, in budget."""
    ep = _Endpoint(3.0)
    cap = search_capacity(
        ep.measure, start=20, start_holds=False, max_time_s=300, min_probe_s=5, max_rate=1000, precision=0.1,
        clock=lambda: ep.now,
    )  # fmt: skip
    assert ep.rates[:3] == [10, 5, 2.5] and cap.capacity_req_per_s is not None
    assert 2.5 <= cap.capacity_req_per_s <= 3.0
    short = _Endpoint(3.0)
    cut = search_capacity(
        short.measure, start=20, start_holds=False, max_time_s=12, min_probe_s=5, max_rate=1000, precision=0.1,
        clock=lambda: short.now,
    )  # fmt: skip
    assert cut.capacity_req_per_s is None and len(cut.probes) == 2 and cut.elapsed_s <= 12
    assert cut.stopped == "time budget of 12 s spent"


def test_a_hold_under_a_lagging_client_counts_at_the_rate_the_client_offered() -> None:
    """GIVEN a required load that missed at 40 req/s and a load client that can send only 17 req/s
    WHEN the search halves to 20 req/s and the SLO holds there at the 17 req/s actually sent
    THEN the search stops (the client is the bottleneck) with the capacity the SLO held at, 17 req/s, and says so."""

    def measure(rate: float, left_s: float) -> Probe:
        return Probe(
            rate, True, 300.0, 0.0, 17.0, 17.0, 85, 5.0, reason="event loop behind schedule", client_bound=True
        )

    cap = search_capacity(
        measure, start=40, start_holds=False, max_time_s=60, min_probe_s=5, max_rate=1000, precision=0.1,
        clock=iter(range(0, 1000, 5)).__next__,
    )  # fmt: skip
    assert cap.capacity_req_per_s == 17.0 and len(cap.probes) == 1
    assert cap.stopped == (
        "the load client was the bottleneck at 20 req/s (event loop behind schedule); the SLO held at the 17 req/s "
        "it offered"
    )
