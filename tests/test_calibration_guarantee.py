"""Learn-then-Test calibration and the cost ratio: pure numpy, no model (issue 15, items 2 and 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binom

from tierserve.pruning.calibration import calibrate_rerank, expected_cost
from tierserve.pruning.cascade import (
    CalibrationTooSmall,
    binom_cdf,
    calibrate,
    calibrate_guaranteed,
    cascade_outcome,
    clopper_pearson_upper,
    n_needed,
)
from tierserve.pruning.costratio import clamp_ratio, interleaved_ratio, physical_range
from tierserve.pruning.spec import ServingSpec


def _traffic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidence in [0, 1); pruned agrees with full more often the more confident it is."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    return conf, rng.random(n) < 0.85 + 0.15 * conf


def test_binomial_tail_and_clopper_pearson_match_scipy():
    for k, n, p in ((0, 50, 0.01), (3, 100, 0.05), (12, 400, 0.02), (40, 40, 0.3)):
        assert binom_cdf(k, n, p) == pytest.approx(binom.cdf(k, n, p), rel=1e-9)
    for k, n in ((0, 300), (3, 100), (17, 1000)):
        assert clopper_pearson_upper(k, n, 0.05) == pytest.approx(beta.ppf(0.95, k + 1, n - k),
                                                                  rel=1e-6)


def test_validation_size_needed():
    assert n_needed(0.99, 0.05) == 299  # 0.99^299 <= 0.05 < 0.99^298
    assert 0.99 ** 299 <= 0.05 < 0.99 ** 298
    assert n_needed(0.9, 0.05) == 29
    assert math.isinf(n_needed(1.0, 0.05))


def test_too_small_a_validation_set_is_refused_naming_the_field():
    conf, agree = _traffic(200, 0)
    with pytest.raises(CalibrationTooSmall) as err:
        calibrate_guaranteed(conf, agree, 0.99, 0.05)
    msg = str(err.value)
    assert "spec.data.validation" in msg and "299" in msg and "calibrationDelta" in msg
    calibrate_guaranteed(conf, agree, 0.9, 0.05)  # 29 rows suffice for 0.9


def test_ltt_threshold_is_more_conservative_and_states_its_bound():
    conf, agree = _traffic(3000, 1)
    emp = calibrate(conf, agree, 0.98)
    ltt = calibrate_guaranteed(conf, agree, 0.98, 0.05)
    assert ltt.threshold >= emp.threshold and ltt.pruned_share <= emp.pruned_share
    assert ltt.guaranteed and ltt.delta == 0.05 and ltt.n_needed == n_needed(0.98, 0.05)
    disagree = round((1 - ltt.agreement) * ltt.n)
    assert ltt.risk_upper == pytest.approx(clopper_pearson_upper(disagree, ltt.n, 0.05))
    assert ltt.agreement_lower == pytest.approx(1 - ltt.risk_upper)


def test_ltt_meets_the_target_on_new_traffic_in_at_least_1_minus_delta_of_draws():
    """The guarantee itself: calibrate on one draw, measure on a large fresh draw, many times."""
    target, delta, misses = 0.97, 0.1, 0
    test_conf, test_agree = _traffic(100_000, 999)
    for seed in range(60):
        conf, agree = _traffic(800, seed)
        cal = calibrate_guaranteed(conf, agree, target, delta)
        misses += cascade_outcome(test_conf, test_agree, cal.threshold)[0] < target
    assert misses / 60 <= delta


def test_partial_escalation_can_fail_where_full_escalation_cannot():
    conf = np.linspace(0, 1, 400)
    agree = np.ones(400, bool)
    esc = np.ones(400, bool)
    esc[:40] = False  # escalating these does not fix them (full saw too few candidates)
    cal = calibrate_guaranteed(conf, agree, 0.99, 0.05, agree_escalated=esc)
    # fixed-sequence testing starts at "escalate everything": 40 of 400 stay wrong there, so the
    # first test fails and nothing is accepted (no peeking further down the sequence)
    assert cal.guaranteed is False and cal.pruned_share == 0.0
    ok = calibrate_guaranteed(conf, agree, 0.99, 0.05)
    assert ok.guaranteed and ok.pruned_share == 1.0


def test_rerank_picks_the_cheapest_feasible_m_and_threshold():
    rng = np.random.default_rng(3)
    pruned = rng.normal(size=(1500, 10))
    full = pruned + rng.normal(scale=0.25, size=(1500, 10))
    choice, tried = calibrate_rerank(pruned, full, 0.97, 0.05, cost_ratio=0.5)
    assert [c.m for c in tried] == [2, 3, 5, 10]
    feasible = [c for c in tried if c.feasible]
    assert tried[-1].feasible and choice in feasible
    assert choice.cost == min(c.cost for c in feasible)
    assert choice.m < 10  # re-scoring a few beats re-scoring all ten
    esc = 1 - choice.calibration.pruned_share
    assert choice.cost == pytest.approx(expected_cost(0.5, esc, 10, choice.m, 1))
    assert choice.cost == pytest.approx((0.5 * 11 + esc * (1 + choice.m)) / 11)


def test_spec_fields():
    s = ServingSpec.model_validate({"calibrationDelta": 0.05, "escalateTopM": 3,
                                    "embedTier": "pruned"})
    assert (s.calibration_delta, s.escalate_top_m, s.embed_tier) == (0.05, 3, "pruned")
    assert ServingSpec().calibration_delta == 0.05 and ServingSpec().embed_tier == "full"
    assert ServingSpec.model_validate({"calibrationDelta": None}).calibration_delta is None
    with pytest.raises(ValueError):
        ServingSpec.model_validate({"calibrationDelta": 0.7})


def test_the_guarantee_is_the_default_on_a_validation_split():
    """Learn-then-Test at delta 0.05 unless the spec opts out (null), routes by split, or has no
    held-out validation split; each exception says why in the report's guarantee.note."""
    from types import SimpleNamespace

    from tierserve.pruning.calibration import guarantee_delta

    def spec(**serving):
        return SimpleNamespace(serving=ServingSpec.model_validate(serving))

    assert guarantee_delta(spec(), True) == (0.05, None)
    assert guarantee_delta(spec(calibrationDelta=0.1), True) == (0.1, None)
    for s, has_val, why in ((spec(calibrationDelta=None), True, "null"),
                            (spec(policy="split"), True, "policy split"),
                            (spec(), False, "no spec.data.validation")):
        delta, note = guarantee_delta(s, has_val)
        assert delta is None and why in note


# -- the cost ratio ---------------------------------------------------------------------------
def test_cost_ratio_is_clamped_to_the_physical_range_with_a_warning():
    lo, hi = physical_range(0.5)
    assert (lo, hi) == (0.5, 1.0)
    assert physical_range(0.5, quantized=True)[0] == pytest.approx(0.125)
    low = clamp_ratio(0.25, (0.2, 0.3), lo, hi)  # the "0.25 at 50% FLOPs"
    assert low.ratio == 0.5 and low.source == "clamped_to_ideal" and "0.250" in low.warning
    high = clamp_ratio(1.3, None, lo, hi)
    assert high.ratio == 1.0 and high.source == "clamped_to_full" and high.warning
    ok = clamp_ratio(0.62, (0.58, 0.66), lo, hi)
    assert ok.ratio == 0.62 and ok.source == "measured" and ok.warning is None
    assert clamp_ratio(None, None, lo, hi).source == "flops_ideal"


def test_interleaved_rounds_give_a_ratio_with_an_interval():
    """A fake clock makes the timing exact: full takes 10 units, pruned 6 (+-0.5 alternating)."""
    t = [0.0]
    step = iter([0.5, -0.5] * 50)

    def clock():
        return t[0]

    def full():
        t[0] += 10.0

    def pruned():
        t[0] += 6.0 + next(step)

    r = interleaved_ratio(full, pruned, rounds=8, lo=0.5, hi=1.0, clock=clock)
    assert r.source == "measured" and r.rounds == 8
    assert 0.55 < r.ratio < 0.65 and r.ci[0] < r.ratio < r.ci[1]
    r = interleaved_ratio(full, lambda: t.__setitem__(0, t[0] + 2.0), rounds=4, lo=0.5,
                          clock=clock)
    assert r.ratio == 0.5 and r.source == "clamped_to_ideal" and r.measured == pytest.approx(0.2)
