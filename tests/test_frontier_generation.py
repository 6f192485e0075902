"""The generation savings frontier's pure core (issue 15): confidences, agreements and token
counts in, frontier rows out. Arrays only; no model (benchmarks/frontier_generation.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tierserve.pruning.cascade import CalibrationTooSmall

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier_generation.py"
_spec = importlib.util.spec_from_file_location("frontier_generation", _PATH)
fg = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fg  # dataclasses look their module up while defined
_spec.loader.exec_module(fg)


def outcome(conf, agree, tp=None, tf=None) -> fg.GenOutcome:
    n = len(conf)
    return fg.GenOutcome(np.asarray(conf, float), np.asarray(agree, bool),
                         np.asarray(tp if tp is not None else [10.0] * n, float),
                         np.asarray(tf if tf is not None else [10.0] * n, float))


def test_cascade_savings_prices_escalations_per_token():
    o = outcome([-0.1, -0.2, -2.0, -3.0], [True, True, False, True],
                tp=[10, 10, 10, 20], tf=[10, 10, 20, 20])
    # threshold -1: the last two escalate; full alone costs 60 tokens;
    # cascade = 0.5 x 50 (pruned, every request) + 40 (full, the escalated two) = 65
    agreement, savings = fg.cascade_savings(o, -1.0, 0.5)
    assert agreement == 1.0 and savings == pytest.approx(1 - 65 / 60)
    agreement, savings = fg.cascade_savings(o, -math.inf, 0.5)  # nothing escalates
    assert agreement == 0.75 and savings == pytest.approx(1 - 25 / 60)
    agreement, savings = fg.cascade_savings(o, math.inf, 0.5)  # everything escalates
    assert agreement == 1.0 and savings == pytest.approx(1 - 85 / 60)


def test_frontier_rows_calibrated_point_split_and_bootstrap():
    rng = np.random.default_rng(1)
    # pruned agrees with full exactly when confident (conf > -1), on about 2/3 of requests
    vc, tc = rng.uniform(-1.5, 0, 400), rng.uniform(-1.5, 0, 300)
    test = outcome(tc, tc > -1)
    rows, boot, cal = fg.generation_frontier(vc, vc > -1, test, ratio=0.3, target=0.95,
                                             delta=0.05, boot=200)
    assert {r["task"] for r in rows} == {"generation"}
    assert all(set(r) == {"task", "policy", "threshold", "escalate_top_m", "agreement",
                          "savings", "calibrated", "n"} for r in rows)
    assert all(r["escalate_top_m"] is None and r["n"] == 300 for r in rows)
    calibrated = [r for r in rows if r["calibrated"]]
    assert len(calibrated) == 1 and calibrated[0]["threshold"] == cal["threshold"]
    assert cal["guaranteed"] and cal["agreement_lower"] >= 0.95 and cal["threshold"] < -0.9
    assert calibrated[0]["agreement"] >= 0.95 and calibrated[0]["savings"] > 0.1
    split = [r for r in rows if r["policy"] == "split"]
    assert len(split) == 1
    assert split[0]["agreement"] == pytest.approx(calibrated[0]["agreement"])
    assert split[0]["savings"] < calibrated[0]["savings"]  # confidence beats a random split
    never = [r for r in rows if r["threshold"] == math.inf]
    assert never[0]["agreement"] == 1.0 and never[0]["savings"] == pytest.approx(-0.3)
    sweep = sorted((r for r in rows if r["policy"] == "cascade" and not r["calibrated"]),
                   key=lambda r: r["threshold"])
    assert [r["savings"] for r in sweep] == sorted((r["savings"] for r in sweep), reverse=True)
    assert boot["task"] == "generation" and boot["share_meeting_target"] >= 0.9
    assert boot["calibrated_threshold"] == cal["threshold"] and boot["escalate_top_m"] is None


def test_split_row_matches_the_calibrated_agreement():
    test = outcome([-0.1] * 8 + [-2.0] * 2, [True] * 8 + [False] * 2)
    rows, _, _ = fg.generation_frontier([-0.1] * 40 + [-2.0] * 10,
                                        [True] * 40 + [False] * 10, test, 0.5, 0.9, None, boot=0)
    cal = next(r for r in rows if r["calibrated"])
    split = next(r for r in rows if r["policy"] == "split")
    assert cal["agreement"] == 1.0 and cal["savings"] == pytest.approx(1 - (0.5 * 100 + 20) / 100)
    # split at agreement 1.0 with pruned agreeing on 0.8: nothing can go to pruned alone
    assert split["agreement"] == pytest.approx(1.0) and split["savings"] == pytest.approx(0.0)


def test_too_small_validation_set_is_refused():
    test = outcome([-0.1, -0.2], [True, True])
    with pytest.raises(CalibrationTooSmall, match="validation prompts"):
        fg.generation_frontier([-0.1] * 64, [True] * 64, test, 0.5, 0.99, 0.05)
