"""Capacity and time bounds of the request path, pure (no Serve imports): what each deployment
admits and queues, derived from the spec's replica counts and batch sizes, and how long a call
may take for a request of a given size.

Defaults (each overridable in the spec, see docs/serving.md "Capacity and back-pressure"):

    tier.maxOngoingRequests   = 2 x maxBatchSize              one batch running, one filling
    tier.maxQueuedRequests    = 2 x maxOngoingRequests x R    per router replica; R = max replicas
    router.maxOngoingRequests = max(16, sum over tiers of (ongoing x R + queued)) / router replicas
    router.maxQueuedRequests  = router.maxOngoingRequests     at the HTTP proxy; beyond it: 503
    autoscaling target        = maxOngoingRequests / 2        (= maxBatchSize by default)

Time: a call's timeout is `base + per_1k_tokens x tokens / 1000`, with tokens estimated from the
characters (4 per token, at most maxLength per item). A request whose full-tier timeout would
exceed `maxTimeoutS` is refused up front (413), because no tier could answer it in time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Capacity", "TimeBudget", "ask_all", "estimate_tokens", "router_capacity",
           "tier_capacity"]

ROUTER_MIN_ONGOING = 16
CHARS_PER_TOKEN = 4  # a cheap estimate; the tier reports the real count in its reply
SPECIAL_TOKENS = 2  # [CLS] ... [SEP]


@dataclass(frozen=True)
class Capacity:
    max_ongoing: int  # per replica
    max_queued: int  # per caller (router replica, or the HTTP proxy for the router)
    replicas: int  # the most replicas it may run
    target_ongoing: int  # autoscaling target per replica

    @property
    def holds(self) -> int:
        """Requests the deployment can hold at once, working and queued, for one caller."""
        return self.max_ongoing * self.replicas + self.max_queued


def tier_capacity(max_batch_size: int, replicas: int, max_replicas: int | None,
                  max_ongoing: int | None = None, max_queued: int | None = None) -> Capacity:
    most = max(replicas, max_replicas or 0, 1)
    ongoing = max_ongoing or 2 * max_batch_size
    queued = max_queued or 2 * ongoing * most
    return Capacity(ongoing, queued, most, max(1, ongoing // 2))


def router_capacity(tiers: list[Capacity], replicas: int, max_ongoing: int | None = None,
                    max_queued: int | None = None) -> Capacity:
    """The router admits what its tiers can hold (spread over its replicas), so requests wait in
    the tiers' bounded queues, never in an unbounded one in front of the router."""
    ongoing = max_ongoing or max(ROUTER_MIN_ONGOING, -(-sum(t.holds for t in tiers) // replicas))
    return Capacity(ongoing, max_queued or ongoing, replicas, max(1, ongoing // 2))


def estimate_tokens(texts: list[str], max_length: int) -> int:
    """Input tokens of a request, estimated without a tokenizer: chars/4 + 2 per item, capped."""
    return sum(min(max_length, len(t) // CHARS_PER_TOKEN + SPECIAL_TOKENS) for t in texts)


@dataclass(frozen=True)
class TimeBudget:
    pruned_s: float  # base timeout of a pruned call
    full_s: float  # base bound of a full call
    per_1k_tokens_s: float
    max_s: float  # refuse requests needing more than this on full

    def pruned(self, tokens: int) -> float:
        return self.pruned_s + self.per_1k_tokens_s * tokens / 1000.0

    def full(self, tokens: int) -> float:
        return self.full_s + self.per_1k_tokens_s * tokens / 1000.0

    def refusal(self, tokens: int) -> str | None:
        """None when a request of `tokens` fits; else the 413 message naming the limit."""
        need = self.full(tokens)
        if need <= self.max_s:
            return None
        return (f"request is ~{tokens} input tokens; at {self.per_1k_tokens_s:g} s per 1000 tokens "
                f"it may need {need:.1f} s, over the limit of {self.max_s:g} s "
                f"(spec.serving.maxTimeoutS): split it into smaller requests")


def ask_all(handle, reqs: list[dict], window: int = 32) -> list[dict]:
    """Replies of `handle.infer` to every request, at most `window` in flight at once: a caller
    outside the router (a replay, a benchmark) must stay within the tier's bounded queue
    (`maxQueuedRequests`, per caller) or get BackPressureError."""
    out: list[dict] = []
    for i in range(0, len(reqs), window):
        calls = [handle.infer.remote(r) for r in reqs[i:i + window]]
        out += [c.result() for c in calls]
    return out
