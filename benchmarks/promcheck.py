"""Evaluate one PromQL expression with a real Prometheus (Debian's `prometheus`) scraping a target.

    value, note = evaluate("127.0.0.1:8767", expr, want=1.23e-4)

Used by benchmarks/frontier.py to evaluate the dashboard's savings panel against the router's
/metrics after a replay. Returns (None, why) when no Prometheus binary is installed or the query
never returns data; polls until the value is within `rel` of `want` (the scrape caught up).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["evaluate"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(url: str, expr: str) -> float | None:
    qs = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=5) as resp:
            body = json.loads(resp.read().decode())
    except OSError:
        return None  # not up yet
    result = body.get("data", {}).get("result") or []
    return sum(float(r["value"][1]) for r in result) if result else None


def evaluate(target: str, expr: str, want: float | None = None, rel: float = 1e-9,
             timeout: float = 60.0) -> tuple[float | None, str | None]:
    """(value of `expr` once Prometheus scraped `target`, None) or (None, why)."""
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                            if Path("/usr/bin/prometheus").exists() else None)
    if not binary:
        return None, "no prometheus binary (Debian's `prometheus` package)"
    work = Path(tempfile.mkdtemp(prefix="frontier-prom-"))
    (work / "prometheus.yml").write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "frontier", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [target]}]}]}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    value, deadline = None, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            value = _query(url, expr)
            if value is not None and (want is None
                                      or abs(value - want) <= rel * max(1.0, abs(want))):
                return value, None
            time.sleep(0.5)
        return value, f"no matching value within {timeout:.0f}s (last {value})"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
