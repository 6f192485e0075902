"""A job's report as status: the gate table and headline numbers, a failed gate as it failed, and
the `ServingVersion` a passing report becomes. Pure."""

from __future__ import annotations

from typing import Any

from tierserve.pruning.report_model import PruningReport

from .status import finite

__all__ = ["failed_gates", "gate_text", "report_summary", "version_of"]


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Gate table and headline numbers of a report, as status fields (non-finite numbers: null)."""
    r = PruningReport.read(finite(report))  # typed (report_model.py); ReportError names a field
    metrics, headline = r.metrics, r.headline()
    kept = metrics.quality_kept if metrics else {}
    rows = [g.model_dump(include={"metric", "slice", "value", "threshold", "passed"},
                         exclude_none=True) for g in r.gates]
    out: dict[str, Any] = {"gates": [{"passed": False, **row} for row in rows],
                           "metrics": {"full": metrics.full if metrics else None,
                                       "pruned": metrics.pruned if metrics else None,
                                       "headline": headline}}
    if r.budget and r.budget.encoder_flops_removed is not None:
        out["budget"] = round(r.budget.encoder_flops_removed, 4)
    if headline and kept.get(headline) is not None:
        out["quality"] = round(kept[headline], 4)
    if r.latency and r.latency.ratio is not None:
        out["latencyRatio"] = round(r.latency.ratio, 4)
    return out


def gate_text(g: dict[str, Any]) -> str:
    """`ndcg@10=0.81 < 0.9`, `perplexity=61.2 > 50.0`: the failed comparison, as it happened."""
    name = f"{g.get('metric')}{'[' + g['slice'] + ']' if g.get('slice') else ''}"
    value, threshold = g.get("value"), g.get("threshold")
    if value is None or threshold is None:
        return f"{name} not judged: {g.get('detail') or 'not measured'}"
    broken = ">" if g.get("comparison") == "<=" else "<"
    return f"{name}={round(float(value), 4)} {broken} {round(float(threshold), 4)}"


def failed_gates(report: dict[str, Any]) -> str:
    r = PruningReport.read(finite(report))
    text = ", ".join(gate_text(g.model_dump()) for g in r.gates if not g.passed)
    return text or r.message or "no budget passes every gate"


def version_of(generation: int, h: str, report: dict[str, Any], run: str | None) -> dict[str, Any]:
    r, summary = PruningReport.read(finite(report)), report_summary(report)
    uri = r.artifact.uri if r.artifact else None
    version = {"generation": generation, "specHash": h, "key": r.key or h,
               "artifact": uri, "report": uri, **({"run": run} if run else {})}
    return {**version, **{k: summary[k] for k in ("budget", "quality") if k in summary}}
