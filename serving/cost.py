"""Cost accounting for served requests, pure: what a request cost, and what all-full would have cost.

A request's cost on a tier = the tier's price per request + its price per replica-hour times the
replica time the request used (its token share of the batch forward pass, measured in the tier)
+ its price per million tokens times the tokens the tier processed (input + generated).
The counterfactual is the same request served by full alone: full's own compute time when full
ran, else pruned's compute time divided by the job's measured pruned/full latency ratio; and the
tokens of the tier that answered.
Escalated cascade requests pay for both tiers, so their savings are negative, as they really are.

When the spec gives no prices, both tiers are priced at $1 per replica-hour (`assumed=True`):
savings then measure replica time saved, on the same hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CostModel", "RequestCost", "reply_tokens", "request_cost"]

ASSUMED_USD_PER_REPLICA_HOUR = 1.0


@dataclass(frozen=True)
class CostModel:
    per_request_full: float
    per_request_pruned: float
    per_hour_full: float
    per_hour_pruned: float
    per_mtok_full: float
    per_mtok_pruned: float
    latency_ratio: float  # pruned p50 / full p50, from the job's report
    assumed: bool = False

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
                 tokens: dict[str, int] | None = None) -> RequestCost:
    """`compute`: tier -> seconds of replica time this request used (shadow calls included);
    `tokens`: tier -> tokens it processed there."""
    tokens = tokens or {}
    by_tier = {t: model.tier_cost(t, s, tokens.get(t, 0)) for t, s in compute.items()}
    full_s = compute["full"] if "full" in compute else model.full_equivalent_s(
        "pruned", compute.get("pruned", 0.0))
    full_tokens = tokens.get("full", tokens.get("pruned", 0))
    return RequestCost(by_tier, model.tier_cost("full", full_s, full_tokens))
