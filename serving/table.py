"""The table `tierserve run` prints: per-tier share and latency, quality, cost and savings."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

__all__ = ["run_table"]


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{1000 * s:.0f} ms"


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def run_table(name: str, spec, report: dict, summary: dict, totals: dict) -> str:
    s, cal = spec.serving, report.get("calibration") or {}
    policy = s.policy + (f" (threshold {cal.get('threshold', 0):.4f} on {cal.get('confidence')}, "
                         f"calibrated on {cal.get('source', 'validation')})"
                         if s.policy == "cascade" else f" ({s.pruned_weight:.0%} to pruned)")
    t = Table(title=f"{name}: {summary['requests']} requests through the router")
    for col in ("tier", "share", "requests", "p50", "p95"):
        t.add_column(col, justify="right" if col != "tier" else "left")
    for tier, row in summary["tiers"].items():
        t.add_row(tier, f"{row['share']:.1%}", str(row["requests"]), _ms(row["p50_s"]),
                  _ms(row["p95_s"]))
    t.add_row("all", "100%", str(summary["requests"]), _ms(summary["p50_s"]), _ms(summary["p95_s"]))
    q = Table(title="quality and cost")
    q.add_column("measure")
    q.add_column("value", justify="right")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items()))
    spent, would = totals["cost_usd"], totals["counterfactual_usd"]
    saved = (would - spent) / would if would else 0.0
    unit = " (assumed $1/replica-hour per tier: spec.cost is empty)" if not any(
        spec.cost.model_dump().values()) else ""
    what = ("answer accuracy vs references" if spec.model.task.value == "text-generation"
            else "top-1 accuracy vs labels")
    for k, v in (("policy", policy), ("routing reasons", reasons),
                 (f"{what} (routed)", _f(summary["accuracy"])),
                 (f"{what} (full alone)", _f(summary["full_accuracy"])),
                 ("agreement with full (routed)", _f(summary["agreement"])),
                 ("calibrated agreement (job)", _f((cal.get("validation") or {}).get("agreement"))),
                 ("target agreement", _f(s.target_agreement)),
                 (f"cost{unit}", f"${spent:.6f}"),
                 ("all-full cost (counterfactual)", f"${would:.6f}"),
                 ("savings", f"${would - spent:.6f} ({saved:.1%})")):
        q.add_row(k, v)
    buf = io.StringIO()
    console = Console(file=buf, width=110, force_terminal=False)
    console.print(t)
    console.print(q)
    return buf.getvalue()
