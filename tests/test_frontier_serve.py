"""Partial escalation and embed pinning on a real local Ray Serve with real MiniLM weights
(issue 15): a cascaded /v1/rerank escalates only pruned's top m documents to full and the
metrics count exactly those; /v1/embed stays on one tier unless the cross-tier gate passed, and
then a key keeps each collection on one tier.

No pruning job runs here (the job's calibration is tested in test_calibration_guarantee.py and
by the serving job tests): the report is written by hand with a threshold above every confidence,
so every rerank escalates, and the pruned tier is a quickly pruned MiniLM artifact.
"""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest
import serving_common
import yaml
from serving_common import deploy

from tierserve.serving.escalation import sticky_draw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
serve_url = serving_common.serve_url  # the module's local Serve (a fixture)

TOP_M = 3
DOCS = ["a web framework written in python", "a chess engine", "python bindings for a web server",
        "a fast tiling window manager", "a python library for web scraping", "an email client",
        "documentation of the python web framework", "fonts for the console"]
QUERY = "python web framework"


@pytest.fixture(scope="module")
def artifact(minilm_path, debian_retrieval, tmp_path_factory):
    """MiniLM with 30% of encoder FLOPs removed (magnitude, no recovery): a real pruned tier."""
    from tierserve.pruning.artifact import save_pruned
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.structure import Budget
    from tierserve.pruning.tasks import load_task_model

    full = load_task_model(minilm_path, "embedding")
    cfg = PruneConfig(criterion="magnitude", budget=Budget(kind="flops", target=0.3), rescale=False)
    result = prune(full, list(debian_retrieval["calibration"].queries[:16]), cfg)
    path = tmp_path_factory.mktemp("frontier") / "model"
    save_pruned(result.model, path, structure=result.structure, source=str(minilm_path),
                criterion="magnitude", budget=result.config.budget)
    return path


def _doc(repo_root, **serving) -> dict:
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())
    doc["spec"]["serving"] = {"policy": "cascade", "prunedWeight": 0.5, "embedTier": "pruned",
                              "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5}, **serving}
    return doc


def _report(gates: list[dict]) -> dict:
    return {"deployable": True, "status": "passed", "latency": {"ratio": 0.9}, "gates": gates,
            "calibration": {"policy": "cascade", "confidence": "topk_gap", "threshold": 1e9,
                            "escalate_top_m": TOP_M, "target_agreement": 0.99,
                            "cost_ratio": {"ratio": 0.7, "source": "measured", "ideal": 0.7}}}


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_metric(c: httpx.Client, url: str, name: str, want: float, **labels) -> str:
    """The stats actor applies pushes asynchronously: wait until the counter shows `want`."""
    deadline = time.monotonic() + 30
    while True:
        text = c.get(f"{url}/metrics").text
        if _metric(text, name, **labels) >= want or time.monotonic() > deadline:
            return text
        time.sleep(0.25)


def _tokens(minilm_path, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    return int(sum(len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"]))


@pytest.fixture(scope="module")
def app(repo_root, artifact, serve_url):
    deploy("ts-frontier", _doc(repo_root), _report([{"metric": "ndcg@10", "passed": True}]),
           artifact=str(artifact))
    return f"{serve_url}/ts-frontier"


def test_cascaded_rerank_escalates_only_the_top_m_and_metrics_count_m(app, minilm_path):
    body = {"query": QUERY, "documents": DOCS}
    with httpx.Client(timeout=120) as c:
        pruned = c.post(f"{app}/v1/rerank", json=body, headers={"X-Tier": "pruned"}).json()
        full = c.post(f"{app}/v1/rerank", json=body, headers={"X-Tier": "full"}).json()
        before = c.get(f"{app}/metrics").text
        r = c.post(f"{app}/v1/rerank", json=body).json()
        assert (r["tier"], r["reason"]) == ("full", "cascade_escalated")
        top = pruned["ranking"][:TOP_M]  # pruned's best m: the only documents full scored
        assert set(r["ranking"][:TOP_M]) == set(top)
        assert r["ranking"][:TOP_M] == sorted(top, key=lambda j: -full["scores"][j])
        assert r["ranking"][TOP_M:] == pruned["ranking"][TOP_M:]  # the rest: pruned's order
        assert np.allclose([r["scores"][j] for j in top], [full["scores"][j] for j in top],
                           atol=1e-4)
        text = _wait_metric(c, app, "tierserve_escalated_items_total", TOP_M,
                            endpoint="rerank")
    assert _metric(text, "tierserve_escalated_items_total", endpoint="rerank") == TOP_M
    want = _tokens(minilm_path, [QUERY, *(DOCS[j] for j in top)])  # query + the m documents
    full_in = {t: _metric(t, "tierserve_tokens_total", tier="full", kind="input")
               for t in (before, text)}
    assert full_in[text] - full_in[before] == want
    assert _metric(text, "tierserve_escalations_total") == 1
    assert _metric(text, "tierserve_cost_ratio", source="job:measured") == pytest.approx(0.7)
    # counterfactual priced from pruned's whole request, so the partial escalation can save
    assert _metric(text, "tierserve_counterfactual_cost_usd_total") > 0


def test_embed_is_pinned_to_the_spec_tier_without_a_cross_tier_gate(app):
    with httpx.Client(timeout=120) as c:
        rs = [c.post(f"{app}/v1/embed", json={"texts": ["hello"]},
                     headers={"X-Tier-Key": f"k{i}"}).json() for i in range(6)]
        assert {(r["tier"], r["reason"]) for r in rs} == {("pruned", "embed_tier")}
        r = c.post(f"{app}/v1/embed", json={"texts": ["hello"]}, headers={"X-Tier": "full"}).json()
        assert (r["tier"], r["reason"]) == ("full", "rule")  # a client pins its index's tier


def test_embed_splits_sticky_per_key_once_the_cross_tier_gate_passed(repo_root, artifact, app,
                                                                      serve_url):
    gates = [{"metric": "ndcg@10", "passed": True},
             {"metric": "embedding_cosine", "passed": True}]
    deploy("ts-frontier", _doc(repo_root), _report(gates), artifact=str(artifact))
    keys = ["books", "music", "games", "news", "code", "mail"]
    expect = {k: "pruned" if sticky_draw(k) < 0.5 else "full" for k in keys}
    assert set(expect.values()) == {"full", "pruned"}  # these keys land on both tiers
    with httpx.Client(timeout=120) as c:
        for _ in range(3):
            for k in keys:
                r = c.post(f"{app}/v1/embed", json={"texts": ["hello"]},
                           headers={"X-Tier-Key": k}).json()
                assert (r["tier"], r["reason"]) == (expect[k], "sticky"), k
        # 200 keyless calls, native and OpenAI (whose client sends no key): all on embedTier,
        # so an index built from them holds one vector space
        native = [c.post(f"{app}/v1/embed", json={"texts": ["hello"]}).json()
                  for _ in range(100)]
        openai = [c.post(f"{app}/v1/embeddings", json={"model": "ts-frontier", "input": ["hello"]})
                  for _ in range(100)]
        assert {(r["tier"], r["reason"]) for r in native} == {("pruned", "embed_tier")}
        assert {r.headers["x-tierserve-tier"] for r in openai} == {"pruned"}
    assert re.match(r"^http://", serve_url)


def test_the_jobs_calibration_block_on_real_minilm(repo_root, minilm_path, artifact,
                                                   debian_retrieval):
    """calibration_report on real outputs: (m, threshold) chosen together with a Learn-then-Test
    bound, the measured, clamped cost ratio, and a refusal naming the field when too small."""
    from dataclasses import replace
    from types import SimpleNamespace

    from tierserve.pruning.artifact import load_pruned
    from tierserve.pruning.calibration import calibration_report, escalate_grid
    from tierserve.pruning.cascade import CalibrationTooSmall
    from tierserve.pruning.spec import parse_spec
    from tierserve.pruning.tasks import load_task_model

    v = debian_retrieval["validation"]
    n = 60
    val = replace(v, query_ids=v.query_ids[:n], queries=v.queries[:n],
                  query_slices=v.query_slices[:n] if v.query_slices else None)
    inputs = SimpleNamespace(validation=val, calibration=None)
    full = load_task_model(minilm_path, "embedding")
    pruned = load_pruned(str(artifact), "embedding")
    spec = parse_spec(_doc(repo_root, targetAgreement=0.9, calibrationDelta=0.05))
    cal = calibration_report(spec, full, pruned, inputs)
    assert cal["escalation"] == "top_m" and cal["escalate_top_m"] in escalate_grid(10)
    assert [f["escalate_top_m"] for f in cal["frontier"]] == list(escalate_grid(10))
    g = cal["guarantee"]
    assert g["method"] == "ltt" and g["delta"] == 0.05 and g["n"] == n
    assert g["per_test_delta"] == 0.05 / 4  # Bonferroni over the m grid
    assert g["n_needed"] <= n and 0.0 <= g["risk_upper"] <= 1.0
    chosen = next(f for f in cal["frontier"] if f["escalate_top_m"] == cal["escalate_top_m"])
    assert chosen["feasible"] and chosen["threshold"] == cal["threshold"]
    r = cal["cost_ratio"]
    assert r["ideal"] <= r["ratio"] <= 1.0 and r["rounds"] == 5
    assert r["source"] in ("measured", "clamped_to_ideal", "clamped_to_full")
    strict = parse_spec(_doc(repo_root, targetAgreement=0.99, calibrationDelta=0.05))
    with pytest.raises(CalibrationTooSmall, match=r"spec\.data\.validation: 60 rows"):
        calibration_report(strict, full, pruned, inputs)
