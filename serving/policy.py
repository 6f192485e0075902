"""Routing policy as pure code: which tier answers a request, and why. Nothing here imports Serve.

Order of decisions in `choose_tier` (first match wins):
1. a rule that forces **full**: `X-Tier: full`, a tenant or priority listed in the spec, or an input
   longer than `maxPrunedTokens` tokens -> full, reason `rule`
2. `X-Tier: pruned` (an explicit client choice) -> pruned, reason `rule`
3. shadow fallback active (live agreement fell below the gate) -> full, reason `shadow_fallback`
4. the policy: `split` sends a weighted share to pruned (reason `split`); `cascade` asks pruned
   first and escalates to full when its confidence is below the calibrated threshold (reasons
   `cascade_confident` / `cascade_escalated`). An escalated rerank sends full only pruned's best
   `escalateTopM` documents, an escalated classify only its unconfident items (`escalation.py`).

`/v1/embed` never mixes vector spaces by chance: it has no confidence signal, so it goes to ONE
tier, `embedTier` (reason `embed_tier`), whatever the policy and the shadow switch. `X-Tier`
pins a tier explicitly (per index/collection), and a tenant listed for full goes to full. Only when
the report's cross-tier gate passed (`embed_split`) may embed split by `prunedWeight`, and only
by key: an `X-Tier-Key` (e.g. the collection name) is hashed so each key always lands on the
same tier (reason `sticky`). Requests without a key go to `embedTier` even then: a client that
builds one index from keyless calls (the OpenAI client sends no key) gets one vector space.

A pruned error or timeout is served by full with reason `fallback` (the router does that part).
`ShadowMonitor` turns sampled pruned-vs-full comparisons into the automatic shift to full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tierserve.pruning.cascade import confidence

from .escalation import embed_split_allowed, sticky_draw

__all__ = [
    "FULL", "PRUNED", "REASONS", "Decision", "PolicyConfig", "RequestInfo", "Rules",
    "ShadowMonitor", "choose_tier",
    "escalate", "outputs_agree", "request_confidence", "wilson_upper", "would_serve_pruned",
]

FULL, PRUNED = "full", "pruned"
REASONS = ("split", "cascade_confident", "cascade_escalated", "rule", "fallback", "shadow_fallback",
           "embed_tier", "sticky")


@dataclass(frozen=True)
class Rules:
    tier_header: bool = True
    full_tenants: frozenset[str] = frozenset()
    full_priorities: frozenset[str] = frozenset()
    max_pruned_tokens: int | None = None


@dataclass(frozen=True)
class PolicyConfig:
    policy: str  # "split" | "cascade"
    pruned_weight: float  # split: share to pruned
    threshold: float  # cascade: pruned answers when confidence >= threshold
    confidence: str  # "margin" | "entropy" | "topk_gap"
    shadow_fraction: float
    rules: Rules = Rules()
    choices: tuple[str, ...] = ()  # generate: the task's answers (report.calibration.choices)
    escalate_top_m: int | None = None  # rerank: full re-scores pruned's best m (None: all)
    embed_tier: str = FULL  # /v1/embed's one tier unless embed_split
    embed_split: bool = False  # the cross-tier gate passed: embed may split (sticky per key)

    @classmethod
    def from_spec(cls, serving, calibration: dict | None,
                  gates: list[dict] | None = None) -> PolicyConfig:
        """From `spec.serving`, the report's `calibration` block (threshold, confidence,
        escalate_top_m) and its `gates` (whether embed may split)."""
        cal = calibration or {}
        threshold = serving.cascade_threshold
        if threshold is None:
            threshold = cal.get("threshold")
        if serving.policy == "cascade" and threshold is None:
            raise ValueError("cascade needs a threshold: the report has no `calibration` block "
                             "(re-run the pruning job) and spec.serving.cascadeThreshold is unset")
        r = serving.rules
        rules = Rules(r.tier_header, frozenset(r.full_tenants), frozenset(r.full_priorities),
                      r.max_pruned_tokens)
        top_m = serving.escalate_top_m or cal.get("escalate_top_m")
        return cls(serving.policy, serving.pruned_weight, float(threshold or 0.0),
                   cal.get("confidence", "topk_gap"), serving.shadow_fraction, rules,
                   tuple(cal.get("choices") or ()), int(top_m) if top_m else None,
                   serving.embed_tier, embed_split_allowed(gates))


@dataclass(frozen=True)
class RequestInfo:
    endpoint: str  # "embed" | "rerank" | "classify"
    draw: float  # uniform [0, 1): the split coin
    shadow_draw: float  # uniform [0, 1): the shadow sampling coin
    tier_header: str | None = None  # X-Tier
    tenant: str | None = None  # X-Tenant
    priority: str | None = None  # X-Priority
    tokens: int | None = None  # longest input, in tokens (only counted when a length rule is set)
    tier_key: str | None = None  # X-Tier-Key: embed's sticky key (e.g. the collection)


@dataclass(frozen=True)
class Decision:
    tier: str  # the tier asked first
    reason: str  # final for full/split/rule; cascade's is settled after pruned answers
    cascade: bool = False  # pruned answers first; escalate on low confidence
    shadow: bool = False  # also send to the other tier, off the response path


def _forced_full(req: RequestInfo, rules: Rules) -> bool:
    if rules.tier_header and (req.tier_header or "").lower() == FULL:
        return True
    if req.tenant is not None and req.tenant in rules.full_tenants:
        return True
    if req.priority is not None and req.priority in rules.full_priorities:
        return True
    return (rules.max_pruned_tokens is not None and req.tokens is not None
            and req.tokens > rules.max_pruned_tokens)


def choose_tier(req: RequestInfo, cfg: PolicyConfig, shadow_fallback: bool = False) -> Decision:
    """The first tier to ask and why. `shadow_fallback`: the live agreement gate has tripped.

    `shadow` marks a sampled request: the router compares it off the response path (pruned
    answers are checked against full; while tripped, pruned is asked what it would have said).
    Requests forced by a rule are not sampled: they say nothing about the policy's traffic.
    """
    if req.endpoint == "embed":
        return _embed_tier(req, cfg)
    shadow = req.shadow_draw < cfg.shadow_fraction
    if _forced_full(req, cfg.rules):
        return Decision(FULL, "rule")
    if cfg.rules.tier_header and (req.tier_header or "").lower() == PRUNED:
        return Decision(PRUNED, "rule")
    if shadow_fallback:
        return Decision(FULL, "shadow_fallback", shadow=shadow)
    if cfg.policy == "cascade":
        return Decision(PRUNED, "cascade_confident", cascade=True, shadow=shadow)
    tier = PRUNED if req.draw < cfg.pruned_weight else FULL
    return Decision(tier, "split", shadow=shadow)


def _embed_tier(req: RequestInfo, cfg: PolicyConfig) -> Decision:
    """One tier per index: an explicit pin, else the spec's tier; sticky split only when the
    cross-tier gate passed. Length and priority rules and the shadow switch do not move embed
    (they would put one collection's vectors in two spaces); a full-tenant goes to full."""
    pin = (req.tier_header or "").lower() if cfg.rules.tier_header else ""
    if pin in (FULL, PRUNED):
        return Decision(pin, "rule")
    if req.tenant is not None and req.tenant in cfg.rules.full_tenants:
        return Decision(FULL, "rule")
    if not cfg.embed_split or not req.tier_key:  # keyless: one tier, never a per-request coin
        return Decision(cfg.embed_tier, "embed_tier")
    return Decision(PRUNED if sticky_draw(req.tier_key) < cfg.pruned_weight else FULL, "sticky")


def would_serve_pruned(req: RequestInfo, cfg: PolicyConfig, conf: float | None) -> bool:
    """While tripped: would the policy have let pruned answer this request?"""
    if cfg.policy == "cascade" and req.endpoint != "embed":
        return conf is not None and not escalate(conf, cfg.threshold)
    return req.draw < cfg.pruned_weight


def request_confidence(name: str, outputs) -> float:
    """One confidence per request: the least confident item (a request escalates as a whole)."""
    a = np.asarray(outputs, dtype=np.float64)
    return float(np.min(confidence(name, a if a.ndim == 2 else a[None, :])))


def escalate(conf: float, threshold: float) -> bool:
    return conf < threshold


def outputs_agree(endpoint: str, pruned, full, choices: tuple[str, ...] = ()) -> list[bool]:
    """Per item: does pruned pick what full picks? rerank: the same best document; classify: the
    same label; generate: the same answer (the same one of `choices`, when the task has them).
    (embed has no discrete answer and is not shadowed.)"""
    if endpoint == "generate":  # the same answer, compared as the job's calibration compares
        from tierserve.pruning.lm import answers_agree

        return [answers_agree(pruned, full, choices)]
    p, f = np.asarray(pruned, dtype=np.float64), np.asarray(full, dtype=np.float64)
    if endpoint == "rerank":
        return [int(np.argmax(p)) == int(np.argmax(f))]
    if endpoint == "classify":
        return [bool(x) for x in (p.argmax(axis=1) == f.argmax(axis=1))]
    raise ValueError(f"no agreement for endpoint {endpoint!r}")


def wilson_upper(agree: int, n: int, z: float = 2.326) -> float:
    """One-sided 99% upper confidence bound of a proportion (Wilson score interval)."""
    if n == 0:
        return 1.0
    p, z2 = agree / n, z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


class ShadowMonitor:
    """Live agreement of served answers with full over windows of `window` samples, with a
    sustained trip and a hysteresis recovery.

    Each sample is one sampled request: True when full served it (full agrees with itself), else
    whether pruned's answer matched full's. Samples fill consecutive windows. A window *fails*
    when it is significantly below `gate` (its 99% upper bound is under the gate), so a healthy
    tier running right at its target does not flap; `sustain` failing windows in a row trip the
    switch (all traffic to full). While tripped, the samples say what pruned WOULD have served,
    and one window with agreement >= `gate + hysteresis` recovers. `record` returns
    "activated", "recovered" or None.
    """

    def __init__(self, gate: float, window: int, hysteresis: float, sustain: int = 2) -> None:
        self.gate, self.window, self.hysteresis, self.sustain = gate, window, hysteresis, sustain
        self.samples: list[bool] = []
        self.active = False
        self.failing = 0  # consecutive failing windows
        self.total = 0
        self.last: float | None = None  # agreement of the last full window

    @property
    def agreement(self) -> float | None:
        """The last full window's agreement (the current window's until the first completes)."""
        if self.last is None and self.samples:
            return sum(self.samples) / len(self.samples)
        return self.last

    def record(self, agree: bool) -> str | None:
        self.samples.append(bool(agree))
        self.total += 1
        if len(self.samples) < self.window:
            return None
        n_agree, n = sum(self.samples), len(self.samples)
        self.last, self.samples = n_agree / n, []
        if not self.active:
            self.failing = self.failing + 1 if wilson_upper(n_agree, n) < self.gate else 0
            if self.failing >= self.sustain:
                self.active, self.failing = True, 0
                return "activated"
        elif self.last >= self.gate + self.hysteresis:
            self.active = False
            return "recovered"
        return None
