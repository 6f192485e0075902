"""The Grafana dashboard, recording rules and alerts for tierserve, as code.

Everything reads the contract-3 metrics (`tierserve_requests_total`, `..._request_duration_seconds`,
`tierserve_savings_usd`, ...). The expensive queries (per-tier rates, latency quantiles from the
histogram, cost and savings rates) are recording rules; the dashboard reads the recorded series
where one exists. Recorded names follow Prometheus' `level:metric:operations` convention and keep
the `namespace` label that a ServiceMonitor/PodMonitor adds (absent in a plain local scrape; the
dashboard's `namespace=~"$namespace"` matchers accept an absent label when "All" is selected).

    python -m tierserve.serving.dashboard --out charts/tierserve/files

writes `tierserve-dashboard.json` (Grafana JSON model, built with grafana-foundation-sdk) and
`tierserve-rules.yaml` (a Prometheus rule file; the chart's PrometheusRule embeds its `groups`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

__all__ = [
    "ALERTS", "DASHBOARD_FILE", "DASHBOARD_UID", "PANELS", "RECORDING_RULES", "RULES_FILE",
    "SAVINGS_PANEL", "Panel", "Query", "build_dashboard", "dashboard_json", "metrics_savings",
    "panel_queries", "rule_groups", "savings_agreement", "savings_query", "write_all",
]

DASHBOARD_UID = "tierserve-savings"
SAVINGS_PANEL = "Cumulative savings ($)"  # the panel a replay's own accounting must agree with
DASHBOARD_FILE = "tierserve-dashboard.json"
RULES_FILE = "tierserve-rules.yaml"
SECONDS_PER_DAY = 86400
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace=~"$namespace", model=~"$model"'  # every panel query filters on both variables
BY = "namespace, model"  # the level every recorded series keeps

# -- recording rules: record name -> expression ----------------------------------------------
RECORDING_RULES: dict[str, str] = {
    "namespace_model_tier:tierserve_requests:rate5m":
        f"sum by ({BY}, tier) (rate(tierserve_requests_total[5m]))",
    "namespace_model:tierserve_pruned_share:ratio_rate5m":
        f'(sum by ({BY}) (namespace_model_tier:tierserve_requests:rate5m{{tier="pruned"}})'
        f" or sum by ({BY}) (namespace_model_tier:tierserve_requests:rate5m) * 0)"
        f" / sum by ({BY}) (namespace_model_tier:tierserve_requests:rate5m)",
    "namespace_model_tier:tierserve_request_duration_seconds:p50_5m":
        "histogram_quantile(0.5, sum by "
        f"({BY}, tier, le) (rate(tierserve_request_duration_seconds_bucket[5m])))",
    "namespace_model_tier:tierserve_request_duration_seconds:p95_5m":
        "histogram_quantile(0.95, sum by "
        f"({BY}, tier, le) (rate(tierserve_request_duration_seconds_bucket[5m])))",
    "namespace_model_tier_kind:tierserve_tokens:rate5m":
        f"sum by ({BY}, tier, kind) (rate(tierserve_tokens_total[5m]))",
    "namespace_model_tier:tierserve_cost_usd:rate5m":
        f"sum by ({BY}, tier) (rate(tierserve_cost_usd_total[5m]))",
    "namespace_model:tierserve_counterfactual_cost_usd:rate5m":
        f"sum by ({BY}) (rate(tierserve_counterfactual_cost_usd_total[5m]))",
    # savings = counterfactual - cost; tierserve_savings_usd is a gauge (escalations can
    # make it dip), so its rate comes from the two counters, not from rate() of the gauge.
    "namespace_model:tierserve_savings_usd:rate5m":
        "namespace_model:tierserve_counterfactual_cost_usd:rate5m"
        f" - on ({BY}) sum by ({BY}) (namespace_model_tier:tierserve_cost_usd:rate5m)",
}

# -- alerts: name -> (expr, for, severity, summary, description) ------------------------------
ALERTS: dict[str, tuple[str, str, str, str, str]] = {
    "TierserveShadowAgreementBelowGate": (
        f"avg by ({BY}) (tierserve_shadow_agreement)"
        f" < on ({BY}) max by ({BY}) (tierserve_agreement_gate)"
        f" and on ({BY}) sum by ({BY}) (rate(tierserve_shadow_requests_total[10m])) > 0",
        "10m", "warning",
        "Live shadow agreement of {{ $labels.model }} is below its gate",
        "The pruned tier agrees with the full model on {{ $value | humanizePercentage }} of "
        "shadowed requests in {{ $labels.namespace }}, below the agreement gate the pruning "
        "job proved. The router falls back to the full tier while this holds; re-run the "
        "pruning job on fresh data or lower the pruned share."),
    "TierservePrunedTierDownFallbackActive": (
        f'min by ({BY}) (tierserve_tier_up{{tier="pruned"}}) == 0'
        f" and on ({BY}) sum by ({BY}) (rate(tierserve_fallbacks_total[5m])) > 0",
        "5m", "critical",
        "Pruned tier of {{ $labels.model }} is down; traffic falls back to the full tier",
        "tierserve_tier_up{tier=\"pruned\"} is 0 for {{ $labels.model }} in "
        "{{ $labels.namespace }} and requests are served by the full tier as fallback: "
        "quality holds but the savings stop. Check the pruned Serve deployment."),
    "TierserveSavingsRateZero": (
        f"sum by ({BY}) (delta(tierserve_savings_usd[30m])) <= 0"
        f" and on ({BY}) sum by ({BY}) (rate(tierserve_requests_total[30m])) > 0",
        "15m", "warning",
        "{{ $labels.model }} serves traffic but saves nothing",
        "Requests flow for {{ $labels.model }} in {{ $labels.namespace }} but the savings "
        "total has not grown for 30m: every request goes to the full tier (pruned share 0, "
        "a fallback, or a routing policy that never picks the pruned tier)."),
}


def rule_groups() -> dict[str, Any]:
    """The Prometheus rule file (also the PrometheusRule `spec`): recording rules, then alerts."""
    records = [{"record": name, "expr": expr} for name, expr in RECORDING_RULES.items()]
    alerts = [{"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
               "annotations": {"summary": summary, "description": description}}
              for name, (expr, for_, severity, summary, description) in ALERTS.items()]
    return {"groups": [{"name": "tierserve.recording", "rules": records},
                       {"name": "tierserve.alerts", "rules": alerts}]}


# -- panels -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat
    width: int = 12
    description: str = ""


def _q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


PANELS: tuple[Panel, ...] = (
    Panel("Requests per tier", "reqps", (
        _q(f"sum by (tier) (namespace_model_tier:tierserve_requests:rate5m{{{SEL}}})",
           "{{tier}}"),), description="Requests per second served by each tier."),
    Panel("Pruned share", "percentunit", (
        _q(f"avg by (model) (namespace_model:tierserve_pruned_share:ratio_rate5m{{{SEL}}})",
           "{{model}} measured"),
        _q(f"avg by (model) (tierserve_pruned_share{{{SEL}}})", "{{model}} router"),),
        description="Share of requests answered by the pruned tier."),
    Panel("Requests by routing reason", "reqps", (
        _q(f"sum by (reason) (rate(tierserve_requests_total{{{SEL}}}[$__rate_interval]))",
           "{{reason}}"),)),
    Panel("Latency p50 / p95 per tier", "s", (
        _q("max by (tier) (namespace_model_tier:tierserve_request_duration_seconds:p50_5m"
           f"{{{SEL}}})", "p50 {{tier}}"),
        _q("max by (tier) (namespace_model_tier:tierserve_request_duration_seconds:p95_5m"
           f"{{{SEL}}})", "p95 {{tier}}"),)),
    Panel("Tokens per second per tier", "short", (
        _q("sum by (tier, kind) (namespace_model_tier_kind:tierserve_tokens:rate5m"
           f"{{{SEL}}})", "{{tier}} {{kind}}"),),
        description="Tokens the tiers process: input (prompts, texts) and output (generated)."),
    Panel("Escalations and fallbacks", "reqps", (
        _q(f"sum by (model) (rate(tierserve_escalations_total{{{SEL}}}[$__rate_interval]))",
           "escalations {{model}}"),
        _q(f"sum by (model) (rate(tierserve_fallbacks_total{{{SEL}}}[$__rate_interval]))",
           "fallbacks {{model}}"),),
        description="Cascade escalations to the full tier, and fallbacks when a tier fails."),
    Panel("Refused, cancelled, truncated; open circuits", "reqps", (
        _q(f"sum by (reason) (rate(tierserve_rejected_total{{{SEL}}}[$__rate_interval]))",
           "refused {{reason}}"),
        _q(f"sum by (tier) (rate(tierserve_cancelled_total{{{SEL}}}[$__rate_interval]))",
           "cancelled {{tier}}"),
        _q(f"sum by (tier) (rate(tierserve_truncated_total{{{SEL}}}[$__rate_interval]))",
           "truncated texts {{tier}}"),
        _q(f"max by (tier) (tierserve_circuit_open{{{SEL}}})", "circuit open {{tier}}"),),
        description="503/413 refusals by reason, timed-out calls cancelled, texts cut at "
                    "maxLength, and 1 while the router sends a tier nothing (docs/serving.md)."),
    Panel("Live shadow agreement vs gate", "percentunit", (
        _q(f"avg by (model) (tierserve_shadow_agreement{{{SEL}}})", "agreement {{model}}"),
        _q(f"max by (model) (tierserve_agreement_gate{{{SEL}}})", "gate {{model}}"),
        _q(f"max by (model) (tierserve_shadow_fallback_active{{{SEL}}})",
           "fallback active {{model}}"),),
        description="Top-1 agreement of the pruned tier with the full model on shadowed "
                    "requests, against the gate the pruning job proved."),
    Panel("Tier up", "none", (
        _q(f"min by (model, tier) (tierserve_tier_up{{{SEL}}})", "{{model}} {{tier}}"),),
        kind="stat"),
    Panel("Cost per tier ($/day)", "currencyUSD", (
        _q(f"sum by (tier) (namespace_model_tier:tierserve_cost_usd:rate5m{{{SEL}}})"
           f" * {SECONDS_PER_DAY}", "{{tier}}"),
        _q(f"sum (namespace_model:tierserve_counterfactual_cost_usd:rate5m{{{SEL}}})"
           f" * {SECONDS_PER_DAY}", "all-full (counterfactual)"),)),
    Panel(SAVINGS_PANEL, "currencyUSD", (
        _q(f"sum by (model) (tierserve_savings_usd{{{SEL}}})", "{{model}}"),), kind="stat"),
    Panel("Savings rate ($/day)", "currencyUSD", (
        _q(f"sum by (model) (namespace_model:tierserve_savings_usd:rate5m{{{SEL}}})"
           f" * {SECONDS_PER_DAY}", "{{model}}"),),
        description="What the pruned tier saves per day at the current traffic, against "
                    "serving everything on the full tier."),
)


def _panel_builder(panel: Panel):
    if panel.kind == "stat":
        builder = (stat.Panel().graph_mode(BigValueGraphMode.AREA)
                   .reduce_options(gcommon.ReduceDataOptions().calcs(["lastNotNull"])))
    else:
        builder = (timeseries.Panel().line_width(2).fill_opacity(10)
                   .legend(gcommon.VizLegendOptions().show_legend(True)
                           .display_mode(LegendDisplayMode.LIST)
                           .placement(LegendPlacement.BOTTOM))
                   .tooltip(gcommon.VizTooltipOptions().mode(TooltipDisplayMode.MULTI)
                            .sort(SortOrder.DESCENDING)))
    builder = (builder.title(panel.title).unit(panel.unit).datasource(DATASOURCE)
               .span(panel.width).height(8))
    if panel.description:
        builder = builder.description(panel.description)
    for ref, query in zip("ABCDEFGH", panel.queries, strict=False):
        builder = builder.with_target(gprom.Dataquery().expr(query.expr)
                                      .legend_format(query.legend).ref_id(ref))
    return builder


def _label_variable(name: str, query: str) -> gdash.QueryVariable:
    return (gdash.QueryVariable(name).label(name).query(query).datasource(DATASOURCE)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))


def build_dashboard():
    """The dashboard model (grafana-foundation-sdk), variables datasource, namespace, model."""
    builder = (gdash.Dashboard("tierserve: tiers, latency and savings").uid(DASHBOARD_UID)
               .tags(["tierserve"]).refresh("30s").time("now-3h", "now")
               .tooltip(DashboardCursorSync.CROSSHAIR)
               .with_variable(gdash.DatasourceVariable("datasource").label("Prometheus")
                              .type("prometheus"))
               .with_variable(_label_variable(
                   "namespace", "label_values(tierserve_requests_total, namespace)"))
               .with_variable(_label_variable(
                   "model", 'label_values(tierserve_requests_total{namespace=~"$namespace"}, '
                            "model)")))
    for panel in PANELS:
        builder = builder.with_panel(_panel_builder(panel))
    return builder.build()


def dashboard_json() -> str:
    """The Grafana JSON model, stable (sorted keys) so the checked-in file can be compared."""
    return json.dumps(build_dashboard(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def panel_queries(dashboard: dict[str, Any], *, namespace: str = ".*", model: str = ".*",
                  rate_interval: str = "1m") -> list[tuple[str, str, str]]:
    """(panel title, legend format, PromQL) for every target of a dashboard JSON model, with the
    template variables replaced as Grafana would ("All" = `.*`)."""
    subs = {"$namespace": namespace, "$model": model, "$__rate_interval": rate_interval}
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in subs.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], target.get("legendFormat", ""), expr))
    return out


def savings_query(dashboard: dict[str, Any], model: str = ".*") -> str:
    """The savings panel's PromQL, taken from a dashboard JSON model (not retyped)."""
    return next(expr for title, _, expr in panel_queries(dashboard, model=model)
                if title == SAVINGS_PANEL)


def metrics_savings(text: str) -> dict[str, float]:
    """USD spent, all-full USD and savings summed over a /metrics page's counters."""
    from prometheus_client.parser import text_string_to_metric_families

    sums = {"tierserve_cost_usd": 0.0, "tierserve_counterfactual_cost_usd": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in sums:
            sums[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    spent, would = sums["tierserve_cost_usd"], sums["tierserve_counterfactual_cost_usd"]
    return {"cost_usd": spent, "counterfactual_usd": would, "savings_usd": would - spent}


def savings_agreement(figures: dict[str, float | None], abs_tol: float = 0.0) -> dict[str, Any]:
    """The same savings measured several ways -> the figures and their max relative difference
    (|a - b| / max(|a|, |b|) over every pair); differences within `abs_tol` (e.g. the rounding
    of a printed figure) count as 0."""
    vals = [v for v in figures.values() if v is not None]
    worst = 0.0
    for i, a in enumerate(vals):
        for b in vals[i + 1:]:
            scale = max(abs(a), abs(b))
            if abs(a - b) > abs_tol and scale > 0:
                worst = max(worst, abs(a - b) / scale)
    return {"figures": dict(figures), "max_rel_diff": worst}


def write_all(out: str | Path) -> list[Path]:
    """Write the dashboard JSON and the rule file into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dash, rules = out / DASHBOARD_FILE, out / RULES_FILE
    dash.write_text(dashboard_json())
    header = "# Generated by `python -m tierserve.serving.dashboard`; do not edit.\n"
    rules.write_text(header + yaml.safe_dump(rule_groups(), sort_keys=False, width=100))
    return [dash, rules]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierserve.serving.dashboard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="charts/tierserve/files", help="output directory")
    for path in write_all(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
