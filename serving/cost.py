"""Cost accounting for served requests, pure: what a request cost, and what all-full would have cost.

A request's cost on a tier = the tier's price per request + its price per replica-hour times the
replica time the request used (its token share of the batch forward pass, measured in the tier)
+ its price per million tokens times the tokens the tier processed (input + generated).
The counterfactual is the same request served by full alone: full's own compute time when full
ran the WHOLE request, else pruned's compute time divided by the pruned/full cost ratio (a
partially escalated request: full scored only m documents or a few items); and the tokens of the
tier that saw the whole request.
Escalated cascade requests pay for both tiers, so their savings are negative, as they really are.

The cost ratio in use: the job's interleaved, clamped measurement (`report.calibration.cost_ratio`,
see pruning/costratio.py), else the latency gate's ratio; `LiveRatio` then refreshes it from both
tiers' measured compute per token as traffic (and the shadow path) flows, clamped to the same
physical range. `CostModel.ratio_source` says where the ratio came from (exported on /metrics).

When the spec gives no prices, both tiers are priced at $1 per replica-hour (`assumed=True`):
savings then measure replica time saved, on the same hardware.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

__all__ = ["CostModel", "LiveRatio", "RequestCost", "reply_tokens", "request_cost"]

ASSUMED_USD_PER_REPLICA_HOUR = 1.0


@dataclass(frozen=True)
class CostModel:
    per_request_full: float
    per_request_pruned: float
    per_hour_full: float
    per_hour_pruned: float
    per_mtok_full: float
    per_mtok_pruned: float
    latency_ratio: float  # pruned cost / full cost for the same work (see the module doc)
    assumed: bool = False
    ratio_source: str = "latency_gate"  # where latency_ratio came from

    @classmethod
    def from_config(cls, cost, config: dict) -> CostModel:
        """From the router config: the calibration's clamped cost ratio, else the latency gate's."""
        block = (config.get("calibration") or {}).get("cost_ratio") or {}
        if block.get("ratio"):
            model = cls.from_spec(cost, block["ratio"])
            return replace(model, ratio_source=f"job:{block.get('source', 'measured')}")
        model = cls.from_spec(cost, config.get("latency_ratio"))
        return model if config.get("latency_ratio") else replace(model, ratio_source="assumed")

    @classmethod
    def from_spec(cls, cost, latency_ratio: float | None) -> CostModel:
        prices = (cost.usd_per_request_full, cost.usd_per_request_pruned,
                  cost.usd_per_replica_hour_full, cost.usd_per_replica_hour_pruned,
                  cost.usd_per_million_tokens_full, cost.usd_per_million_tokens_pruned)
        ratio = float(latency_ratio) if latency_ratio else 1.0
        if not any(prices):
            h = ASSUMED_USD_PER_REPLICA_HOUR
            return cls(0.0, 0.0, h, h, 0.0, 0.0, ratio, assumed=True)
        return cls(*prices, ratio)

    def tier_cost(self, tier: str, compute_s: float, tokens: int = 0) -> float:
        if tier == "full":
            return (self.per_request_full + self.per_hour_full * compute_s / 3600.0
                    + self.per_mtok_full * tokens / 1e6)
        return (self.per_request_pruned + self.per_hour_pruned * compute_s / 3600.0
                + self.per_mtok_pruned * tokens / 1e6)

    def full_equivalent_s(self, tier: str, compute_s: float) -> float:
        return compute_s if tier == "full" else compute_s / self.latency_ratio


@dataclass(frozen=True)
class RequestCost:
    by_tier: dict[str, float]  # tier -> USD actually spent (both tiers for an escalation)
    counterfactual: float  # USD had full served it alone

    @property
    def total(self) -> float:
        return sum(self.by_tier.values())

    @property
    def savings(self) -> float:
        return self.counterfactual - self.total


def reply_tokens(reply: dict) -> int:
    """Tokens a tier processed for one reply: its input plus its output tokens."""
    return int(reply.get("input_tokens", 0)) + int(reply.get("output_tokens", 0))


def request_cost(model: CostModel, compute: dict[str, float],
                 tokens: dict[str, int] | None = None, full_complete: bool = True) -> RequestCost:
    """`compute`: tier -> seconds of replica time this request used (shadow calls included);
    `tokens`: tier -> tokens it processed there. `full_complete=False`: full ran only part of
    the request (partial / per-item escalation), so the counterfactual comes from pruned's."""
    tokens = tokens or {}
    by_tier = {t: model.tier_cost(t, s, tokens.get(t, 0)) for t, s in compute.items()}
    if "full" in compute and (full_complete or "pruned" not in compute):
        full_s, full_tokens = compute["full"], tokens.get("full", tokens.get("pruned", 0))
    else:
        full_s = model.full_equivalent_s("pruned", compute.get("pruned", 0.0))
        full_tokens = tokens.get("pruned", 0)
    return RequestCost(by_tier, model.tier_cost("full", full_s, full_tokens))


class LiveRatio:
    """The pruned/full cost ratio refreshed from served replies: each tier's replica seconds per
    input token over its last `window` replies; the ratio of the two, clamped to [lo, hi]
    (the job's physical range), once both tiers have `min_replies` replies."""

    def __init__(self, lo: float = 1e-3, hi: float = 1.0, window: int = 500,
                 min_replies: int = 20) -> None:
        self.lo, self.hi, self.window, self.min_replies = lo, hi, window, min_replies
        self.seen: dict[str, deque[tuple[float, int]]] = {
            t: deque(maxlen=window) for t in ("full", "pruned")}

    def observe(self, tier: str, compute_s: float, tokens: int) -> None:
        if tokens > 0 and compute_s > 0 and tier in self.seen:
            self.seen[tier].append((compute_s, tokens))

    def per_token(self, tier: str) -> float | None:
        rows = self.seen[tier]
        if len(rows) < self.min_replies:
            return None
        return sum(s for s, _ in rows) / sum(n for _, n in rows)

    def ratio(self) -> tuple[float, str] | None:
        """(ratio, source) once both tiers are measured: "live" or "live_clamped"."""
        f, p = self.per_token("full"), self.per_token("pruned")
        if not f or p is None:
            return None
        r = p / f
        clamped = min(max(r, self.lo), self.hi)
        return clamped, "live" if clamped == r else "live_clamped"
