"""The Serve application on a real local Ray + Serve with real MiniLM weights and Debian data.

One pruning job (validation split for the cascade calibration, test split held out) feeds one app
`ts-main` (cascade + rules); a second app `ts-degraded` serves a deliberately broken pruned
artifact (90% of encoder FLOPs removed by magnitude, no recovery) under shadow to show the
automatic shift to full. No doubles: every tier is a real Serve replica running real weights.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import serving_common
import yaml
from serving_common import deploy

from tierserve.pruning.data import load_retrieval
from tierserve.serving.capacity import ask_all
from tierserve.serving.policy import wilson_upper
from tierserve.serving.replay import replay_requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
serve_url = serving_common.serve_url  # the module's local Serve (a fixture)

TARGET = 0.95
CONTRACT_METRICS = (
    "tierserve_requests_total", "tierserve_request_duration_seconds", "tierserve_escalations_total",
    "tierserve_fallbacks_total", "tierserve_shadow_requests_total", "tierserve_shadow_agreement",
    "tierserve_shadow_fallback_active", "tierserve_agreement_gate", "tierserve_cost_usd_total",
    "tierserve_counterfactual_cost_usd_total", "tierserve_savings_usd",
    "tierserve_pruned_share", "tierserve_tier_up",
)


PER_SPLIT = {"calibration": 150, "validation": 300, "test": 200}  # queries (and their documents)


def _subset(repo_root, dest) -> dict[str, str]:
    """The frozen Debian files cut to the first PER_SPLIT queries of each split and their judged
    documents: the same real data, small enough for a loaded 2-core machine."""
    from tierserve.pruning.data import read_records

    base = repo_root / "examples/data/debian"
    queries, corpus, qrels = (read_records(base / f"{n}.jsonl.gz")
                              for n in ("queries", "corpus", "qrels"))
    kept, count = set(), dict.fromkeys(PER_SPLIT, 0)
    for q in queries:
        if count[q["split"]] < PER_SPLIT[q["split"]]:
            count[q["split"]] += 1
            kept.add(q["id"])
    rel = [r for r in qrels if r["query_id"] in kept]
    docs = {r["doc_id"] for r in rel}
    files = {}
    for name, rows in (("queries", [q for q in queries if q["id"] in kept]),
                       ("corpus", [d for d in corpus if d["id"] in docs]), ("qrels", rel)):
        files[name] = str(dest / f"{name}.jsonl")
        (dest / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def _spec(repo_root, dest) -> dict:
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())
    files = _subset(repo_root, dest)
    doc["spec"]["data"] = {
        split: {**files, "split": split} for split in ("calibration", "validation")}
    doc["spec"]["data"]["evaluation"] = {**files, "split": "test"}
    doc["spec"]["pruning"]["calibrationSamples"] = 64
    doc["spec"]["pruning"]["budget"] = {"kind": "flops", "target": 0.3, "batch": 8, "seqLen": 64}
    # the loosest latency gate (omitted it is 1.0): latency is the benchmark's business, not a
    # loaded test machine's
    doc["spec"]["gates"] = {"quality": [{"metric": "ndcg@10", "relative": 0.9}],
                            "maxLatencyRatio": 2.0}
    doc["spec"]["serving"] = {
        "policy": "cascade", "targetAgreement": TARGET, "prunedWeight": 0.5,
        "prunedTimeoutS": 3.0, "maxItems": 32, "maxRequestBytes": 20000,
        "rules": {"fullTenants": ["acme"], "fullPriorities": ["high"], "maxPrunedTokens": 200},
        "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5},
        "router": {"colocatePruned": False},  # a pruned deployment of its own: tests break and kill it
    }
    return doc


@pytest.fixture(scope="module")
def job(repo_root, tmp_path_factory):
    from tierserve.pruning.job import run_job
    from tierserve.pruning.spec import parse_spec

    out = tmp_path_factory.mktemp("serving-job")
    doc = _spec(repo_root, out)
    report, code = run_job(parse_spec(doc), out, name="ts-main")
    assert code == 0, report.get("gates")
    return doc, report, out


@pytest.fixture(scope="module")
def degraded(minilm_path, debian_retrieval, tmp_path_factory):
    """MiniLM with 90% of encoder FLOPs removed by magnitude and no recovery: a bad artifact."""
    from tierserve.pruning.artifact import save_pruned
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.structure import Budget
    from tierserve.pruning.tasks import load_task_model

    full = load_task_model(minilm_path, "embedding")
    cfg = PruneConfig(criterion="magnitude", budget=Budget(kind="flops", target=0.9), rescale=False)
    result = prune(full, list(debian_retrieval["calibration"].queries[:16]), cfg)
    path = tmp_path_factory.mktemp("degraded") / "model"
    save_pruned(result.model, path, structure=result.structure, source=str(minilm_path),
                criterion="magnitude", budget=result.config.budget)
    return path


@pytest.fixture(scope="module")
def main_app(job, serve_url):
    doc, report, out = job
    deploy("ts-main", doc, str(out))
    return f"{serve_url}/ts-main"


def _rerank_body(query="python web framework", docs=("a web framework in python", "chess")):
    return {"query": query, "documents": list(docs)}


def test_report_has_calibration_from_the_validation_set(job):
    _, report, _ = job
    cal = report["calibration"]
    assert cal["source"] == "validation" and cal["confidence"] == "topk_gap"
    assert cal["validation"]["agreement"] >= TARGET and cal["validation"]["n"] == 300
    assert 0.0 < cal["validation"]["pruned_share"] <= 1.0


def test_both_tiers_answer_from_the_graphs_the_job_judged(main_app, job, minilm_path):
    """The report's runtime is ONNX Runtime (the encoder default); each tier's replica answers
    from an ORT session over its graph, and what it answers is the eager model's vector."""
    import torch
    from ray import serve

    from tierserve.pruning.tasks import load_task_model

    _, report, _ = job
    rt = report["runtime"]
    assert rt["name"] == "onnxruntime" and set(rt["graphs"]) == {"full", "pruned"}
    assert all(p["passed"] for p in rt["parity"])
    assert any(g["metric"] == "runtime_parity" and g["passed"] for g in report["gates"])
    for tier in ("full", "pruned"):
        work = serve.get_deployment_handle(tier, app_name="ts-main").work.remote().result()
        assert work["runtime"] == "onnxruntime" and work["device"] == "cpu"
    texts = ["python web framework", "a library for reading and writing zip archives in C"]
    r = httpx.post(f"{main_app}/v1/embed", json={"texts": texts}, headers={"X-Tier": "full"},
                   timeout=60)
    assert r.status_code == 200, r.text
    served = np.asarray(r.json()["embeddings"])
    eager = load_task_model(minilm_path, "embedding")
    with torch.inference_mode():
        expected = eager.outputs(eager.batch(texts)).numpy()
    assert (served * expected).sum(1).min() >= 0.9999


def test_every_policy_routes_as_specified(main_app):
    c = httpx.Client(timeout=60)
    r = c.post(f"{main_app}/v1/rerank", json=_rerank_body()).json()
    assert r["tier"] in ("pruned", "full") and r["reason"].startswith("cascade_")
    assert (r["tier"] == "pruned") == (r["reason"] == "cascade_confident")
    assert r["confidence"] is not None and sorted(r["ranking"]) == [0, 1]
    for headers in ({"X-Tier": "full"}, {"X-Tenant": "acme"}, {"X-Priority": "high"}):
        r = c.post(f"{main_app}/v1/rerank", json=_rerank_body(), headers=headers).json()
        assert (r["tier"], r["reason"]) == ("full", "rule"), headers
    r = c.post(f"{main_app}/v1/rerank", json=_rerank_body(), headers={"X-Tier": "pruned"}).json()
    assert (r["tier"], r["reason"]) == ("pruned", "rule")
    long_doc = " ".join(["package"] * 300)  # > maxPrunedTokens (200)
    r = c.post(f"{main_app}/v1/rerank", json=_rerank_body(docs=["x", long_doc])).json()
    assert (r["tier"], r["reason"]) == ("full", "rule")
    tiers = [c.post(f"{main_app}/v1/embed", json={"texts": ["hello"]}).json() for _ in range(40)]
    # no cross-tier gate in this job's report: embed stays in one space, spec.serving.embedTier
    assert {(t["tier"], t["reason"]) for t in tiers} == {("full", "embed_tier")}
    assert len(tiers[0]["embeddings"][0]) == 384 and tiers[0]["truncated"] is False


def _rejected(app: str) -> dict[str, float]:
    text = httpx.get(f"{app}/metrics", timeout=30).text
    out = {}
    for ln in text.splitlines():
        if ln.startswith("tierserve_rejected_total{"):
            reason = ln.split('reason="')[1].split('"')[0]
            out[reason] = out.get(reason, 0.0) + float(ln.split()[-1])
    return out


def test_limits_and_errors_say_what_is_wrong_and_each_is_counted(main_app):
    before = _rejected(main_app)
    c = httpx.Client(timeout=60)
    r = c.post(f"{main_app}/v1/rerank", json=_rerank_body(docs=["d"] * 33))
    assert r.status_code == 422 and "limit is 32" in r.json()["detail"]
    r = c.post(f"{main_app}/v1/embed", json={"texts": ["x" * 30000]})
    assert r.status_code == 413 and "at most 20000" in r.json()["detail"]
    r = c.post(f"{main_app}/v1/embeddings", json={"model": "ts-main", "input": ["x" * 30000]})
    assert r.status_code == 413 and "at most 20000" in r.json()["error"]["message"]
    r = c.post(f"{main_app}/v1/rerank", json={"query": "q"})
    assert r.status_code == 422 and "documents" in r.text
    r = c.post(f"{main_app}/v1/classify", json={"texts": ["x"]})
    assert r.status_code == 400 and "embedding" in r.json()["detail"]
    assert "/v1/embed, /v1/rerank" in r.json()["detail"]
    r = c.post(f"{main_app}/v1/embed", content=b'{"texts": ["caf\xe9"]}',
               headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid UTF-8" in r.json()["detail"]
    r = c.post(f"{main_app}/v1/embeddings", json={"model": "ts-main", "input": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = c.post(f"{main_app}/v1/embeddings", json={"model": "other", "input": ["x"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # the script sent 2 oversized bodies and 6 invalid requests: the counters say exactly that
    want = {"too_large": 2, "invalid": 6}
    deadline = time.monotonic() + 20  # every router replica's refusals reach the stats actor
    while True:
        after = _rejected(main_app)
        got = {k: after.get(k, 0) - before.get(k, 0) for k in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == want, (got, after)
    assert c.get(f"{main_app}/openapi.json").json()["paths"].keys() >= {
        "/v1/embed", "/v1/rerank", "/v1/classify", "/healthz"}
    assert c.get(f"{main_app}/healthz").json()["status"] == "ok"


def _references(app_name: str, reqs) -> list[int]:
    from ray import serve

    full = serve.get_deployment_handle("full", app_name=app_name)
    replies = ask_all(full, [{"op": "rerank", "texts": [r.body["query"], *r.body["documents"]]}
                             for r in reqs])  # windowed: the tier's queue is bounded
    return [int(np.argmax(r["outputs"])) for r in replies]


async def _send_all(url: str, reqs, concurrency: int = 4, on_half=None) -> list:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(i, r):
            async with sem:
                if on_half is not None and i == len(reqs) // 2:
                    on_half()
                return await client.post(f"{url}/v1/rerank", json=r.body)
        return await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs)))


def _data(job, split: str):
    src = job[0]["spec"]["data"]["evaluation"]
    return load_retrieval(src["queries"], src["corpus"], src["qrels"], split=split)


def test_cascade_meets_calibrated_agreement_on_held_out_data(main_app, job):
    test = _data(job, "test")  # held out: the threshold came from the validation split
    reqs = replay_requests(test, 150, seed=1)
    replies = [r.json() for r in asyncio.run(_send_all(main_app, reqs))]
    refs = _references("ts-main", reqs)
    agree = sum(r["ranking"][0] == ref for r, ref in zip(replies, refs, strict=True))
    pruned = sum(r["tier"] == "pruned" for r in replies)
    print(f"held-out: agreement {agree}/{len(reqs)}, pruned share {pruned / len(reqs):.2f}")
    assert pruned > 0  # the cascade does keep traffic on pruned
    assert wilson_upper(agree, len(reqs)) >= TARGET  # not significantly below the target


def _kill_pruned_replica(app: str) -> None:
    import ray
    from ray.util.state import list_actors

    for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
        if a.class_name.startswith("ServeReplica:") and f"{app}:pruned" in a.class_name:
            ray.kill(ray.get_actor(a.name, namespace="serve"), no_restart=False)


def test_fallback_serves_every_request_when_pruned_breaks_or_dies(main_app, job):
    from ray import serve

    data = _data(job, "validation")
    reqs = replay_requests(data, 60, seed=2)
    pruned = serve.get_deployment_handle("pruned", app_name="ts-main")
    pruned.break_tier.remote(True).result()  # every pruned call now raises
    broken = asyncio.run(_send_all(main_app, reqs[:20]))
    pruned.break_tier.remote(False).result()
    assert all(r.status_code == 200 for r in broken)
    assert {r.json()["reason"] for r in broken} <= {"fallback", "rule"}
    assert all(r.json()["tier"] == "full" for r in broken)
    killed = asyncio.run(_send_all(main_app, reqs[20:], on_half=lambda: _kill_pruned_replica(
        "ts-main")))
    assert [r.status_code for r in killed] == [200] * len(killed)  # zero failed requests
    text = httpx.get(f"{main_app}/metrics", timeout=30).text
    fallbacks = [ln for ln in text.splitlines() if ln.startswith("tierserve_fallbacks_total{")]
    assert fallbacks and float(fallbacks[0].split()[-1]) >= 20


def test_metrics_follow_the_contract(main_app):
    text = httpx.get(f"{main_app}/metrics", timeout=30).text
    for name in CONTRACT_METRICS:
        assert f"# TYPE {name} " in text, name
    assert 'tierserve_requests_total{model="ts-main",reason="rule",tier="full"}' in text
    assert 'tierserve_agreement_gate{model="ts-main"} 0.95' in text
    assert 'tierserve_shadow_requests_total{model="ts-main"} 0.0' in text  # no shadow here
    assert 'tierserve_tier_up{model="ts-main",tier="full"} 1.0' in text
    savings = [ln for ln in text.splitlines() if ln.startswith("tierserve_savings_usd{")]
    assert savings and float(savings[0].split()[-1]) != 0.0


def _line(text: str, prefix: str) -> str:
    return next((ln for ln in text.splitlines() if ln.startswith(prefix)), f"{prefix} (none)")


def test_shadow_auto_fallback_moves_traffic_to_full(job, degraded, serve_url):
    doc, report, out = job
    doc = {**doc, "spec": {**doc["spec"], "serving": {
        **doc["spec"]["serving"], "policy": "split", "prunedWeight": 1.0, "shadowFraction": 1.0,
        "shadowWindow": 20, "targetAgreement": 0.99, "rules": {}}}}
    deploy("ts-degraded", doc, str(out), artifact=str(degraded))
    url = f"{serve_url}/ts-degraded"
    reqs = replay_requests(_data(job, "validation"), 300, seed=3)
    sent: list[dict] = []
    for i in range(0, len(reqs), 30):  # until every replica has shifted (bounded by the data)
        sent += [r.json() for r in asyncio.run(_send_all(url, reqs[i:i + 30], concurrency=2))]
        if sent[-1]["reason"] == "shadow_fallback":
            break
        time.sleep(2.0)  # pacing: lets the background shadow comparisons catch up
    text = httpx.get(f"{url}/metrics", timeout=30).text
    print(_line(text, "tierserve_shadow_agreement{"), _line(text, "tierserve_shadow_requests"))
    assert sent[0]["tier"] == "pruned" and sent[0]["reason"] == "split"
    assert (sent[-1]["tier"], sent[-1]["reason"]) == ("full", "shadow_fallback"), len(sent)
    assert 'tierserve_shadow_fallback_active{model="ts-degraded"} 1.0' in text
    assert float(_line(text, "tierserve_shadow_agreement{").split()[-1]) < 0.99
