"""Serving benchmark, one run, side by side: router overhead, throughput, split vs cascade.

    python benchmarks/serving.py [--spec examples/minilm-pass.yaml] [--out runs/minilm-pass]

1. Router overhead: the same small rerank request sent (a) as a direct handle call to the pruned
   tier and (b) over HTTP through the proxy and the router (`X-Tier: pruned`). Overhead =
   (b) - (a) at p50 and p99; the router's own time (policy, metrics, tiers excluded, from its
   `x-tierserve-router-ms` header) is reported beside it.
   The fair baseline: the same request to a single-tier app (serving/single.py: the pruned tier
   as its own ingress) behind the same proxy; `overhead_ms.routed_minus_single_p50` is the
   router's hop in the default configuration (`serving.router.colocatePruned: true`, app
   `colo`: pruned answers inside the router replica), `separate_minus_single_p50` the same with
   a pruned deployment of its own (app `bench`), and `*_stages_p50` where the time goes
   (serving/stages.py headers).
2. Throughput at saturation on this machine's 2 cores: 16 concurrent HTTP clients, cascade.
3. Split vs cascade: every test-split rerank request answered by BOTH tiers through their
   handles (outputs and measured compute seconds); each policy row then applies the pure
   policy (`policy.py`, `calibration.py`) and cost model (`cost.py`) to those real answers.
   Savings = 1 - cost / all-full cost, priced by replica time. A live cascade row replays the
   same requests through the router and reads the stats actor.
4. Load table (`load`): 1/4/16/64 closed-loop clients for a one-query (1q) and a 32-text (32t)
   /v1/embed body against the default configuration (app `colo`): throughput, p50, p99, errors
   (503s from back-pressure count as errors).
5. Fault table (`faults`): the same load while the pruned, full, then router replica is killed,
   against app `bench` (a pruned replica of its own to kill; colocated, pruned dies with the
   router, which is the router row).
   (benchmarks/serving_load.py has both.)
`--only load,faults` runs a subset; `--smoke` runs tiny sizes (proves it works, numbers mean
nothing) into runs/serving-smoke.json. Merges into benchmarks/results/serving.json (other keys,
e.g. `frontier`, are kept).
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

    from tierserve.serving.capacity import ask_all

    out = {}
    for tier in ("pruned", "full"):
        h = serve.get_deployment_handle(tier, app_name=app)
        res = ask_all(h, [{"op": "rerank", "texts": [r.body["query"], *r.body["documents"]]}
                          for r in reqs])  # windowed: the tier's queue is bounded
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
    lines: list[str] = []
    o = result.get("overhead_ms") or {}
    if "direct_p50" in o:
        lines += ["| measure | p50 | p99 |", "|---|---|---|",
                  f"| direct handle call to pruned | {o['direct_p50']:.2f} ms | {o['direct_p99']:.2f} ms |",
                  f"| HTTP -> proxy -> router -> pruned | {o['routed_p50']:.2f} ms | {o['routed_p99']:.2f} ms |",
                  f"| router overhead (difference) | {o['overhead_p50']:.2f} ms | {o['overhead_p99']:.2f} ms |"]
    if "router_own_p50" in o:
        lines.append(f"| router's own time (tiers excluded) | {o['router_own_p50']:.3f} ms | "
                     f"{o['router_own_p99']:.3f} ms |")
    if "single_p50" in o:
        lines += [f"| HTTP -> proxy -> single-tier app (same model) | {o['single_p50']:.2f} ms | "
                  f"{o['single_p99']:.2f} ms |",
                  f"| routed - single (the router's hop, default: pruned colocated) | "
                  f"{o['routed_minus_single_p50']:.2f} ms | {o['routed_minus_single_p99']:.2f} ms |"]
    if "separate_minus_single_p50" in o:
        lines.append(f"| routed to a separate pruned deployment - single | "
                     f"{o['separate_minus_single_p50']:.2f} ms | "
                     f"{o['separate_minus_single_p99']:.2f} ms |")
    for mode in ("single", "routed", "separate"):
        if f"{mode}_stages_p50" in o:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in o[f"{mode}_stages_p50"].items())
            lines.append(f"\n{mode} stages, p50 ms: {parts}")
    if "throughput_rps" in result:
        lines += ["", f"throughput at saturation (16 clients, cascade): "
                  f"{result['throughput_rps']:.1f} requests/s"]
    if result.get("policies"):
        lines += ["", "| policy | threshold | pruned share | agreement | quality (hit@1) | savings |",
                  "|---|---|---|---|---|---|"]
        for r in result["policies"]:
            lines.append(f"| {r['policy']} | {r['threshold']:.4f} | {r['pruned_share']:.3f} | "
                         f"{r['agreement']:.3f} | {r['quality']:.3f} | {r['savings']:.1%} |")
    if result.get("load"):
        lines += ["", "| body | clients | req/s | p50 | p99 | errors |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['body']} | {r['clients']} | {r['rps']:.1f} | {r['p50_ms']:.0f} ms | "
                  f"{r['p99_ms']:.0f} ms | {r['errors']} |" for r in result["load"]]
    if result.get("faults"):
        lines += ["", "| kill | failed | requests | max extra wait | lost metric events | "
                  "failure window | recovered |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['kill']} | {r['failed']} | {r['requests']} | "
                  f"{r['max_extra_wait_s']:.2f} s | {r['lost_metric_events']} | "
                  f"{r.get('failure_window_s', float('nan')):.1f} s | {r.get('recovered', '-')} |"
                  for r in result["faults"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--frontier" in argv:  # the savings frontier: benchmarks/frontier.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import frontier

        return frontier.main([a for a in argv if a != "--frontier"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "examples/minilm-pass.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs/minilm-pass"))
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--overhead-n", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections of "
                    f"{', '.join(SECTIONS)}")
    ap.add_argument("--clients", default="1,4,16,64", help="load table levels")
    ap.add_argument("--load-seconds", type=float, default=20.0)
    ap.add_argument("--fault-clients", type=int, default=8)
    ap.add_argument("--fault-seconds", type=float, default=30.0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes to prove it runs; writes "
                    "runs/serving-smoke.json unless --result is given (numbers mean nothing)")
    ap.add_argument("--result", default=None, help="default benchmarks/results/serving.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.requests, args.overhead_n, args.seconds = 40, 30, 3.0
        args.clients, args.load_seconds, args.fault_seconds = "1,4", 3.0, 12.0
    dest = Path(args.result or ROOT / ("runs/serving-smoke.json" if args.smoke
                                       else "benchmarks/results/serving.json"))
    app = _start(args)
    if app is None:
        return 1
    result = _run_sections(args, set(args.only.split(",")), *app,
                           save=lambda partial: _merge(dest, partial))  # after each section
    result.update(machine={"cpus": os.cpu_count(), "processor": platform.processor(),
                           "load_avg_at_end": os.getloadavg()}, date=time.strftime("%Y-%m-%d"))
    merged = _merge(dest, result)
    print(_table(merged))
    print(f"wrote {dest}")
    from ray import serve

    serve.shutdown()
    import ray

    ray.shutdown()
    return 0


SECTIONS = ("overhead", "policies", "throughput", "load", "faults")


def _start(args):
    """The job (reused when cached), then the routed app `bench` at / on a local Serve."""
    import ray
    import yaml
    from ray import serve

    from tierserve.pruning.job import run_job
    from tierserve.pruning.spec import load_spec
    from tierserve.serving.app import build_app
    from tierserve.serving.embedded import absolute_model_uri, ensure_calibration

    spec, name = load_spec(args.spec)
    base = Path(args.spec).resolve().parent
    report, code = run_job(spec, args.out, name=name, base_dir=base)
    if code != 0:
        print("gates failed; nothing to serve", file=sys.stderr)
        return None
    report = ensure_calibration(report, spec, base, Path(args.out).resolve())
    # logical CPUs: 2 tiers + the single-tier baseline + the colocated app's router and full
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    doc = yaml.safe_load(Path(args.spec).read_text())
    spec_doc = absolute_model_uri(doc.get("spec", doc), base)
    separate = dict(spec_doc.get("serving") or {})  # a pruned deployment of its own (handles, faults)
    separate["router"] = {**(separate.get("router") or {}), "colocatePruned": False}
    serve.run(build_app({"name": "bench", "spec": {**spec_doc, "serving": separate}, "report": str(Path(args.out).resolve())}),
              name="bench", route_prefix="/")
    return spec, base, report, spec_doc


PORT = 8765


def _run_sections(args, sections: set[str], spec, base, report, spec_doc, save=None) -> dict:
    from ray import serve

    from tierserve.pruning.inputs import load_inputs
    from tierserve.serving.replay import replay_requests

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serving_load as sl

    url, say = f"http://127.0.0.1:{PORT}", (lambda m: print(m, file=sys.stderr))
    reqs = replay_requests(load_inputs(spec, base).evaluation, args.requests)
    result: dict = {"requests": len(reqs)}
    if "overhead" in sections:
        say(f"overhead: {args.overhead_n} alternating calls (direct handle; single-tier app) ...")
        ov = overhead(url, serve.get_deployment_handle("pruned", app_name="bench"), args.overhead_n)
        from tierserve.serving.single import build_single

        serve.run(build_single({"spec": spec_doc, "artifact": report["artifact"]["uri"]}),
                  name="single", route_prefix="/single")
        _run_default(spec_doc, args.out)
        ov.update(sl.overhead_vs_single(f"{url}/colo", f"{url}/single", args.overhead_n, url))
        serve.delete("single")
        result.update(router_overhead_p50_ms=ov["overhead_p50"],
                      router_overhead_p99_ms=ov["overhead_p99"], overhead_ms=ov)
        if save:
            save(result)
    if "policies" in sections:
        say(f"policies: {len(reqs)} requests through both tiers ...")
        labels = np.array([r.label for r in reqs])
        result.update(policies=policy_rows(both_tiers("bench", reqs), labels,
                                           report["calibration"]["threshold"]),
                      calibration=report["calibration"])
    if "throughput" in sections:
        say(f"throughput: {args.seconds:.0f} s at 16 clients ...")
        result["throughput_rps"] = asyncio.run(_saturate(url, [r.body for r in reqs], 16,
                                                         args.seconds))
    bodies = sl.bodies([r.body["query"] for r in reqs],
                       [d for r in reqs for d in r.body["documents"]])
    if "load" in sections:
        levels = [int(c) for c in args.clients.split(",")]
        _run_default(spec_doc, args.out)
        result["load"] = sl.load_table(f"{url}/colo", bodies, levels, args.load_seconds, say)
        if save:  # a later section that hangs or is killed loses only itself
            save(result)
    if "faults" in sections:
        result["faults"] = sl.fault_table(url, "bench", reqs[0].body, args.fault_clients,
                                          args.fault_seconds, say)
    return result


def _run_default(spec_doc: dict, out: str) -> None:
    """The spec's app as `tierserve` deploys it (`serving.router.colocatePruned`, default true),
    at /colo (app `colo`); once."""
    from ray import serve

    from tierserve.serving.app import build_app

    if "colo" in serve.status().applications:
        return
    serving = dict(spec_doc.get("serving") or {})
    serving["router"] = {**(serving.get("router") or {}), "colocatePruned": True}
    serve.run(build_app({"name": "colo", "spec": {**spec_doc, "serving": serving},
                         "report": str(Path(out).resolve())}), name="colo", route_prefix="/colo")


def _merge(dest: Path, result: dict) -> dict:
    """Merge into the existing file: other keys (e.g. the frontier's `frontier`) are kept, and
    `overhead_ms` is merged key by key."""
    old = json.loads(dest.read_text()) if dest.exists() else {}
    merged = {**old, **result}
    if "overhead_ms" in result:
        merged["overhead_ms"] = {**old.get("overhead_ms", {}), **result["overhead_ms"]}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


if __name__ == "__main__":
    sys.exit(main())
