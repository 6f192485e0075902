"""The cascade's pure core: confidence functions and threshold calibration (numpy only).

Shared by the job's calibration (`calibration.py`, `lm.py`) and the router (`serving/policy.py`,
`serving/escalation.py`); it imports nothing else from the project, so it sits below both.

Confidence functions:
- `margin(logits)`: top-1 minus top-2 softmax probability, for classifiers
- `entropy_confidence(logits)`: 1 - H(p) / log(C), for classifiers
- `topk_gap(scores, k)`: score of the best candidate minus the k-th best, for rerank/retrieval

Thresholds. Rows with confidence >= threshold stay on pruned; the others escalate to full, whose
answer then agrees with full's (`agree_escalated`, all True when full redoes the whole request;
partial escalation of a ranking may still disagree). A row's *risk* is 1 when the answer served
disagrees with full's. Two ways to cut:
- `calibrate` (empirical): the lowest threshold whose agreement on these rows is >= target.
- `calibrate_guaranteed` (Learn-then-Test): thresholds are tested from the most confident down
  (fixed-sequence testing); threshold t is accepted while the exact binomial p-value of
  H0 "risk(t) > 1 - target", P(Binomial(n, 1 - target) <= disagreements(t)), is <= delta. Then,
  with probability >= 1 - delta over the draw of the validation rows, agreement on NEW traffic from
  the same distribution is >= target. The Clopper-Pearson upper bound on the risk at the chosen
  threshold is reported. `n_needed(target, delta)` rows are needed before even a zero-error
  validation set can accept anything; fewer raise `CalibrationTooSmall`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CONFIDENCES", "Calibration", "CalibrationTooSmall", "binom_cdf", "calibrate",
    "calibrate_guaranteed", "cascade_outcome", "choose_threshold", "clopper_pearson_upper",
    "confidence", "default_confidence", "entropy_confidence", "margin", "n_needed",
    "partial_agree", "partial_ranking", "top1_agree", "topk_gap",
]


# -- confidence functions -----------------------------------------------------------------------
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _2d(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def margin(logits) -> np.ndarray:
    """(N, C) logits -> (N,) top-1 minus top-2 softmax probability, in [0, 1]."""
    p = np.sort(_softmax(_2d(logits)), axis=-1)
    return p[:, -1] - p[:, -2] if p.shape[1] > 1 else np.ones(len(p))


def entropy_confidence(logits) -> np.ndarray:
    """(N, C) logits -> (N,) 1 - normalised entropy of the softmax, in [0, 1]."""
    p = _softmax(_2d(logits))
    if p.shape[1] < 2:
        return np.ones(len(p))
    h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)
    return 1.0 - h / math.log(p.shape[1])


def topk_gap(scores, k: int = 2) -> np.ndarray:
    """(N, D) candidate scores -> (N,) best score minus the k-th best (k capped at D).

    -inf entries (no candidate) are ignored; a row with a single candidate has gap +inf.
    """
    s = _2d(scores)
    out = np.empty(len(s))
    for i, row in enumerate(s):
        row = np.sort(row[np.isfinite(row)])[::-1]
        out[i] = row[0] - row[min(k, len(row)) - 1] if len(row) > 1 else math.inf
    return out


CONFIDENCES = {"margin": margin, "entropy": entropy_confidence, "topk_gap": topk_gap}


def default_confidence(task: str) -> str:
    """margin for classifiers, the top-k score gap for rerank/retrieval."""
    return "topk_gap" if task in ("embedding", "rerank") else "margin"


def confidence(name: str, outputs) -> np.ndarray:
    if name not in CONFIDENCES:
        raise ValueError(f"unknown confidence {name!r}; expected one of {sorted(CONFIDENCES)}")
    return CONFIDENCES[name](outputs)


# -- binomial tails -----------------------------------------------------------------------------
def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound of a binomial proportion with k of n."""
    if n == 0 or k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: the largest p with P(Bin(n, p) <= k) >= delta
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom_cdf(k, n, mid) >= delta else (lo, mid)
    return hi


def n_needed(target: float, delta: float) -> int:
    """Fewest rows with which a zero-disagreement validation set can accept a threshold:
    (target)^n <= delta."""
    eps = 1.0 - target
    if eps <= 0.0:
        return math.inf  # type: ignore[return-value] - agreement 1.0 can never be guaranteed
    return math.ceil(math.log(delta) / math.log1p(-eps))


# -- thresholds ---------------------------------------------------------------------------------
class CalibrationTooSmall(ValueError):
    """The validation set cannot support the requested guarantee."""


@dataclass(frozen=True)
class Calibration:
    threshold: float  # pruned answers when confidence >= threshold
    agreement: float  # overall agreement with full on the calibration rows
    pruned_share: float  # share of rows answered by pruned
    n: int
    delta: float | None = None  # Learn-then-Test: the guarantee holds with prob >= 1 - delta
    risk_upper: float | None = None  # (1 - delta) upper bound of disagreement at `threshold`
    n_needed: int | None = None  # rows needed for the guarantee at this target and delta
    guaranteed: bool | None = None  # LTT: False when no threshold passed (escalating all fails)

    @property
    def agreement_lower(self) -> float | None:
        return None if self.risk_upper is None else 1.0 - self.risk_upper

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement_lower": self.agreement_lower}


def cascade_outcome(conf, agree, threshold: float, agree_escalated=None) -> tuple[float, float]:
    """(overall agreement with full, pruned share) when rows with conf >= threshold stay pruned."""
    c, a = np.asarray(conf, dtype=np.float64), np.asarray(agree, dtype=bool)
    if len(c) == 0:
        return 1.0, 0.0
    esc = np.ones(len(c), bool) if agree_escalated is None else np.asarray(agree_escalated, bool)
    keep = c >= threshold
    return float(np.mean(np.where(keep, a, esc))), float(np.mean(keep))


def _cuts(conf, agree, agree_escalated) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate cuts from the most confident down: (kept rows per cut, thresholds, disagreements).

    Cut j keeps the rows with conf >= thresholds[j]; cut 0 keeps none (threshold above all)."""
    c, a = np.asarray(conf, dtype=np.float64), np.asarray(agree, dtype=bool)
    esc = np.ones(len(c), bool) if agree_escalated is None else np.asarray(agree_escalated, bool)
    order = np.argsort(-c, kind="stable")
    cs = c[order]
    bad_kept = np.concatenate([[0], np.cumsum(~a[order])])  # among the top m
    bad_esc = np.concatenate([[0], np.cumsum(~esc[order])])
    n = len(c)
    ms = [0] + [m for m in range(1, n + 1) if m == n or cs[m] < cs[m - 1]]
    ms_a = np.asarray(ms)
    above = float(np.nextafter(cs[0], math.inf)) if n else math.inf
    thresholds = np.array([above] + [float(cs[m - 1]) for m in ms[1:]])
    disagree = bad_kept[ms_a] + (bad_esc[n] - bad_esc[ms_a])
    return ms_a, thresholds, disagree


def _result(conf, agree, agree_escalated, threshold: float, **extra) -> Calibration:
    agreement, share = cascade_outcome(conf, agree, threshold, agree_escalated)
    return Calibration(threshold, agreement, share, len(np.asarray(conf)), **extra)


def calibrate(conf, agree, target: float, agree_escalated=None) -> Calibration:
    """The lowest threshold (most traffic on pruned) whose overall agreement is >= target.

    A cut is only made between distinct confidence values, so the threshold means exactly "these
    rows stay on pruned". When even the single most confident group breaks the target, the
    threshold lies above every observed confidence."""
    n = len(np.asarray(conf))
    if n == 0:
        raise ValueError("calibrate: no rows")
    _, thresholds, disagree = _cuts(conf, agree, agree_escalated)
    ok = np.flatnonzero(1.0 - disagree / n >= target)
    threshold = float(thresholds[ok[-1]]) if len(ok) else float(thresholds[0])
    return _result(conf, agree, agree_escalated, threshold)


def calibrate_guaranteed(conf, agree, target: float, delta: float, agree_escalated=None,
                         field: str = "spec.data.validation") -> Calibration:
    """Learn-then-Test: the lowest threshold reached by fixed-sequence testing from the most
    confident down, each test at level `delta` (see the module doc). Raises `CalibrationTooSmall`
    naming `field` when the rows cannot support the guarantee at all."""
    n = len(np.asarray(conf))
    need = n_needed(target, delta)
    if n < need:
        raise CalibrationTooSmall(
            f"{field}: {n} rows cannot guarantee agreement >= {target} with confidence "
            f"{1 - delta:.3g} (spec.serving.calibrationDelta={delta}); at least {need} are needed "
            f"(more when pruned disagrees sometimes). Add validation rows, lower "
            f"spec.serving.targetAgreement, raise spec.serving.calibrationDelta, or set it to "
            f"null for the empirical cut (no guarantee)")
    eps = 1.0 - target
    _, thresholds, disagree = _cuts(conf, agree, agree_escalated)
    chosen = -1
    for j in range(len(thresholds)):
        if binom_cdf(int(disagree[j]), n, eps) > delta:
            break
        chosen = j
    # chosen == -1: even escalating everything is not shown safe (possible with partial escalation)
    j = max(chosen, 0)
    upper = clopper_pearson_upper(int(disagree[j]), n, delta)
    return _result(conf, agree, agree_escalated, float(thresholds[j]), delta=delta,
                   risk_upper=upper, n_needed=need, guaranteed=chosen >= 0)


def choose_threshold(conf, agree, target: float, delta: float | None,
                     agree_escalated=None, field: str = "spec.data.validation") -> Calibration:
    """`calibrate_guaranteed` when a delta is given, else the empirical `calibrate`."""
    if delta is None:
        return calibrate(conf, agree, target, agree_escalated)
    return calibrate_guaranteed(conf, agree, target, delta, agree_escalated, field)


# -- partial escalation of a ranking ------------------------------------------------------------
def partial_ranking(pruned_scores, full_top_scores) -> np.ndarray:
    """Document order after partial escalation: pruned's best m documents (m =
    len(full_top_scores), full_top_scores[i] = full's score of pruned's i-th best) reordered by
    full's scores, then the others in pruned's order below them."""
    order = np.argsort(-np.asarray(pruned_scores, dtype=np.float64), kind="stable")
    f = np.asarray(full_top_scores, dtype=np.float64)
    m = len(f)
    top = order[:m][np.argsort(-f, kind="stable")]
    return np.concatenate([top, order[m:]])


def top1_agree(pruned, full) -> np.ndarray:
    """(Q, k), (Q, k) -> (Q,) does pruned's best candidate equal full's?"""
    return np.asarray(pruned).argmax(axis=1) == np.asarray(full).argmax(axis=1)


def partial_agree(pruned, full, m: int) -> np.ndarray:
    """(Q, k) pruned and full scores -> (Q,) after escalating pruned's top m to full, is the top
    document full's own best? (m >= k: full scores everything, always True.)"""
    p, f = np.asarray(pruned, dtype=np.float64), np.asarray(full, dtype=np.float64)
    if m >= p.shape[1]:
        return np.ones(len(p), dtype=bool)
    top = np.argsort(-p, axis=1, kind="stable")[:, :m]  # (Q, m) pruned's best m
    best = np.take_along_axis(top, np.take_along_axis(f, top, 1).argmax(1)[:, None], 1)[:, 0]
    return best == f.argmax(axis=1)
