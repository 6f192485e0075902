"""The Grafana dashboard, recording rules and alerts (tierserve.serving.dashboard).

Pure checks: the checked-in JSON and rule file are what the code generates; every metric is a
contract-3 name; every panel filters on the namespace and model variables. promtool (Debian's
prometheus package) checks the rules and runs the unit tests in deploy/promtool/. The live checks
run every panel query and every recording rule through a real Prometheus HTTP API; see
tests/test_dashboard_live.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tierserve.serving import dashboard as dash

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "charts" / "tierserve" / "files"
PROMTOOL_TESTS = ROOT / "deploy" / "promtool" / "tierserve-rules.test.yaml"

CONTRACT_3 = {
    "tierserve_requests_total", "tierserve_request_duration_seconds",
    "tierserve_escalations_total", "tierserve_fallbacks_total", "tierserve_shadow_requests_total",
    "tierserve_shadow_agreement", "tierserve_shadow_fallback_active", "tierserve_agreement_gate",
    "tierserve_cost_usd_total", "tierserve_counterfactual_cost_usd_total",
    "tierserve_savings_usd", "tierserve_pruned_share", "tierserve_tier_up",
    "tierserve_tokens_total", "tierserve_rejected_total", "tierserve_cancelled_total",
    "tierserve_truncated_total", "tierserve_circuit_open",
}


def _dashboard() -> dict:
    return json.loads((FILES / dash.DASHBOARD_FILE).read_text())


def _metric_names(expr: str) -> set[str]:
    """Raw metric names used in an expression (recorded `a:b:c` names excluded)."""
    names = set(re.findall(r"(?<![:\w])(tierserve_\w+)(?![:\w])", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if "duration" in n else n for n in names}


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: install Debian's prometheus (bash scripts/install.sh test)"
    return found


def test_checked_in_files_are_exactly_what_the_code_generates(tmp_path: Path) -> None:
    dash.write_all(tmp_path)
    for name in (dash.DASHBOARD_FILE, dash.RULES_FILE):
        assert (tmp_path / name).read_text() == (FILES / name).read_text(), (
            f"{name} is stale: run `python -m tierserve.serving.dashboard`")


def test_every_query_uses_only_contract_3_metrics_or_recorded_series() -> None:
    exprs = [e for _, _, e in dash.panel_queries(_dashboard())]
    exprs += list(dash.RECORDING_RULES.values()) + [a[0] for a in dash.ALERTS.values()]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used <= CONTRACT_3, used - CONTRACT_3
    assert used == CONTRACT_3, f"metrics nobody looks at: {CONTRACT_3 - used}"
    recorded = set().union(*(re.findall(r"\w+:\w+:\w+", e) for e in exprs))
    assert recorded <= set(dash.RECORDING_RULES), recorded - set(dash.RECORDING_RULES)


def test_template_variables_filter_every_panel() -> None:
    board = _dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"namespace", "model", "datasource"} <= set(variables)
    for name in ("namespace", "model"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"], (panel["title"], target)
            assert 'model=~"$model"' in target["expr"], (panel["title"], target)


@pytest.mark.parametrize("what, needles", [
    ("requests per tier and pruned share", ["Requests per tier", "Pruned share"]),
    ("p50 and p95 per tier", ["p50 / p95"]),
    ("escalations and fallbacks", ["Escalations and fallbacks"]),
    ("shadow agreement vs gate", ["shadow agreement vs gate"]),
    ("cost per tier, savings, savings rate $/day",
     ["Cost per tier", "Cumulative savings", "Savings rate ($/day)"]),
])
def test_the_required_panels_are_there(what: str, needles: list[str]) -> None:
    titles = " | ".join(p["title"] for p in _dashboard()["panels"])
    for needle in needles:
        assert needle.lower() in titles.lower(), (what, needle, titles)


def test_latency_panel_draws_p50_and_p95_per_tier_and_agreement_draws_the_gate() -> None:
    queries = dash.panel_queries(_dashboard())
    latency = [e for t, _, e in queries if t.startswith("Latency")]
    assert any("p50_5m" in e for e in latency) and any("p95_5m" in e for e in latency)
    assert all("by (tier)" in e for e in latency)
    agreement = [e for t, _, e in queries if "agreement" in t]
    assert any("tierserve_agreement_gate" in e for e in agreement)
    assert any("tierserve_shadow_agreement" in e for e in agreement)


def test_promtool_check_rules_passes() -> None:
    proc = subprocess.run([_promtool(), "check", "rules", str(FILES / dash.RULES_FILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(dash.RECORDING_RULES) + len(dash.ALERTS)
    assert f"SUCCESS: {n} rules found" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_promtool_unit_test() -> None:
    suite = yaml.safe_load(PROMTOOL_TESTS.read_text())
    firing = {case["alertname"] for test in suite["tests"]
              for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    quiet = {case["alertname"] for test in suite["tests"]
             for case in test.get("alert_rule_test", []) if not case["exp_alerts"]}
    assert firing == set(dash.ALERTS) and quiet == set(dash.ALERTS)


def test_promtool_unit_tests_pass() -> None:
    proc = subprocess.run([_promtool(), "test", "rules", str(PROMTOOL_TESTS)],
                          capture_output=True, text=True, cwd=PROMTOOL_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_alerts_carry_severity_and_human_text() -> None:
    for group in dash.rule_groups()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]
                assert rule["for"]


def test_the_json_decodes_as_a_grafana_dashboard_model() -> None:
    """The checked-in JSON round-trips through grafana-foundation-sdk's Dashboard model."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    board = _dashboard()
    model = Dashboard.from_json(board)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == board
    assert board["uid"] == dash.DASHBOARD_UID and all(p["options"] for p in board["panels"])


def test_savings_from_metrics_and_their_agreement():
    """The stats actor's body (no Ray): its totals and its own /metrics page give the same savings;
    the savings panel's query is the one in the checked-in JSON; the agreement is relative."""
    from tierserve.serving.metrics import Events, Stats

    stats = Stats("m", gate=0.99, window=20, hysteresis=0.0)
    ev = Events()
    ev.spend({"pruned": 0.25, "full": 0.5}, counterfactual=1.5)
    ev.spend({"full": 1.0}, counterfactual=1.0)  # an all-full request saves nothing
    stats.push(ev)
    page = dash.metrics_savings(stats.render().decode())
    totals = stats.totals()
    assert page == {"cost_usd": totals["cost_usd"], "counterfactual_usd": 2.5,
                    "savings_usd": totals["savings_usd"]}
    assert page["savings_usd"] == pytest.approx(0.75)
    assert "tierserve_savings_usd" in dash.savings_query(_dashboard())
    agree = dash.savings_agreement({"a": 0.75, "b": 0.76, "c": None})
    assert agree["max_rel_diff"] == pytest.approx(0.01 / 0.76)
    assert dash.savings_agreement({"a": 1e-7, "b": 0.0}, abs_tol=1e-6)["max_rel_diff"] == 0.0
