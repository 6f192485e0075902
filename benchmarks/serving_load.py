"""Load, fault and hop-overhead measurements for benchmarks/serving.py.

- `load_table`: closed-loop HTTP clients at each level, for a one-query (`1q`) and a 32-text
  (`32t`) /v1/embed body: rows {body, clients, rps, p50_ms, p99_ms, errors}.
- `fault_table`: closed-loop /v1/rerank load (routed by the spec's policy: cascade asks pruned
  first) while one replica is killed (pruned, full, router): rows
  {kill, failed, requests, max_extra_wait_s, lost_metric_events} (+ known_after_s,
  max_extra_wait_from_kill_s, failure_window_s: first to last failed answer, recovered: answers
  came back after it). `max_extra_wait_s` is the longest wait beyond the normal p50
  counted from when the death is known (the first answer that shows it: a fallback, a 503, a
  failure); `max_extra_wait_from_kill_s` counts from the kill instead (the old measure);
  `lost_metric_events` is the answered requests missing from `tierserve_requests_total`.
- `overhead_vs_single`: the same rerank request (`X-Tier: pruned`) through the router as deployed
  by default (pruned inside the router replica, `colocatePruned`), through a router with a
  separate pruned deployment, and to a single-tier app behind the same proxy (serving/single.py),
  alternated: routed - single, with each routed path's stage breakdown.
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
                       headers=None) -> list[tuple[float, float, int, str]]:
    """(start, seconds, status, reason) of every request `clients` loops sent in `seconds`."""
    import httpx

    out: list[tuple[float, float, int]] = []
    stop = time.monotonic() + seconds

    async def worker(client):
        while time.monotonic() < stop:
            t0 = time.monotonic()
            reason = ""
            try:
                r = await client.post(url, json=body, headers=headers or {})
                status = r.status_code
                reason = r.json().get("reason", "") if status == 200 else ""
            except (httpx.HTTPError, ValueError):
                status = 599
            out.append((t0, time.monotonic() - t0, status, reason))

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
            ok = [d for _, d, s, _ in res if s == 200]
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
    p50 = _pct([d for _, d, s, _ in normal if s == 200], 50)
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
        answered = sum(s == 200 for _, _, s, _ in res)
        after_kill = [d for t, d, s, _ in res if s == 200 and t >= killed[0]]
        known = _known(kill, res, killed[0])
        rows.append({"kill": kill, "failed": len(res) - answered, "requests": len(res),
                     "max_extra_wait_s": _extra_after(res, known, p50),
                     "known_after_s": known - killed[0],
                     "max_extra_wait_from_kill_s": max(0.0, max(after_kill, default=p50) - p50),
                     "lost_metric_events": max(0, answered - int(_requests_total(url) - before)),
                     **_window(res)})
    return rows


def _window(res: list) -> dict:
    """How long clients saw failures (first to last failed answer) and whether answers came
    back after it without a restart by hand."""
    bad = sorted(t + d for t, d, s, _ in res if s != 200)
    if not bad:
        return {"failure_window_s": 0.0, "recovered": True}
    return {"failure_window_s": bad[-1] - bad[0],
            "recovered": any(s == 200 and t >= bad[-1] for t, _, s, _ in res)}


def _known(kill: str, res: list, killed_at: float) -> float:
    """When the death is known to the clients: the first answer that shows it (a `fallback`
    for pruned, a 503 for full, a failure for the router); the kill itself if none does."""
    def shows(s: int, reason: str) -> bool:
        return {"pruned": reason == "fallback", "full": s == 503}.get(kill, s != 200)
    ends = [t + d for t, d, s, reason in res if t + d >= killed_at and shows(s, reason)]
    return min(ends, default=killed_at)


def _extra_after(res: list, known: float, p50: float) -> float:
    """The longest wait beyond normal (p50) counted from when the death is known: a request
    started before then counts only its time after it."""
    waits = [t + d - max(t, known) for t, d, _, _ in res if t + d > known]
    return max(0.0, max(waits, default=0.0) - p50)


def _timed(c, url: str, body: dict, headers: dict) -> tuple[float, dict]:
    """Client-side seconds, and the router's stage breakdown (ms) with `client` and `router`."""
    from tierserve.serving.stages import parse_stages

    t0 = time.perf_counter()
    r = c.post(url, json=body, headers=headers)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    stages = parse_stages(r.headers.get("x-tierserve-stages"))
    if "x-tierserve-router-ms" in r.headers:
        stages["router"] = float(r.headers["x-tierserve-router-ms"])
    return seconds, stages


def _breakdown(samples: list[dict], client_s: list[float]) -> dict:
    """p50 of each stage (ms); `outside` = client time - router - tier waits: the proxy, FastAPI
    parsing, response validation and JSON (what a single-tier app pays too)."""
    keys = sorted({k for s in samples for k in s})
    out = {k: _pct([s.get(k, 0.0) for s in samples], 50) for k in keys}
    waits = [sum(v for k, v in s.items() if k.endswith(("_hop", "_replica"))) for s in samples]
    out["outside"] = _pct([1000 * c - s.get("router", 0.0) - w
                           for c, s, w in zip(client_s, samples, waits, strict=True)], 50)
    return out


def overhead_vs_single(url: str, single_url: str, n: int, separate_url: str | None = None) -> dict:
    """The same rerank request through the router as deployed by default (`url`: pruned served
    inside the router replica), through a router with a pruned deployment of its own
    (`separate_url`, when given) and to a single-tier app behind the same proxy, alternated so
    load drift hits all alike; each routed path's stage breakdown from its headers
    (serving/stages.py)."""
    import httpx

    body = {"query": "python web framework", "documents": ["a web framework", "a chess game"]}
    paths = {"routed": (f"{url}/v1/rerank", PRUNED_HDR), "single": (f"{single_url}/v1/rerank", {})}
    if separate_url:
        paths["separate"] = (f"{separate_url}/v1/rerank", PRUNED_HDR)
    got: dict[str, tuple[list, list]] = {k: ([], []) for k in paths}
    with httpx.Client(timeout=60) as c:
        for i in range(n + 10):  # the first 10 warm every path
            for name, (u, h) in paths.items():
                seconds, stages = _timed(c, u, body, h)
                if i >= 10:
                    got[name][0].append(seconds)
                    got[name][1].append(stages)
    ms = {"single_p50": 1000 * _pct(got["single"][0], 50),
          "single_p99": 1000 * _pct(got["single"][0], 99)}
    for name in paths.keys() - {"single"}:
        lat, stages = got[name]
        tag = "routed_single" if name == "routed" else name
        ms[f"{tag}_p50"], ms[f"{tag}_p99"] = 1000 * _pct(lat, 50), 1000 * _pct(lat, 99)
        ms[f"{name}_minus_single_p50"] = ms[f"{tag}_p50"] - ms["single_p50"]
        ms[f"{name}_minus_single_p99"] = ms[f"{tag}_p99"] - ms["single_p99"]
        ms[f"{name}_stages_p50"] = _breakdown(stages, lat)
    ms["router_own_single_p50"] = ms["routed_stages_p50"].get("router", float("nan"))
    ms["single_stages_p50"] = _breakdown(got["single"][1], got["single"][0])  # same headers
    return ms


PRUNED_HDR = {"X-Tier": "pruned"}
