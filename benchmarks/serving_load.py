"""Load, fault and hop-overhead measurements for benchmarks/serving.py (issue 14).

- `load_table`: closed-loop HTTP clients at each level, for a one-query (`1q`) and a 32-text
  (`32t`) /v1/embed body: rows {body, clients, rps, p50_ms, p99_ms, errors}.
- `fault_table`: closed-loop /v1/rerank load (routed by the spec's policy: cascade asks pruned
  first) while one replica is killed (pruned, full, router): rows
  {kill, failed, requests, max_extra_wait_s, lost_metric_events}. `max_extra_wait_s` is the
  slowest answer started after the kill minus the normal p50; `lost_metric_events` is the answered
  requests missing from `tierserve_requests_total`.
- `overhead_vs_single`: the same rerank request through the router (`X-Tier: pruned`) and to a
  single-tier app behind the same proxy (serving/single.py), alternated: routed - single.
"""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np

__all__ = ["fault_table", "load_table", "overhead_vs_single"]


def _pct(xs, p) -> float:
    return float(np.percentile(xs, p)) if len(xs) else float("nan")


async def _closed_loop(url: str, body: dict, clients: int, seconds: float, on_start=None,
                       headers=None) -> list[tuple[float, float, int]]:
    """(start, seconds, status) of every request `clients` loops sent in `seconds`."""
    import httpx

    out: list[tuple[float, float, int]] = []
    stop = time.monotonic() + seconds

    async def worker(client):
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                status = (await client.post(url, json=body, headers=headers or {})).status_code
            except httpx.HTTPError:
                status = 599
            out.append((t0, time.monotonic() - t0, status))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(clients)]
        if on_start is not None:
            await asyncio.sleep(seconds / 3)
            await asyncio.to_thread(on_start)
        await asyncio.gather(*tasks)
    return out


def bodies(queries: list[str], texts: list[str]) -> dict[str, dict]:
    return {"1q": {"texts": queries[:1]}, "32t": {"texts": (texts * 32)[:32]}}


def load_table(url: str, body_of: dict[str, dict], levels: list[int], seconds: float,
               log=print) -> list[dict]:
    rows = []
    for name, body in body_of.items():
        for clients in levels:
            log(f"load: {name} at {clients} clients for {seconds:.0f} s ...")
            t0 = time.monotonic()
            res = asyncio.run(_closed_loop(f"{url}/v1/embed", body, clients, seconds))
            elapsed = time.monotonic() - t0
            ok = [d for _, d, s in res if s == 200]
            rows.append({"body": name, "clients": clients, "rps": len(ok) / elapsed,
                         "p50_ms": 1000 * _pct(ok, 50), "p99_ms": 1000 * _pct(ok, 99),
                         "errors": len(res) - len(ok)})
    return rows


def _requests_total(url: str) -> float:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(m.group(1)) for m in re.finditer(r"^tierserve_requests_total\{.*\} (\S+)$",
                                                     text, re.M))


def replica(app: str, deployment: str):
    """The actor handle of the deployment's live replica (found before the load: the state API
    is slow on a loaded machine, and the kill must land when the load says so)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"  # Serve's replica actor names (no dashboard
    for a in ray.util.list_named_actors(all_namespaces=True):  # needed, unlike the state API)
        if a["namespace"] == "serve" and a["name"].startswith(prefix):
            return ray.get_actor(a["name"], namespace="serve")
    raise RuntimeError(f"no live replica of {app}:{deployment}")


def wait_healthy(url: str, within_s: float = 300.0) -> None:
    import httpx

    stop = time.monotonic() + within_s
    while time.monotonic() < stop:
        try:
            h = httpx.get(f"{url}/healthz", timeout=10).json()
            if set(h.get("circuits", {"x": "closed"}).values()) == {"closed"}:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not recover within {within_s} s")


def fault_table(url: str, app: str, body: dict, clients: int, seconds: float,
                log=print) -> list[dict]:
    """`body`: a /v1/rerank body."""
    normal = asyncio.run(_closed_loop(f"{url}/v1/rerank", body, clients, min(seconds, 5.0)))
    p50 = _pct([d for _, d, s in normal if s == 200], 50)
    rows = []
    for kill in ("pruned", "full", "router"):
        wait_healthy(url)
        log(f"faults: kill {kill} under {clients} clients ...")
        time.sleep(1.0)
        import ray

        before, killed, victim = _requests_total(url), [], replica(app, kill)
        res = asyncio.run(_closed_loop(
            f"{url}/v1/rerank", body, clients, seconds,
            on_start=lambda v=victim, at=killed: (at.append(time.monotonic()),
                                                  ray.kill(v, no_restart=False))))
        wait_healthy(url)
        time.sleep(1.0)  # the stats actor has every answered request by now (pushed at answer)
        answered = sum(s == 200 for _, _, s in res)
        after_kill = [d for t, d, s in res if s == 200 and t >= killed[0]]
        rows.append({"kill": kill, "failed": len(res) - answered, "requests": len(res),
                     "max_extra_wait_s": max(0.0, max(after_kill, default=p50) - p50),
                     "lost_metric_events": max(0, answered - int(_requests_total(url) - before))})
    return rows


def overhead_vs_single(url: str, single_url: str, n: int) -> dict:
    """Alternating calls, so load drift hits both alike; the router's own time from its header."""
    import httpx

    body = {"query": "python web framework", "documents": ["a web framework", "a chess game"]}
    routed, single, own = [], [], []
    with httpx.Client(timeout=60) as c:
        for _ in range(10):  # warm both paths
            c.post(f"{url}/v1/rerank", json=body, headers={"X-Tier": "pruned"})
            c.post(f"{single_url}/v1/rerank", json=body)
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/rerank", json=body, headers={"X-Tier": "pruned"})
            routed.append(time.perf_counter() - t0)
            if "x-tierserve-router-ms" in r.headers:
                own.append(float(r.headers["x-tierserve-router-ms"]) / 1000)
            t0 = time.perf_counter()
            c.post(f"{single_url}/v1/rerank", json=body).raise_for_status()
            single.append(time.perf_counter() - t0)
    ms = {"single_p50": _pct(single, 50), "single_p99": _pct(single, 99),
          "routed_single_p50": _pct(routed, 50), "routed_single_p99": _pct(routed, 99),
          "router_own_single_p50": _pct(own, 50)}
    ms = {k: 1000 * v for k, v in ms.items()}
    ms["routed_minus_single_p50"] = ms["routed_single_p50"] - ms["single_p50"]
    ms["routed_minus_single_p99"] = ms["routed_single_p99"] - ms["single_p99"]
    return ms
