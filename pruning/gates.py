"""Quality gates: every pruned model earns its deployment. Pure functions over measured numbers.

A gate compares one measured value with one threshold:
- quality gates: `metric` (overall or on one slice) >= `min`, and/or >= `relative` x full;
- the latency gate: measured pruned p50 / full p50 <= `maxLatencyRatio` (blocks "no real speedup");
- the size gate: pruned bytes / full bytes <= `maxSizeRatio`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .spec import GatesSpec

__all__ = ["GateResult", "Measured", "check_gates"]


@dataclass(frozen=True)
class GateResult:
    name: str  # e.g. "ndcg@10 >= 0.99 x full [slice=games]"
    metric: str
    slice: str | None
    value: float | None  # None when the metric was not measured (counts as a failure)
    threshold: float
    comparison: str  # ">=" or "<="
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measured:
    """Everything gates are judged on. metrics: {metric: value}; slices: {slice: {metric: value}}."""

    full: dict[str, float]
    pruned: dict[str, float]
    full_slices: dict[str, dict[str, float]]
    pruned_slices: dict[str, dict[str, float]]
    latency_ratio: float | None = None
    size_ratio: float | None = None


def _lookup(metrics: dict[str, float], slices: dict[str, dict[str, float]], metric: str,
            slice_: str | None) -> float | None:
    source = metrics if slice_ is None else slices.get(slice_, {})
    value = source.get(metric)
    return None if value is None else float(value)


def _floor(name: str, metric: str, slice_: str | None, value: float | None, threshold: float,
           detail: str) -> GateResult:
    passed = value is not None and value >= threshold - 1e-12
    return GateResult(name, metric, slice_, value, threshold, ">=", passed,
                      detail if value is not None else f"{detail}; not measured")


def check_gates(spec: GatesSpec, m: Measured) -> list[GateResult]:
    """One result per floor of every quality gate, then latency and size gates."""
    out: list[GateResult] = []
    for gate in spec.quality:
        where = f" [slice={gate.slice}]" if gate.slice else ""
        metric = f"{gate.metric}:{gate.positive_class}" if gate.positive_class else gate.metric
        value = _lookup(m.pruned, m.pruned_slices, metric, gate.slice)
        if gate.min is not None:
            out.append(_floor(f"{metric} >= {gate.min}{where}", metric, gate.slice,
                              value, gate.min, "absolute floor"))
        if gate.relative is not None:
            full = _lookup(m.full, m.full_slices, metric, gate.slice)
            threshold = gate.relative * full if full is not None else float("inf")
            out.append(_floor(f"{metric} >= {gate.relative} x full{where}", metric,
                              gate.slice, value, threshold,
                              f"full model: {full:.4f}" if full is not None else "full model: n/a"))
    for metric, limit, value in (("latency_ratio", spec.max_latency_ratio, m.latency_ratio),
                                 ("size_ratio", spec.max_size_ratio, m.size_ratio)):
        if limit is None:
            continue
        passed = value is not None and value <= limit
        out.append(GateResult(f"{metric} <= {limit}", metric, None, value, limit, "<=", passed,
                              "pruned / full, measured on this hardware"))
    return out
