"""Pure parts of the request path (issue 14): capacity from the spec, time budgets, circuits,
micro-batch bookkeeping, the tier's device choice, and the HTTP limits middleware (a real FastAPI
app in-process: no Serve needed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tierserve.pruning.spec import RouterSpec, TierSpec
from tierserve.serving.api import EmbedRequest, Limits
from tierserve.serving.app import router_options, tier_options
from tierserve.serving.breaker import MISSES_TO_OPEN, Circuit, is_death
from tierserve.serving.capacity import TimeBudget, estimate_tokens, tier_capacity
from tierserve.serving.microbatch import plan_pieces, replies_from
from tierserve.serving.tier import pick_device


def test_capacity_follows_replicas_and_batch_sizes():
    t = TierSpec(replicas=2, max_batch_size=16)
    opts = tier_options(t, retry_after_s=3)
    assert opts["max_ongoing_requests"] == 32  # 2 x batch: one running, one filling
    assert opts["max_queued_requests"] == 2 * 32 * 2
    assert opts["backpressure_config"] == {"status_code": 503, "retry_after_s": 3}
    auto = tier_options(TierSpec(replicas=1, max_replicas=4, max_batch_size=8))
    assert auto["autoscaling_config"]["target_ongoing_requests"] == 8  # = ongoing / 2
    assert auto["max_queued_requests"] == 2 * 16 * 4  # sized for the most replicas
    over = tier_options(TierSpec(max_ongoing_requests=5, max_queued_requests=7))
    assert (over["max_ongoing_requests"], over["max_queued_requests"]) == (5, 7)


def test_router_admits_what_its_tiers_can_hold():
    full, pruned = TierSpec(max_batch_size=16), TierSpec(replicas=2, max_batch_size=16)
    holds = (32 * 1 + 64) + (32 * 2 + 128)  # each tier: ongoing x replicas + queued
    r = router_options(RouterSpec(colocate_pruned=False), full, pruned)  # pruned: own replicas
    assert r["max_ongoing_requests"] == holds and r["max_queued_requests"] == holds
    assert r["backpressure_config"]["retry_after_s"] == 1.0
    two = router_options(RouterSpec(replicas=2, colocate_pruned=False), full, pruned)
    assert two["max_ongoing_requests"] == holds // 2 and two["num_replicas"] == 2
    tiny = router_options(RouterSpec(), TierSpec(max_batch_size=1), TierSpec(max_batch_size=1))
    assert tiny["max_ongoing_requests"] == 16  # never below the floor
    own = router_options(RouterSpec(max_ongoing_requests=3, max_queued_requests=4,
                                    colocate_pruned=False), full, pruned)
    assert (own["max_ongoing_requests"], own["max_queued_requests"]) == (3, 4)
    assert tier_capacity(16, 0, None).replicas == 1  # scale-to-zero still sizes one replica


def test_timeouts_scale_with_items_times_tokens_and_refuse_the_impossible():
    assert estimate_tokens(["abcd" * 10, "x"], 128) == 12 + 2
    assert estimate_tokens(["word " * 1000], 128) == 128  # capped at maxLength per item
    b = TimeBudget(pruned_s=5.0, full_s=30.0, per_1k_tokens_s=1.0, max_s=60.0)
    assert b.pruned(0) == 5.0 and b.pruned(4000) == pytest.approx(9.0)
    assert b.full(32 * 128) == pytest.approx(34.096)
    assert b.refusal(10_000) is None
    msg = b.refusal(40_000)
    assert msg is not None and "spec.serving.maxTimeoutS" in msg and "60 s" in msg


def test_circuit_opens_once_and_closes_on_a_probe():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    c = Circuit()
    assert not c.is_open and c.open_for(5.0) == 0.0
    assert c.trip(10.0, "ActorDiedError") and c.is_open
    assert not c.trip(11.0, "again")  # already open: the first reason stays
    assert c.reason == "ActorDiedError" and c.open_for(12.5) == 2.5
    assert c.close() and not c.is_open and not c.close()
    assert c.missed() == 1 and c.missed() == MISSES_TO_OPEN  # silence, twice: the router trips
    c.answered()
    assert c.misses == 0
    # busy, not dead: a call sent before the tier's latest answer timed out -> no miss
    sent = time.monotonic() - 1.0
    c.answered()
    assert c.missed(sent) == 0 and c.missed(sent) == 0
    c.answered()
    assert c.missed(time.monotonic() + 1.0) == 1  # nothing answered since it was sent: silence
    # two clients straddle the replica's last answer, then it dies: the first timeout overlapped
    # that answer (no miss), the second waited in silence (a miss): both count, the router trips
    c.answered()
    assert c.missed(sent) == 0 and c.missed(time.monotonic() + 1.0) == MISSES_TO_OPEN
    c.answered()
    assert c.misses == c.unanswered == 0
    assert is_death(ActorDiedError()) and is_death(ActorUnavailableError("gone", b"\0" * 16))
    assert not is_death(RuntimeError("one call failed"))
    assert not is_death(RayTaskError("infer", "traceback", RuntimeError("x")))


def test_micro_batches_reassemble_and_leave_cancelled_requests_without_rows():
    reqs = [{"op": "embed", "texts": ["a", "b"]}, {"op": "rerank", "texts": ["q", "d1", "d2"]}]
    pieces = plan_pieces(reqs, cross=True)
    assert [p.text for p in pieces] == ["a", "b", ("q", "d1"), ("q", "d2")]
    for i, p in enumerate(pieces[:3]):  # the last piece never ran (its request was cancelled)
        p.row, p.tokens, p.seconds, p.truncated = np.full(2, i), 3, 0.5, i == 1
    done, cancelled = replies_from(pieces, 2)
    assert done["rows"].shape == (2, 2) and done["input_tokens"] == 6 and done["truncated"] == 1
    assert done["compute_s"] == 1.0
    assert cancelled["rows"] is None and cancelled["compute_s"] == 0.5  # what really ran


def test_a_tier_with_gpus_runs_on_cuda_when_visible():
    assert pick_device(1.0, cuda_available=True) == "cuda"
    assert pick_device(0.5, cuda_available=True) == "cuda"
    assert pick_device(0.0, cuda_available=True) == "cpu"  # CPU path unchanged
    assert pick_device(1.0, cuda_available=False) == "cpu"
    assert pick_device(1.0, cuda_available=True, task="text-generation") == "cpu"


def _limited(limit: int) -> TestClient:
    app = FastAPI()
    app.state.max_request_bytes = limit
    app.add_middleware(Limits)

    @app.post("/v1/embed")
    async def embed(body: EmbedRequest) -> dict:
        return {"n": len(body.texts)}

    return TestClient(app)


def test_limits_middleware_names_each_problem():
    c = _limited(2000)
    assert c.post("/v1/embed", json={"texts": ["héllo"]}).json() == {"n": 1}
    r = c.post("/v1/embed", content=b'{"texts": ["\xff"]}',
               headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid UTF-8: byte 0xff at offset 12" in r.json()["detail"]
    r = c.post("/v1/embed", json={"texts": ["x" * 3000]})
    assert r.status_code == 413 and "at most 2000" in r.json()["detail"]
    r = c.post("/v1/embed", json={"texts": [""]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "texts", 0]
    assert c.get("/openapi.json").status_code == 200  # GETs pass straight through


def test_the_serving_benchmark_merges_into_the_result_file(tmp_path, repo_root):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("bench_serving", repo_root / "benchmarks/serving.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    dest = tmp_path / "serving.json"
    dest.write_text(json.dumps({"frontier": [{"task": "rerank"}], "overhead_ms": {"direct_p50": 1.0}}))
    bench._merge(dest, {"load": [], "overhead_ms": {"routed_minus_single_p50": 0.5}})
    out = json.loads(dest.read_text())
    assert out["frontier"] == [{"task": "rerank"}] and out["load"] == []
    assert out["overhead_ms"] == {"direct_p50": 1.0, "routed_minus_single_p50": 0.5}


def test_stage_breakdown_splits_each_tier_wait_into_its_own_time_and_the_hop():
    from tierserve.serving.stages import add_stages, parse_stages, stage_header

    st = {"decide": 0.0412}
    add_stages(st, "pruned", 0.025, {"replica_s": 0.020})
    add_stages(st, "full", 0.010, {})  # a reply without replica_s: all of it is the hop
    add_stages(st, "full", 0.004, {"replica_s": 0.005})  # clock skew never makes a negative hop
    assert st == pytest.approx({"decide": 0.0412, "pruned_replica": 20.0, "pruned_hop": 5.0,
                                "full_replica": 5.0, "full_hop": 10.0})
    assert parse_stages(stage_header(st)) == pytest.approx(st, abs=1e-3)
    assert parse_stages(None) == {}


def test_a_colocated_router_carries_the_pruned_tier_s_resources_and_replicas():
    full, pruned = TierSpec(), TierSpec(replicas=2, cpus=2.0, gpus=1.0)
    opts = router_options(RouterSpec(), full, pruned)  # colocated: the default
    assert opts["num_replicas"] == 2
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}
    separate = router_options(RouterSpec(colocate_pruned=False), full, pruned)
    assert "ray_actor_options" not in separate  # a 0-CPU router
    auto = router_options(RouterSpec(), full, TierSpec(replicas=0, max_replicas=4))
    assert "num_replicas" not in auto  # scales as the pruned tier would have
    assert (auto["autoscaling_config"]["min_replicas"], auto["autoscaling_config"]["max_replicas"]) == (1, 4)


def test_fault_wait_counts_from_when_the_death_is_known(repo_root):
    import sys

    sys.path.insert(0, str(repo_root / "benchmarks"))
    import serving_load as sl

    # (start, seconds, status, reason); killed at t=10, the first fallback answers at t=12
    res = [(9.0, 0.5, 200, "split"), (9.5, 2.9, 200, "fallback"), (10.5, 1.5, 200, "fallback"),
           (12.1, 0.2, 200, "fallback"), (11.0, 1.8, 200, "fallback")]
    known = sl._known("pruned", res, 10.0)
    assert known == 12.0
    # waits after t=12: 0.4 (9.5 -> 12.4), 0.2, 0.8 (11.0 -> 12.8); normal p50 0.3
    assert sl._extra_after(res, known, 0.3) == pytest.approx(0.5)
    assert sl._known("full", [(10.2, 0.1, 503, "")], 10.0) == pytest.approx(10.3)
    assert sl._known("router", [(9.0, 0.5, 200, "")], 10.0) == 10.0  # nothing showed it
