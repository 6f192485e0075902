"""Pure routing, calibration and cost logic: no Ray, no model."""

import math

import numpy as np
import pytest

from tierserve.pruning.calibration import (
    calibrate,
    cascade_outcome,
    default_confidence,
    entropy_confidence,
    margin,
    rerank_candidates,
    topk_gap,
)
from tierserve.pruning.spec import CostSpec, ServingSpec
from tierserve.serving.cost import CostModel, request_cost
from tierserve.serving.policy import (
    PolicyConfig,
    RequestInfo,
    ShadowMonitor,
    choose_tier,
    outputs_agree,
    request_confidence,
    wilson_upper,
    would_serve_pruned,
)


def test_confidence_functions():
    logits = np.array([[5.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    m = margin(logits)
    assert m[0] > 0.9 and m[1] == pytest.approx(0.0)
    e = entropy_confidence(logits)
    assert e[0] > 0.8 and e[1] == pytest.approx(0.0, abs=1e-9)
    assert topk_gap(np.array([[0.9, 0.2, 0.85]]))[0] == pytest.approx(0.05)
    assert topk_gap(np.array([[0.9, -np.inf, 0.1]]), k=3)[0] == pytest.approx(0.8)  # -inf ignored
    assert default_confidence("embedding") == "topk_gap"
    assert default_confidence("sequence-classification") == "margin"


def test_calibrate_keeps_most_traffic_on_pruned_at_target():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    agree = np.array([1, 1, 1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    cal = calibrate(conf, agree, 0.9)  # one disagreement of ten allowed
    assert cal.threshold == 0.4 and cal.pruned_share == 0.6 and cal.agreement == pytest.approx(0.9)
    assert cascade_outcome(conf, agree, cal.threshold) == (cal.agreement, cal.pruned_share)
    assert calibrate(conf, agree, 1.0).threshold == 0.7  # only the confident agreeing head
    assert calibrate(conf, agree, 0.0).pruned_share == 1.0


def test_calibrate_never_splits_ties_and_can_escalate_everything():
    cal = calibrate(np.array([0.5, 0.5, 0.5]), np.array([True, False, True]), 0.99)
    assert cal.pruned_share == 0.0 and cal.threshold > 0.5 and cal.agreement == 1.0


def test_rerank_candidates_put_judged_first_then_word_overlap():
    corpus = ["python web framework", "a game of chess", "python testing tool", "web browser"]
    cands = rerank_candidates(["python web tool"], corpus, [[1]], k=3)
    assert cands == [[1, 0, 2]]


def _cfg(**kw) -> PolicyConfig:
    base = dict(policy="split", pruned_weight=0.5, threshold=0.1, confidence="topk_gap",
                shadow_fraction=0.0)
    return PolicyConfig(**{**base, **kw})


def _req(**kw) -> RequestInfo:
    return RequestInfo(**{"endpoint": "rerank", "draw": 0.3, "shadow_draw": 0.9, **kw})


def test_split_and_cascade():
    assert choose_tier(_req(draw=0.3), _cfg()).tier == "pruned"
    assert choose_tier(_req(draw=0.7), _cfg()).tier == "full"
    d = choose_tier(_req(), _cfg(policy="cascade"))
    assert (d.tier, d.cascade, d.reason) == ("pruned", True, "cascade_confident")
    d = choose_tier(_req(endpoint="embed", draw=0.7), _cfg(policy="cascade"))
    # embed: no confidence; one tier (spec.serving.embedTier) so an index never mixes spaces
    assert (d.tier, d.cascade, d.reason) == ("full", False, "embed_tier")


def test_rules_stack_on_top():
    from tierserve.serving.policy import Rules

    rules = Rules(full_tenants=frozenset({"acme"}), full_priorities=frozenset({"high"}),
                  max_pruned_tokens=64)
    cfg = _cfg(policy="cascade", rules=rules)
    for req in (_req(tier_header="full"), _req(tenant="acme"), _req(priority="high"),
                _req(tokens=65)):
        assert choose_tier(req, cfg).tier == "full" and choose_tier(req, cfg).reason == "rule"
    assert choose_tier(_req(tokens=64), cfg).reason == "cascade_confident"
    assert choose_tier(_req(tier_header="pruned", draw=0.9), _cfg()).tier == "pruned"
    assert choose_tier(_req(tier_header="full"), _cfg(rules=Rules(tier_header=False))).tier == "pruned"


def test_shadow_fallback_and_sampling():
    cfg = _cfg(policy="cascade", shadow_fraction=0.5)
    d = choose_tier(_req(shadow_draw=0.1), cfg, shadow_fallback=True)
    assert (d.tier, d.reason, d.shadow) == ("full", "shadow_fallback", True)
    assert choose_tier(_req(shadow_draw=0.6), cfg).shadow is False
    assert would_serve_pruned(_req(), cfg, conf=0.2) and not would_serve_pruned(_req(), cfg, 0.05)


def test_shadow_monitor_trips_and_recovers_with_hysteresis():
    mon = ShadowMonitor(gate=0.9, window=20, hysteresis=0.05)
    assert all(mon.record(True) is None for _ in range(20))
    changes = [mon.record(i % 2 == 0) for i in range(20)]  # one failing window: not sustained
    assert "activated" not in changes and not mon.active
    changes = [mon.record(i % 2 == 0) for i in range(20)]  # the second in a row trips
    assert changes[-1] == "activated" and mon.active and mon.agreement == 0.5
    changes = [mon.record(i % 10 != 0) for i in range(20)]  # 90%: not above gate + hysteresis
    assert "recovered" not in changes and mon.active
    changes = [mon.record(True) for _ in range(20)]
    assert changes[-1] == "recovered" and not mon.active


def test_shadow_monitor_does_not_flap_at_the_gate():
    mon = ShadowMonitor(gate=0.99, window=200, hysteresis=0.0)
    rng = np.random.default_rng(0)
    assert all(mon.record(a) is None for a in rng.random(2000) < 0.99)
    assert wilson_upper(99, 100) > 0.99 > wilson_upper(90, 100)


def test_outputs_agree_and_request_confidence():
    assert outputs_agree("rerank", [0.1, 0.9], [0.2, 0.8]) == [True]
    assert outputs_agree("classify", [[1, 0], [0, 1]], [[1, 0], [1, 0]]) == [True, False]
    assert request_confidence("topk_gap", [0.9, 0.5, 0.1]) == pytest.approx(0.4)
    assert request_confidence("margin", [[9.0, 0.0], [0.0, 0.1]]) < 0.1  # least confident item


def test_policy_config_from_spec_reads_the_calibrated_threshold():
    s = ServingSpec()
    cfg = PolicyConfig.from_spec(s, {"threshold": 0.07, "confidence": "topk_gap"})
    assert cfg.threshold == 0.07 and cfg.policy == "cascade"
    assert PolicyConfig.from_spec(ServingSpec(cascadeThreshold=0.2), {"threshold": 0.07}).threshold == 0.2
    with pytest.raises(ValueError, match="calibration"):
        PolicyConfig.from_spec(s, None)


def test_cost_accounting():
    cm = CostModel.from_spec(CostSpec(), latency_ratio=0.5)
    assert cm.assumed and cm.per_hour_full == cm.per_hour_pruned == 1.0
    pruned = request_cost(cm, {"pruned": 3.6})
    assert pruned.total == pytest.approx(0.001) and pruned.counterfactual == pytest.approx(0.002)
    assert pruned.savings == pytest.approx(0.001)
    escalated = request_cost(cm, {"pruned": 3.6, "full": 7.2})
    assert escalated.savings == pytest.approx(-0.001)  # paid for both tiers
    priced = CostModel.from_spec(CostSpec(usdPerRequestFull=0.01, usdPerRequestPruned=0.004), 0.7)
    assert not priced.assumed and request_cost(priced, {"pruned": 1.0}).savings == pytest.approx(0.006)
    assert math.isclose(request_cost(priced, {"full": 1.0}).savings, 0.0)


def test_replay_turns_similarity_pairs_into_rerank_requests():
    from tierserve.pruning.pairs import SimilarityData
    from tierserve.serving.replay import Outcome, replay_requests, summarize

    d = SimilarityData(texts=("a python web framework", "chess game", "text editor"),
                       pairs=("web framework for python", "a board game", "an editor for text"),
                       scores=(1.0, 1.0, 1.0))
    reqs = replay_requests(d)
    assert all(r.endpoint == "rerank" and len(r.body["documents"]) == 3 for r in reqs)
    assert [r.body["documents"][r.label] for r in reqs] == list(d.pairs)
    out = [Outcome("pruned", "cascade_confident", 0.1, reqs[0].label, reqs[0].label),
           Outcome("full", "cascade_escalated", 0.3, 0, reqs[1].label)]
    s = summarize(out, [reqs[0].label, reqs[1].label])
    assert s["tiers"]["pruned"]["share"] == 0.5 and s["accuracy"] == s["agreement"]


def test_generate_routes_like_the_other_endpoints_and_agrees_on_answers():
    d = choose_tier(_req(endpoint="generate"), _cfg(policy="cascade"))
    assert (d.tier, d.cascade) == ("pruned", True)
    assert choose_tier(_req(endpoint="generate", draw=0.7), _cfg()).tier == "full"
    assert outputs_agree("generate", "Science.", " science\nmore") == [True]
    assert outputs_agree("generate", "A game or science", "Science") == [False]
    choices = ("games", "science")
    assert outputs_agree("generate", "It is about science.", "Science", choices) == [True]
    assert PolicyConfig.from_spec(ServingSpec(), {"threshold": -0.5, "confidence": "mean_logprob",
                                                  "choices": list(choices)}).choices == choices


def test_tokens_are_priced_and_counted():
    from tierserve.serving.metrics import Events

    cm = CostModel.from_spec(CostSpec(usdPerMillionTokensFull=2.0,
                                      usdPerMillionTokensPruned=1.0), latency_ratio=0.5)
    assert not cm.assumed
    c = request_cost(cm, {"pruned": 1.0}, {"pruned": 500_000})
    assert c.by_tier == {"pruned": pytest.approx(0.5)}
    assert c.counterfactual == pytest.approx(1.0)  # the same tokens at full's price
    esc = request_cost(cm, {"pruned": 1.0, "full": 2.0}, {"pruned": 100, "full": 1_000_000})
    assert esc.total == pytest.approx(2.0001) and esc.savings == pytest.approx(-0.0001)
    ev = Events()
    ev.count_tokens("pruned", {"input_tokens": 40, "output_tokens": 7})
    ev.count_tokens("pruned", {"input_tokens": 10})
    assert ev.tokens == {("pruned", "input"): 50, ("pruned", "output"): 7} and not ev.empty()


def test_replay_turns_prompts_into_generate_requests():
    from tierserve.pruning.lm import LMData
    from tierserve.serving.replay import Outcome, replay_requests, summarize

    data = LMData(texts=("t",), prompts=("Is chess a game?", "Is DNA science?"),
                  answers=("Games", "science."))
    reqs = replay_requests(data)
    assert [r.endpoint for r in reqs] == ["generate", "generate"]
    assert reqs[0].body["prompt"] == "Is chess a game?" and [r.label for r in reqs] == [
        "games", "science"]
    out = [Outcome("pruned", "cascade_confident", 0.1, "games", "games"),
           Outcome("full", "cascade_escalated", 0.2, "science", "biology")]
    s = summarize(out, [r.label for r in reqs])
    assert (s["accuracy"], s["agreement"], s["full_accuracy"]) == (1.0, 0.5, 0.5)
