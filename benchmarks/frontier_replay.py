"""Held-out requests replayed through the real router (benchmarks/frontier.py, section 5): local
Ray Serve with both tiers at the calibrated point; agreement from the router's answers, savings
from its /metrics, checked against the stats actor's totals and the dashboard's savings panel as a
real Prometheus evaluates it (benchmarks/promcheck.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from harness import ROOT

__all__ = ["replay", "savings_three_ways"]


def replay(full_uri: str, art: Path, cal: dict, bodies: list[dict], Ft, port: int,
           runtime: dict | None = None) -> dict:
    """Serve both tiers + the router at the calibrated point; replay `bodies`; agreement with
    full's top-1 and savings from the router's own /metrics."""
    import httpx
    import ray
    from ray import serve

    from tierserve.serving.app import build_app

    spec = {"model": {"uri": full_uri, "task": "embedding"},
            "data": {"calibration": {"uri": "unused.jsonl"}, "evaluation": {"uri": "unused.jsonl"}},
            "serving": {"policy": "cascade", "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5},
                        "prunedTimeoutS": 60.0, "maxItems": 64}}
    report = {"deployable": True, "status": "passed", "gates": [], "calibration": cal,
              **({"runtime": runtime} if runtime else {})}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"name": "frontier", "spec": spec, "report": report,
                             "artifact": str(art)}), name="frontier", route_prefix="/")
        url, agree = f"http://127.0.0.1:{port}", []
        with httpx.Client(timeout=300) as c:
            for body, f in zip(bodies, Ft, strict=False):
                r = c.post(f"{url}/v1/rerank", json=body).json()
                agree.append(r["ranking"][0] == int(np.argmax(f)))
            time.sleep(1.0)  # the stats actor applies the last pushes
            text = c.get(f"{url}/metrics").text
            savings = savings_three_ways(f"127.0.0.1:{port}", text)
    finally:
        serve.shutdown()
        ray.shutdown()
    m = savings["metrics_counters"]
    would = m["counterfactual_usd"]
    return {"agreement": float(np.mean(agree)),
            "savings": m["savings_usd"] / would if would else 0.0,
            "n": len(agree), "ratio_in_use": _ratio_line(text), "savings_agreement": savings}


def savings_three_ways(target: str, text: str, name: str = "frontier") -> dict:
    """The replay's savings (USD) as (a) the stats actor's own totals (what `tierserve run`
    prints), (b) the /metrics counters, (c) the dashboard's savings panel PromQL (from the
    generated JSON) evaluated by a real Prometheus scraping the router; and their max relative
    difference (within 2%)."""
    import ray
    from promcheck import evaluate

    from tierserve.serving import dashboard as dash

    actor = ray.get_actor(f"tierserve-stats-{name}", namespace="tierserve")
    totals = ray.get(actor.totals.remote())
    counters = dash.metrics_savings(text)
    board = json.loads((ROOT / "charts/tierserve/files" / dash.DASHBOARD_FILE).read_text())
    panel, why = evaluate(target, dash.savings_query(board), want=counters["savings_usd"])
    agreement = dash.savings_agreement({"run_totals": totals["savings_usd"],
                                        "metrics": counters["savings_usd"], "dashboard": panel})
    print(f"savings: run {totals['savings_usd']:.6g}, /metrics {counters['savings_usd']:.6g}, "
          f"dashboard {panel if panel is None else f'{panel:.6g}'} USD; max relative "
          f"difference {agreement['max_rel_diff']:.3%} {why or ''}", file=sys.stderr)
    return {**agreement, "metrics_counters": counters, "dashboard_note": why}


def _ratio_line(text: str) -> str | None:
    return next((ln for ln in text.splitlines() if ln.startswith("tierserve_cost_ratio{")), None)
