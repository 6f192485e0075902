"""Every dashboard panel query and every recording rule, run by a real Prometheus (Debian's
binary, fixture `prometheus_factory`) against live tierserve metrics, must return data; the
alert rules must load and evaluate without error; the PNG renderer must draw every panel; and
the savings `tierserve run` prints after its replay, the savings from the /metrics counters and the
dashboard's savings panel (its PromQL from the generated JSON, evaluated by Prometheus) agree
within 2% (issue 15).

The embedded `tierserve run` (a real MiniLM pruning job, both tiers and the router on a local
Ray Serve) is scraped while rerank traffic flows through its router. TIERSERVE_DASHBOARD_PNG=
docs/img/dashboard.png keeps the rendered PNG (TIERSERVE_DASHBOARD_SOAK_MIN=N keeps traffic
flowing N minutes first).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures.procs import ManagedProcess, free_ports

from tierserve.serving import dashboard as dash

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "charts" / "tierserve" / "files" / dash.RULES_FILE
RENDER = ROOT / "scripts" / "render_dashboard_png.py"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read().decode())


def check_every_query(prom, namespace: str = ".*", model: str = ".*") -> dict[str, int]:
    """Wait until each panel query and recording rule returns data; series count per query."""
    counts = {}
    queries = [expr for _, _, expr in dash.panel_queries(
        json.loads((RULES.parent / dash.DASHBOARD_FILE).read_text()),
        namespace=namespace, model=model)]
    for expr in [*dash.RECORDING_RULES, *queries]:
        counts[expr] = len(prom.wait_for(expr, timeout=90))
    return counts


def check_rules_healthy(prom) -> None:
    groups = _get(f"{prom.url}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(dash.RECORDING_RULES) + len(dash.ALERTS)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


# -- savings: the run's own accounting, /metrics and the dashboard's panel agree within 2% ----------
PRINTED_SAVINGS = re.compile(r"savings\W+\$(-?[0-9.]+) \((-?[0-9.]+)%\)")


def _metrics_settled(url: str, timeout: float = 30.0) -> dict[str, float]:
    """/metrics savings once two reads 2 s apart agree (shadow calls still in flight add cost)."""
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as resp:
            now = dash.metrics_savings(resp.read().decode())
        if now == last:
            return now
        last = now
        time.sleep(2.0)
    return last


def check_savings_agree(prom, log: str, metrics_url: str) -> dict:
    """(a) the savings `tierserve run` printed after its replay, (b) the savings from the /metrics
    counters, (c) the dashboard's savings panel PromQL (from the generated JSON) evaluated by
    Prometheus: all within 2% (a printed figure is rounded to $1e-6)."""
    found = PRINTED_SAVINGS.findall(log)
    assert found, log[-3000:]
    printed = float(found[-1][0])
    metrics = _metrics_settled(metrics_url)
    expr = dash.savings_query(json.loads((RULES.parent / dash.DASHBOARD_FILE).read_text()))
    want = metrics["savings_usd"]
    result = prom.wait_for(expr, timeout=60, predicate=lambda r: abs(
        _value(r) - want) <= 1e-9 * max(1.0, abs(want)))
    figures = {"printed": printed, "metrics": want, "dashboard": _value(result)}
    agreement = dash.savings_agreement(figures, abs_tol=1e-6)
    assert agreement["max_rel_diff"] <= 0.02, agreement
    return agreement


def _value(result: list[dict]) -> float:
    return sum(float(r["value"][1]) for r in result)


# -- the real embedded run -------------------------------------------------------------------------
def _manifest(tmp_path: Path) -> Path:
    """examples/minilm-pass.yaml, made small (64 calibration samples, 60 evaluation queries),
    with a validation split for the cascade calibration, 10% shadow sampling and prices."""
    doc = yaml.safe_load((ROOT / "examples" / "minilm-pass.yaml").read_text())
    doc["metadata"]["name"] = "minilm-dash"
    data = doc["spec"]["data"]
    data["validation"] = {**data["calibration"], "split": "validation", "limit": 200}
    for src in (data["calibration"], data["validation"], data["evaluation"]):
        for f in ("queries", "corpus", "qrels"):
            src[f] = str(ROOT / "examples" / src[f])
    data["evaluation"]["limit"] = 60
    doc["spec"]["pruning"]["calibrationSamples"] = 64
    doc["spec"]["gates"]["maxLatencyRatio"] = 1.2  # a loaded 2-core box; latency is benchmarked
    doc["spec"]["serving"] = {"policy": "cascade", "targetAgreement": 0.9,
                              "shadowFraction": 0.1, "shadowWindow": 20,
                              "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5}}
    doc["spec"]["cost"] = {"usdPerReplicaHourFull": 4.0, "usdPerReplicaHourPruned": 4.0,
                           "usdPerRequestFull": 2e-5, "usdPerRequestPruned": 1e-5}
    path = tmp_path / "minilm-dash.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _rerank_bodies(n: int, seed: int = 3) -> list[dict]:
    """Package-search requests: a Debian synopsis against 8 long descriptions."""
    def rows(name: str) -> list[dict]:
        path = ROOT / "examples" / "data" / "debian" / name
        with gzip.open(path, "rt") as fh:
            return [json.loads(line) for line in fh]

    queries = [q for q in rows("queries.jsonl.gz") if q.get("split") == "test"]
    corpus = {d["id"]: d["text"] for d in rows("corpus.jsonl.gz")}
    rng, ids = random.Random(seed), list(corpus)
    bodies = []
    for q in rng.sample(queries, n):
        docs = [corpus[q["id"]]] if q["id"] in corpus else []
        docs += [corpus[i] for i in rng.sample(ids, 8 - len(docs))]
        rng.shuffle(docs)
        bodies.append({"query": q["text"], "documents": docs})
    return bodies


class Traffic:
    """Two client threads posting rerank requests to the router until stopped (bounded: at most
    `max_s` seconds). Every 5th request pins the full tier with `X-Tier: full`, as a client with
    a hard query would, so both tiers serve."""

    def __init__(self, url: str, max_s: float = 1200.0, threads: int = 2) -> None:
        self.url, self.deadline = url, time.monotonic() + max_s
        self.stop_event = threading.Event()
        self.sent, self.failures = 0, []
        self.bodies = _rerank_bodies(200)
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            if t.ident is not None:  # never started when the run failed first: keep its error
                t.join(timeout=70)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=60.0) as client:
            while not self.stop_event.is_set() and time.monotonic() < self.deadline:
                i, self.sent = self.sent, self.sent + 1
                headers = {"X-Tier": "full"} if i % 5 == 4 else {}
                try:
                    resp = client.post(f"{self.url}/v1/rerank", headers=headers,
                                       json=self.bodies[i % len(self.bodies)])
                    if resp.status_code != 200:
                        self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))


def _wait_serving(run: ManagedProcess, timeout: float) -> None:
    """Until `tierserve run` prints that it serves; fails at once (with its log) if it exits."""
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops" not in run.tail(400):
        if not run.alive():
            pytest.fail(f"`tierserve run` exited before serving: {run.describe_failure()}")
        if time.monotonic() > deadline:
            pytest.fail(f"`tierserve run` not serving after {timeout:.0f}s: "
                        f"{run.describe_failure()}")
        time.sleep(1.0)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_queries_against_tierserve_run(prometheus_factory, tmp_path: Path) -> None:
    serve_port, metrics_port = free_ports(2)
    manifest = _manifest(tmp_path)
    argv = [shutil.which("tierserve") or "tierserve", "run", str(manifest),
            "--out", str(tmp_path / "out"), "--requests", "40",
            "--port", str(serve_port), "--metrics-port", str(metrics_port)]
    # RAY_ADDRESS=local: a Ray of its own, never another test's cluster.
    env = {"RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    run = ManagedProcess("tierserve-run", argv, tmp_path / "run.log", env=env).start()
    traffic = Traffic(f"http://127.0.0.1:{serve_port}")
    try:
        _wait_serving(run, timeout=1200)
        prom = prometheus_factory([f"127.0.0.1:{metrics_port}"], rule_files=[RULES])
        savings = check_savings_agree(prom, run.tail(20000),
                                      f"http://127.0.0.1:{metrics_port}/metrics")
        print("savings agreement:", savings)
        traffic.start()
        counts = check_every_query(prom)
        assert all(n >= 1 for n in counts.values()), counts
        check_rules_healthy(prom)
        prom.wait_for("sum by (tier) (namespace_model_tier:tierserve_requests:rate5m)",
                      timeout=180, predicate=lambda r: len(r) == 2)  # both tiers serve
        soak = float(os.environ.get("TIERSERVE_DASHBOARD_SOAK_MIN", "0"))
        time.sleep(soak * 60)
        png = Path(os.environ.get("TIERSERVE_DASHBOARD_PNG") or tmp_path / "dashboard.png")
        proc = subprocess.run([sys.executable, str(RENDER), "--prometheus", prom.url,
                               "--minutes", str(max(2.0, soak)), "--step", "2", "--out", str(png),
                               "--title", "tierserve run (MiniLM, cascade + shadow): panels "
                                          "rendered from a real Prometheus"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert traffic.sent > 0 and not traffic.failures, traffic.failures[:5]
    finally:
        traffic.stop()
        run.stop(timeout=90, sig=signal.SIGINT)
