"""Partial / per-item escalation, embed pinning and the live cost ratio: pure, no Ray (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from tierserve.pruning.cascade import partial_agree, partial_ranking
from tierserve.pruning.spec import CostSpec, ServingSpec
from tierserve.serving.cost import CostModel, LiveRatio, request_cost
from tierserve.serving.escalation import (
    embed_split_allowed,
    escalated_items,
    item_subrequest,
    merge_items,
    merge_rerank,
    rerank_subrequest,
    sticky_draw,
)
from tierserve.serving.policy import PolicyConfig, RequestInfo, choose_tier


# -- rerank: partial escalation -----------------------------------------------------------------
def test_full_reorders_only_prunes_top_m():
    pruned = [0.1, 0.9, 0.5, 0.7, 0.3]  # pruned's order: 1, 3, 2, 4, 0
    texts = ["q", "d0", "d1", "d2", "d3", "d4"]
    sub, top = rerank_subrequest(texts, pruned, 3)
    assert sub == ["q", "d1", "d3", "d2"] and list(top) == [1, 3, 2]
    full_top = [0.2, 0.4, 0.8]  # full prefers d2, then d3, then d1
    assert list(partial_ranking(pruned, full_top)) == [2, 3, 1, 4, 0]
    scores = merge_rerank(pruned, full_top)
    assert list(np.argsort(-np.asarray(scores), kind="stable")) == [2, 3, 1, 4, 0]
    assert scores[2] == 0.8 and scores[1] == 0.2  # the escalated documents carry full's scores
    assert max(scores[0], scores[4]) < min(scores[1], scores[2], scores[3])


def test_partial_agreement():
    pruned = np.array([[0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.0, 0.8]])
    full = np.array([[0.1, 0.9, 0.0, 0.0], [0.1, 0.0, 0.0, 0.9]])
    # row 0: full's best (doc 1) is pruned's 2nd -> found with m >= 2; row 1: full's best (doc 3)
    # is pruned's 2nd as well
    assert list(partial_agree(pruned, full, 1)) == [False, False]
    assert list(partial_agree(pruned, full, 2)) == [True, True]
    assert list(partial_agree(pruned, full, 4)) == [True, True]


# -- classify: per-item escalation --------------------------------------------------------------
def test_only_unconfident_items_go_to_full():
    pruned = [[4.0, 0.0], [0.1, 0.0], [0.0, 3.0], [0.0, 0.2]]  # items 1 and 3 are unsure
    items = escalated_items("margin", pruned, threshold=0.5)
    assert items == [1, 3]
    assert item_subrequest(["a", "b", "c", "d"], items) == ["b", "d"]
    merged = merge_items(pruned, [[0.0, 5.0], [6.0, 0.0]], items)
    assert merged == [[4.0, 0.0], [0.0, 5.0], [0.0, 3.0], [6.0, 0.0]]


# -- embed: one tier per index ------------------------------------------------------------------
def _cfg(**kw) -> PolicyConfig:
    base = dict(policy="cascade", pruned_weight=0.5, threshold=0.1, confidence="topk_gap",
                shadow_fraction=0.5)
    return PolicyConfig(**{**base, **kw})


def _embed(**kw) -> RequestInfo:
    return RequestInfo(**{"endpoint": "embed", "draw": 0.1, "shadow_draw": 0.0, **kw})


def test_embed_goes_to_the_spec_tier_unless_the_cross_tier_gate_passed():
    for tier in ("full", "pruned"):
        cfg = _cfg(embed_tier=tier)
        for draw in (0.01, 0.99):
            d = choose_tier(_embed(draw=draw), cfg, shadow_fallback=True)
            assert (d.tier, d.reason, d.shadow, d.cascade) == (tier, "embed_tier", False, False)
        # length/priority rules would split one collection over two spaces: not for embed
        from tierserve.serving.policy import Rules

        ruled = _cfg(embed_tier=tier, rules=Rules(max_pruned_tokens=4, full_priorities=frozenset({"hi"})))
        assert choose_tier(_embed(tokens=99, priority="hi"), ruled).tier == tier
    assert choose_tier(_embed(tier_header="pruned"), _cfg()).tier == "pruned"  # explicit pin
    assert choose_tier(_embed(tier_header="full"), _cfg(embed_tier="pruned")).reason == "rule"


def test_sticky_split_keeps_each_key_on_one_tier():
    cfg = _cfg(embed_split=True)
    keys = [f"collection-{i}" for i in range(40)]
    first = {k: choose_tier(_embed(tier_key=k, draw=0.0), cfg).tier for k in keys}
    for k in keys:  # the per-request coin no longer matters, the key does
        for draw in (0.3, 0.9):
            d = choose_tier(_embed(tier_key=k, draw=draw), cfg)
            assert (d.tier, d.reason) == (first[k], "sticky")
    assert set(first.values()) == {"full", "pruned"}
    assert all((sticky_draw(k) < 0.5) == (first[k] == "pruned") for k in keys)
    assert 0.0 <= sticky_draw("x") < 1.0 and sticky_draw("x") == sticky_draw("x")


def test_keyless_embeds_never_mix_spaces_even_when_split_is_allowed():
    """The OpenAI client sends no key: 200 keyless calls, whatever their coins, one tier."""
    import random

    rng = random.Random(0)
    for tier in ("full", "pruned"):
        cfg = _cfg(embed_split=True, embed_tier=tier, pruned_weight=0.5)
        got = {(d.tier, d.reason) for d in (choose_tier(_embed(draw=rng.random()), cfg)
                                           for _ in range(200))}
        assert got == {(tier, "embed_tier")}


def test_split_allowed_only_when_every_cross_tier_gate_passed():
    ndcg = {"metric": "ndcg@10", "passed": True}
    assert not embed_split_allowed(None) and not embed_split_allowed([ndcg])
    assert embed_split_allowed([ndcg, {"metric": "embedding_cosine", "passed": True},
                                {"metric": "cross_tier_ndcg@10", "passed": True}])
    assert not embed_split_allowed([{"metric": "embedding_cosine", "passed": True},
                                    {"metric": "cross_tier_ndcg@10", "passed": False}])


def test_policy_config_reads_top_m_and_gates():
    s = ServingSpec.model_validate({"embedTier": "pruned"})
    cal = {"threshold": 0.2, "confidence": "topk_gap", "escalate_top_m": 3}
    cfg = PolicyConfig.from_spec(s, cal, [{"metric": "embedding_cosine", "passed": True}])
    assert (cfg.escalate_top_m, cfg.embed_tier, cfg.embed_split) == (3, "pruned", True)
    s = ServingSpec.model_validate({"escalateTopM": 5})
    assert PolicyConfig.from_spec(s, cal).escalate_top_m == 5  # the spec overrides the job


# -- cost ---------------------------------------------------------------------------------------
def test_partial_escalation_counterfactual_prices_the_whole_request():
    m = CostModel.from_spec(CostSpec(), 0.5)  # $1/replica-hour each, ratio 0.5
    # pruned scored 10 docs in 1 s; full scored the top 3 in 0.6 s
    c = request_cost(m, {"pruned": 1.0, "full": 0.6}, {"pruned": 100, "full": 30},
                     full_complete=False)
    assert c.counterfactual == pytest.approx(2.0 / 3600)  # full on all 10 = 1 s / 0.5
    assert c.total == pytest.approx(1.6 / 3600) and c.savings > 0
    whole = request_cost(m, {"pruned": 1.0, "full": 2.0})
    assert whole.counterfactual == pytest.approx(2.0 / 3600) and whole.savings < 0


def test_cost_model_says_where_its_ratio_came_from():
    cfg = {"calibration": {"cost_ratio": {"ratio": 0.55, "source": "clamped_to_ideal"}},
           "latency_ratio": 0.3}
    m = CostModel.from_config(CostSpec(), cfg)
    assert (m.latency_ratio, m.ratio_source) == (0.55, "job:clamped_to_ideal")
    m = CostModel.from_config(CostSpec(), {"latency_ratio": 0.7})
    assert (m.latency_ratio, m.ratio_source) == (0.7, "latency_gate")
    assert CostModel.from_config(CostSpec(), {}).ratio_source == "assumed"


def test_live_ratio_from_both_tiers_compute_per_token():
    live = LiveRatio(lo=0.5, hi=1.0, min_replies=3)
    for _ in range(3):
        live.observe("full", 1.0, 100)  # 10 ms / token
    assert live.ratio() is None  # pruned not measured yet
    for _ in range(3):
        live.observe("pruned", 0.35, 50)  # 7 ms / token
    assert live.ratio() == (pytest.approx(0.7), "live")
    for _ in range(3):
        live.observe("pruned", 0.05, 50)  # implausibly cheap: clamped to the FLOPs ideal
    assert live.ratio() == (0.5, "live_clamped")


# -- search: the cheapest passing tier ------------------------------------------------------------
def test_search_serves_the_cheapest_passing_tier_int8_included():
    from tierserve.pruning.engine import PruneConfig, PruneResult
    from tierserve.pruning.search import INT8, cheapest

    def res(target):  # only `report` matters to the choice; the model is not touched
        return PruneResult(None, None, None, PruneConfig(), {"target": target})

    passing = {0.3: res(0.3), 0.5: res(0.5)}
    cost = {0.3: 0.80, 0.5: 0.62}
    fp32 = cheapest(passing, cost, None)
    assert fp32.report["target"] == 0.5 and fp32.report["serve_quantization"] is None
    # pruning + INT8 at 0.3 measures cheaper than fp32 at 0.5: it is served, though less sparse
    best = cheapest(passing, cost, (0.3, passing[0.3], 0.41))
    assert best.report["target"] == 0.3 and best.report["serve_quantization"] == INT8
    assert best.report["search_choice"] == {"target": 0.3, "quantization": INT8,
                                            "latency_ratio": 0.41, "candidates": 3}
    # a dearer INT8 twin loses to the cheaper fp32 tier
    assert cheapest(passing, cost, (0.5, passing[0.5], 0.7)).report["serve_quantization"] is None
    assert cheapest({}, {}, None) is None
