"""Quality gates: every pruned model earns its deployment. Pure functions over measured numbers.

A gate compares one measured value with one threshold:
- quality gates: `metric` (overall or on one slice) >= `min`, and/or >= `relative` x full;
  for lower-is-better metrics (`spec.LOWER_IS_BETTER`: perplexity) the comparison flips:
  value <= `max`, and/or value <= `relative` x full (relative > 1 allows that much worse);
- the latency gate: measured pruned p50 / full p50 <= `maxLatencyRatio` (blocks "no real speedup");
  decoder LMs are timed per token for prefill and for decode, and each phase is one gate;
- the size gate: pruned bytes / full bytes <= `maxSizeRatio`.
Embedding runs add `embedding_cosine` (full = 1.0) and `cross_tier_*` (full = its own retrieval
metric) to the measured metrics (evaluate.quality_signals); they are judged like any floor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .spec import LOWER_IS_BETTER, GatesSpec

__all__ = ["GateResult", "Measured", "check_gates"]


@dataclass(frozen=True)
class GateResult:
    name: str  # e.g. "ndcg@10 >= 0.99 x full [slice=games]"
    metric: str
    slice: str | None
    value: float | None  # None when the metric was not measured (counts as a failure)
    threshold: float | None  # None when it cannot be computed (e.g. the slice does not exist)
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
    latency_phases: dict[str, float] | None = None  # decoder LMs: {"prefill": r, "decode": r}


def _lookup(metrics: dict[str, float], slices: dict[str, dict[str, float]], metric: str,
            slice_: str | None) -> float | None:
    source = metrics if slice_ is None else slices.get(slice_, {})
    value = source.get(metric)
    return None if value is None else float(value)


def _not_measured(metric: str) -> str:
    """Why a metric can be missing: the embedding-space signals exist only for some runs."""
    if metric == "embedding_cosine":
        return "not measured (embedding models only)"
    if metric.startswith("cross_tier_"):
        return "not measured (bi-encoder retrieval only; k as evaluated, e.g. @10, recall@100)"
    return "not measured"


def _missing(slices: dict[str, dict[str, float]], slice_: str | None) -> str | None:
    """Why a slice gate cannot be judged: its slice is not in the evaluation data."""
    if slice_ is None or slice_ in slices:
        return None
    have = ", ".join(sorted(slices)) or "none (no slice field in the data)"
    return f"slice '{slice_}' does not exist in the evaluation data (slices: {have})"


def _floor(name: str, metric: str, slice_: str | None, value: float | None,
           threshold: float | None, detail: str) -> GateResult:
    passed = value is not None and threshold is not None and value >= threshold - 1e-12
    return GateResult(name, metric, slice_, value, threshold, ">=", passed,
                      detail if value is not None else f"{detail}; {_not_measured(metric)}")


def _ceiling(name: str, metric: str, slice_: str | None, value: float | None,
             threshold: float | None, detail: str) -> GateResult:
    passed = value is not None and threshold is not None and value <= threshold + 1e-12
    return GateResult(name, metric, slice_, value, threshold, "<=", passed,
                      detail if value is not None else f"{detail}; not measured")


def _lower_is_better(gate, m: Measured, where: str) -> list[GateResult]:
    value = _lookup(m.pruned, m.pruned_slices, gate.metric, gate.slice)
    out = []
    if gate.max is not None:
        out.append(_ceiling(f"{gate.metric} <= {gate.max}{where}", gate.metric, gate.slice,
                            value, gate.max, "absolute ceiling (lower is better)"))
    if gate.relative is not None:
        full = _lookup(m.full, m.full_slices, gate.metric, gate.slice)
        threshold = gate.relative * full if full is not None else None
        out.append(_ceiling(f"{gate.metric} <= {gate.relative} x full{where}", gate.metric,
                            gate.slice, value, threshold,
                            f"full model: {full:.4f}" if full is not None else "full model: n/a"))
    return _explain(out, m.pruned_slices, gate.slice)


def _explain(results: list[GateResult], slices: dict[str, dict[str, float]],
             slice_: str | None) -> list[GateResult]:
    """Failed results of a gate on a slice that does not exist say so (the gate FAILS)."""
    why = _missing(slices, slice_)
    if why is None:
        return results
    from dataclasses import replace

    return [replace(r, value=None, threshold=None, passed=False, detail=why) for r in results]


def _latency(spec: GatesSpec, m: Measured) -> list[tuple[str, float | None, float | None]]:
    if m.latency_phases is None:
        return [("latency_ratio", spec.max_latency_ratio, m.latency_ratio)]
    return [(f"latency_ratio:{phase}", spec.max_latency_ratio, ratio)
            for phase, ratio in m.latency_phases.items()]


def check_gates(spec: GatesSpec, m: Measured) -> list[GateResult]:
    """One result per floor of every quality gate, then latency and size gates."""
    out: list[GateResult] = []
    for gate in spec.quality:
        where = f" [slice={gate.slice}]" if gate.slice else ""
        if gate.metric in LOWER_IS_BETTER:
            out.extend(_lower_is_better(gate, m, where))
            continue
        metric = f"{gate.metric}:{gate.positive_class}" if gate.positive_class else gate.metric
        value = _lookup(m.pruned, m.pruned_slices, metric, gate.slice)
        floors = []
        if gate.min is not None:
            floors.append(_floor(f"{metric} >= {gate.min}{where}", metric, gate.slice,
                                 value, gate.min, "absolute floor"))
        if gate.relative is not None:
            full = _lookup(m.full, m.full_slices, metric, gate.slice)
            threshold = gate.relative * full if full is not None else None
            floors.append(_floor(f"{metric} >= {gate.relative} x full{where}", metric,
                                 gate.slice, value, threshold,
                                 f"full model: {full:.4f}" if full is not None else "full model: n/a"))
        out.extend(_explain(floors, m.pruned_slices, gate.slice))
    for metric, limit, value in (*_latency(spec, m),
                                 ("size_ratio", spec.max_size_ratio, m.size_ratio)):
        if limit is None:
            continue
        passed = value is not None and value <= limit
        out.append(GateResult(f"{metric} <= {limit}", metric, None, value, limit, "<=", passed,
                              "pruned / full, measured on this hardware"))
    return out
