"""The HTML release report: one self-contained file per run, rendered from its evidence bundle.

Sections: the verdicts and the evidence digest; candidate vs champion per metric with the paired confidence
intervals and the gate's reasons (from the gate decision); TTFT and E2E latency distributions against the SLO
(per-request records where the latency report has them, else its percentiles); the capacity search (p95 E2E
against the offered rate, the highest rate at which the SLO held); cost against the ceiling; the
canary timeline (weight per step and every analysis measurement); the manifest. Plots are matplotlib figures
inlined as SVG: no JavaScript and nothing fetched from the network, so the file opens anywhere, offline.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "load_bundle",
    "render_report",
    "write_report",
    "plot_comparisons",
    "plot_latency",
    "plot_capacity",
    "plot_canary",
]

_TEMPLATES = Path(__file__).parent / "templates"
_PHASE_COLORS = {"Successful": "#2e7d32", "Failed": "#c62828", "Inconclusive": "#ef6c00", "Error": "#6d6d6d"}
_RC: Any = {
    "svg.hashsalt": "llmrelease",
    "svg.fonttype": "path",
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _svg(fig: Any) -> str:
    """The figure as an inline <svg> element (XML prolog and doctype dropped, no date metadata)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_comparisons(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """Forest plot of (candidate - champion) per suite/metric with its CI and the non-inferiority bound."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig, axes = _figure(7.5, 0.5 + 0.45 * max(len(comparisons), 1))
        ax = axes[0][0]
        for i, c in enumerate(comparisons):
            color = "#2e7d32" if c["verdict"] == "pass" else "#c62828"
            ax.errorbar(
                c["diff"],
                i,
                xerr=[[c["diff"] - c["ci_low"]], [c["ci_high"] - c["diff"]]],
                fmt="o",
                color=color,
                capsize=4,
            )
            bound = -c["margin"] if c["higher_is_better"] else c["margin"]
            ax.plot([bound], [i], marker="|", markersize=16, color="#555555")
        ax.axvline(0.0, color="#999999", linewidth=0.8)
        ax.set_yticks(range(len(comparisons)), [f"{c['suite']}/{c['metric']}" for c in comparisons])
        ax.set_ylim(-0.6, len(comparisons) - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel("candidate - champion, with CI (| = non-inferiority bound)")
        return _svg(fig)


def _ecdf(ax: Any, values: list[float], label: str, slo: float | None) -> None:
    import numpy as np

    xs = np.sort(np.asarray(values, dtype=float))
    ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color="#1565c0", label=f"{label} (n={len(xs)})")
    p95 = float(np.percentile(xs, 95))
    ax.axhline(0.95, color="#999999", linewidth=0.8, linestyle=":")
    ax.axvline(p95, color="#1565c0", linewidth=0.8, linestyle="--", label=f"p95 {p95:.0f} ms")
    if slo is not None:
        ax.axvline(slo, color="#c62828", linewidth=1.5, label=f"SLO p95 {slo:.0f} ms")
    ax.set_xlabel(f"{label} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.legend(loc="lower right", fontsize=7)


def _percentile_bars(ax: Any, dist: Mapping[str, Any], label: str, slo: float | None) -> None:
    keys = [k for k in ("p50", "p95", "p99", "max") if dist.get(k) is not None]
    ax.bar(keys, [dist[k] for k in keys], color="#1565c0")
    if slo is not None:
        ax.axhline(slo, color="#c62828", linewidth=1.5, label=f"SLO p95 {slo:.0f} ms")
        ax.legend(fontsize=7)
    ax.set_ylabel(f"{label} (ms)")


def plot_latency(latency: Mapping[str, Any]) -> str:
    """TTFT and E2E distributions (ECDFs of the per-request records, else percentile bars) against the SLO."""
    import matplotlib

    slo = (latency.get("slo") or {}).get("p95_e2e_ms")
    ok = [r for r in latency.get("records") or [] if not r.get("error")]
    with matplotlib.rc_context(_RC):
        fig, axes = _figure(7.5, 2.8, 1, 2)
        for ax, key, label, line in ((axes[0][0], "ttft_ms", "TTFT", None), (axes[0][1], "e2e_ms", "E2E", slo)):
            values = [float(r[key]) for r in ok if r.get(key) is not None]
            if values:
                _ecdf(ax, values, label, line)
            else:
                _percentile_bars(ax, (latency.get("metrics") or {}).get(key) or {}, label, line)
        return _svg(fig)


def plot_capacity(latency: Mapping[str, Any]) -> str:
    """p95 E2E against the offered rate: each probe of the capacity search, the SLO line and the capacity.

    Green points held the SLO, red ones did not; the blue line is the highest rate at which it held.
    """
    import matplotlib

    cap = latency.get("capacity") or {}
    slo = (latency.get("slo") or {}).get("p95_e2e_ms")
    probes = [p for p in cap.get("probes") or [] if p.get("p95_e2e_ms") is not None]
    with matplotlib.rc_context(_RC):
        fig, axes = _figure(7.5, 2.6)
        ax = axes[0][0]
        for held, color, label in ((True, "#2e7d32", "SLO held"), (False, "#c62828", "SLO missed")):
            pts = [(p["rate"], p["p95_e2e_ms"]) for p in probes if bool(p.get("holds")) is held]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=color, label=label, zorder=3)
        if probes:
            ax.plot([p["rate"] for p in probes], [p["p95_e2e_ms"] for p in probes], color="#999999", linewidth=0.8)
        if slo is not None:
            ax.axhline(slo, color="#c62828", linewidth=1.2, linestyle="--", label=f"SLO p95 {slo:.0f} ms")
        if cap.get("capacity_req_per_s") is not None:
            got = cap["capacity_req_per_s"]
            ax.axvline(got, color="#1565c0", linewidth=1.2, label=f"capacity {got:.3g} req/s")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("p95 E2E (ms)")
        ax.legend(fontsize=7)
        return _svg(fig)


def _t(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _canary_points(log: Mapping[str, Any]) -> tuple[list[tuple[datetime, float]], list[tuple[datetime, Any, Any]]]:
    steps, line, points = log.get("steps") or [], [], []
    for step in steps:
        start = _t(step.get("started_at"))
        if start is not None:
            line.append((start, float(step["weight"])))
        for m in step.get("measurements") or []:
            at = _t(m.get("at"))
            if at is not None:
                points.append((at, step, m))
    end = _t(log.get("aborted_at")) or max((p[0] for p in points), default=None)
    if line and end is not None:
        line.append((end, 0.0 if log.get("outcome") == "aborted" else line[-1][1]))
    return line, points


def plot_canary(log: Mapping[str, Any]) -> str:
    """Weight over time (a step line) with each analysis measurement, and the p95s of canary vs champion."""
    import matplotlib

    line, points = _canary_points(log)
    t0 = min([t for t, _ in line] + [p[0] for p in points], default=None)

    def minutes(t: datetime) -> float:
        return (t - t0).total_seconds() / 60 if t0 else 0.0

    with matplotlib.rc_context(_RC):
        fig, axes = _figure(7.5, 4.2, 2, 1)
        top, bottom = axes[0][0], axes[1][0]
        if line:
            top.step([minutes(t) for t, _ in line], [w for _, w in line], where="post", color="#1565c0")
        for phase, color in _PHASE_COLORS.items():
            sel = [(minutes(t), float(s["weight"])) for t, s, m in points if m.get("phase") == phase]
            if sel:
                top.scatter(*zip(*sel, strict=True), color=color, label=phase, zorder=3, s=22)
        aborted = _t(log.get("aborted_at"))
        if aborted is not None:
            top.axvline(minutes(aborted), color="#c62828", linestyle="--", label="aborted")
        top.set_ylabel("candidate traffic (%)")
        top.set_ylim(-5, 105)
        top.legend(fontsize=7, loc="upper left")
        for side, color in (("canary", "#1565c0"), ("champion", "#6d6d6d")):
            sel = [(minutes(t), m[side]["p95_ms"]) for t, _, m in points if (m.get(side) or {}).get("p95_ms")]
            if sel:
                bottom.plot(*zip(*sel, strict=True), marker=".", color=color, label=f"{side} p95")
        bottom.set_ylabel("p95 (ms)")
        bottom.set_xlabel("minutes since the first step")
        bottom.legend(fontsize=7, loc="upper left")
        return _svg(fig)


def _signature(envelope: Path) -> dict[str, str] | None:
    """What the report says of the DSSE envelope (present, not verified here): algorithm and keyid; None if absent."""
    if not envelope.is_file():
        return None
    try:
        first = json.loads(envelope.read_text(encoding="utf-8"))["signatures"][0]
        return {"algorithm": "Ed25519, DSSE", "keyid": str(first.get("keyid", ""))}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return {"algorithm": "unreadable DSSE envelope", "keyid": ""}


def load_bundle(bundle: Path) -> dict[str, Any]:
    """The statement, digest, manifest, signature and parsed result files (by kind) of an evidence bundle."""
    from steps.evidence.layout import DIGEST_FILE, ENVELOPE, MANIFEST, STATEMENT

    statement = json.loads((bundle / STATEMENT).read_text(encoding="utf-8"))
    details = statement["predicate"]["runDetails"]
    results: dict[str, Any] = {}
    for item in details.get("byproducts") or []:
        path = bundle / str(item.get("uri", ""))
        if item.get("kind") and path.is_file():
            try:
                results.setdefault(item["kind"], json.loads(path.read_text(encoding="utf-8")))
            except ValueError:
                continue
    manifest = json.loads((bundle / MANIFEST).read_text()) if (bundle / MANIFEST).is_file() else {"files": []}
    digest = (bundle / DIGEST_FILE).read_text().strip() if (bundle / DIGEST_FILE).is_file() else "(none)"
    signature = _signature(bundle / ENVELOPE)
    return {
        "statement": statement,
        "results": results,
        "summary": details.get("llmrelease_results", {}),
        "manifest": manifest,
        "digest": digest,
        "signature": signature,
    }


def _metric_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for section in ("eval", "safety"):
        data = summary.get(section) or {}
        champs = {s["suite"]: s for s in data.get("champion") or []}
        for cand in data.get("candidate") or []:
            champ = champs.get(cand["suite"], {}).get("metrics", {})
            for metric, value in cand["metrics"].items():
                if metric != "n" and not metric.endswith("_n"):
                    rows.append(
                        {"suite": cand["suite"], "metric": metric, "candidate": value, "champion": champ.get(metric)}
                    )
    seen = set()
    return [r for r in rows if (key := (r["suite"], r["metric"])) not in seen and not seen.add(key)]  # type: ignore[func-returns-value]


def render_report(bundle: Path) -> str:
    """The HTML report of the bundle at `bundle`, as a string."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    data = load_bundle(bundle)
    results, statement = data["results"], data["statement"]
    gate, latency, canary = results.get("gate"), results.get("latency"), results.get("canary")
    comparisons = (gate or {}).get("comparisons") or []
    plots = {
        "comparisons": Markup(plot_comparisons(comparisons)) if comparisons else None,  # our SVG
        "latency": Markup(plot_latency(latency)) if latency else None,
        "capacity": Markup(plot_capacity(latency)) if ((latency or {}).get("capacity") or {}).get("probes") else None,
        "canary": Markup(plot_canary(canary)) if canary else None,
    }
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, f=".3f": "–" if v is None else format(v, f)
    return env.get_template("report.html.j2").render(
        statement=statement,
        subject=statement["subject"][0],
        summary=data["summary"],
        digest=data["digest"],
        manifest=data["manifest"],
        signature=data["signature"],
        gate=gate,
        comparisons=comparisons,
        latency=latency,
        canary=canary,
        plots=plots,
        metric_rows=_metric_rows(data["summary"]),
        predicate=statement["predicate"],
    )


def write_report(bundle: Path, out: Path | None = None) -> Path:
    """Render the report of `bundle` to `out` (default `<bundle>/report.html`); returns the path."""
    from steps.evidence.layout import REPORT

    target = out or bundle / REPORT
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(bundle), encoding="utf-8")
    return target
