"""Serving benchmark, one run, side by side: router overhead, throughput, split vs cascade.

    python benchmarks/serving.py [--spec examples/minilm-pass.yaml] [--out runs/minilm-pass]

1. Router overhead: the same small rerank request sent (a) as a direct handle call to the pruned
   tier and (b) over HTTP through the proxy and the router (`X-Tier: pruned`). Overhead =
   (b) - (a) at p50 and p99; the router's own time (policy, metrics, tiers excluded, from its
   `x-tierserve-router-ms` header) is reported beside it.
2. Throughput at saturation on this machine's 2 cores: 16 concurrent HTTP clients, cascade.
3. Split vs cascade: every test-split rerank request answered by BOTH tiers through their
   handles (outputs and measured compute seconds); each policy row then applies the pure
   policy (`policy.py`, `calibration.py`) and cost model (`cost.py`) to those real answers.
   Savings = 1 - cost / all-full cost, priced by replica time. A live cascade row replays the
   same requests through the router and reads the stats actor.
Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _pct(xs, p) -> float:
    return float(np.percentile(xs, p))


def overhead(url: str, handle, n: int) -> dict:
    import httpx

    body = {"query": "python web framework", "documents": ["a web framework", "a chess game"]}
    req = {"op": "rerank", "texts": [body["query"], *body["documents"]]}
    direct, routed, own = [], [], []
    with httpx.Client(timeout=60) as c:
        for _ in range(10):  # warm both paths
            handle.infer.remote(req).result()
            c.post(f"{url}/v1/rerank", json=body, headers={"X-Tier": "pruned"})
        for _ in range(n):  # alternate, so drift hits both alike
            t0 = time.perf_counter()
            handle.infer.remote(req).result()
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/rerank", json=body, headers={"X-Tier": "pruned"})
            routed.append(time.perf_counter() - t0)
            if "x-tierserve-router-ms" in r.headers:
                own.append(float(r.headers["x-tierserve-router-ms"]) / 1000)
    ms = {k: 1000 * v for k, v in {
        "direct_p50": _pct(direct, 50), "direct_p99": _pct(direct, 99),
        "routed_p50": _pct(routed, 50), "routed_p99": _pct(routed, 99)}.items()}
    ms["overhead_p50"] = ms["routed_p50"] - ms["direct_p50"]
    ms["overhead_p99"] = ms["routed_p99"] - ms["direct_p99"]
    if own:
        ms["router_own_p50"], ms["router_own_p99"] = 1000 * _pct(own, 50), 1000 * _pct(own, 99)
    return ms


async def _saturate(url: str, bodies: list[dict], clients: int, seconds: float) -> float:
    import httpx

    done, stop = 0, time.perf_counter() + seconds

    async def worker(i: int, client):
        nonlocal done
        k = i
        while time.perf_counter() < stop:
            r = await client.post(f"{url}/v1/rerank", json=bodies[k % len(bodies)])
            r.raise_for_status()
            done, k = done + 1, k + clients
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(i, client) for i in range(clients)))
    return done / (time.perf_counter() - t0)


def both_tiers(app: str, reqs) -> dict:
    """Each request through each tier's handle: outputs and compute seconds."""
    from ray import serve

    out = {}
    for tier in ("pruned", "full"):
        h = serve.get_deployment_handle(tier, app_name=app)
        calls = [h.infer.remote({"op": "rerank", "texts": [r.body["query"], *r.body["documents"]]})
                 for r in reqs]
        res = [c.result() for c in calls]
        out[tier] = {"scores": [x["outputs"] for x in res],
                     "compute_s": np.array([x["compute_s"] for x in res])}
    return out


def policy_rows(tiers: dict, labels: np.ndarray, cal_threshold: float) -> list[dict]:
    from tierserve.pruning.calibration import cascade_outcome, topk_gap

    p_top = np.array([int(np.argmax(s)) for s in tiers["pruned"]["scores"]])
    f_top = np.array([int(np.argmax(s)) for s in tiers["full"]["scores"]])
    cp, cf = tiers["pruned"]["compute_s"], tiers["full"]["compute_s"]
    conf = np.array([topk_gap(np.asarray(s)[None, :])[0] for s in tiers["pruned"]["scores"]])
    agree, all_full = p_top == f_top, cf.sum()
    rows = []
    rng = np.random.default_rng(0)
    draws = rng.random(len(agree))
    for w in (0.5, 0.8, 1.0):
        on_p = draws < w
        answer = np.where(on_p, p_top, f_top)
        cost = np.where(on_p, cp, cf).sum()
        rows.append({"policy": "split", "threshold": w, "pruned_share": float(on_p.mean()),
                     "agreement": float(np.mean(answer == f_top)),
                     "quality": float(np.mean(answer == labels)), "savings": 1 - cost / all_full})
    qs = sorted({0.0, cal_threshold, *np.quantile(conf, [0.1, 0.3, 0.5, 0.7]).tolist()})
    for t in qs:
        keep = conf >= t
        answer = np.where(keep, p_top, f_top)
        cost = cp.sum() + cf[~keep].sum()  # pruned always runs; escalations also pay full
        a, share = cascade_outcome(conf, agree, t)
        rows.append({"policy": "cascade" + (" (calibrated)" if t == cal_threshold else ""),
                     "threshold": float(t), "pruned_share": share, "agreement": a,
                     "quality": float(np.mean(answer == labels)), "savings": 1 - cost / all_full})
    return rows


def _table(result: dict) -> str:
    o = result["overhead_ms"]
    lines = ["| measure | p50 | p99 |", "|---|---|---|",
             f"| direct handle call to pruned | {o['direct_p50']:.2f} ms | {o['direct_p99']:.2f} ms |",
             f"| HTTP -> proxy -> router -> pruned | {o['routed_p50']:.2f} ms | {o['routed_p99']:.2f} ms |",
             f"| router overhead (difference) | {o['overhead_p50']:.2f} ms | {o['overhead_p99']:.2f} ms |"]
    if "router_own_p50" in o:
        lines.append(f"| router's own time (tiers excluded) | {o['router_own_p50']:.3f} ms | "
                     f"{o['router_own_p99']:.3f} ms |")
    lines += ["", f"throughput at saturation (16 clients, cascade): {result['throughput_rps']:.1f} "
              "requests/s", "", "| policy | threshold | pruned share | agreement | quality (hit@1) "
              "| savings |", "|---|---|---|---|---|---|"]
    for r in result["policies"]:
        lines.append(f"| {r['policy']} | {r['threshold']:.4f} | {r['pruned_share']:.3f} | "
                     f"{r['agreement']:.3f} | {r['quality']:.3f} | {r['savings']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples/minilm-pass.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs/minilm-pass"))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--overhead-n", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args(argv)

    import ray
    import yaml
    from ray import serve

    from tierserve.pruning.inputs import load_inputs
    from tierserve.pruning.job import run_job
    from tierserve.pruning.spec import load_spec
    from tierserve.serving.app import build_app
    from tierserve.serving.embedded import _absolute_model_uri, _ensure_calibration
    from tierserve.serving.replay import replay_requests

    spec, name = load_spec(args.spec)
    base = Path(args.spec).resolve().parent
    report, code = run_job(spec, args.out, name=name, base_dir=base)
    if code != 0:
        print("gates failed; nothing to serve", file=sys.stderr)
        return code
    report = _ensure_calibration(report, spec, base, Path(args.out).resolve())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = 8765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    doc = yaml.safe_load(Path(args.spec).read_text())
    spec_doc = _absolute_model_uri(doc.get("spec", doc), base)
    serve.run(build_app({"name": "bench", "spec": spec_doc, "report": str(Path(args.out).resolve())}),
              name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    reqs = replay_requests(load_inputs(spec, base).evaluation, args.requests)
    labels = np.array([r.label for r in reqs])
    print(f"overhead: {args.overhead_n} alternating calls ...", file=sys.stderr)
    ov = overhead(url, serve.get_deployment_handle("pruned", app_name="bench"), args.overhead_n)
    print(f"policies: {len(reqs)} requests through both tiers ...", file=sys.stderr)
    rows = policy_rows(both_tiers("bench", reqs), labels, report["calibration"]["threshold"])
    print(f"throughput: {args.seconds:.0f} s at 16 clients ...", file=sys.stderr)
    rps = asyncio.run(_saturate(url, [r.body for r in reqs], 16, args.seconds))
    result = {"router_overhead_p50_ms": ov["overhead_p50"], "router_overhead_p99_ms": ov["overhead_p99"],
              "throughput_rps": rps, "policies": rows, "overhead_ms": ov,
              "calibration": report["calibration"], "requests": len(reqs),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                          "load_avg_at_end": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d")}
    dest = ROOT / "benchmarks/results/serving.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(result))
    print(f"wrote {dest}")
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
