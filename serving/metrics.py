"""The metrics of contract 3, kept in ONE place per model so every router replica adds to the same
counters: a named, detached Ray actor (`Stats`) owns a prometheus-client registry, the shadow
agreement window and the fallback switch. A router replica's reply leaves only once its events
are in the replica's write-ahead journal (serving/journal.py), which a background pusher ships
here in order and a dead replica's successor replays (each batch applied once, by its journal id
and sequence number), so a killed router loses at most the requests it had in flight, never an
answered one; what is not tied to an answer (shadow outcomes, tier health) goes the same way
every `FLUSH_S` seconds, and each push's reply carries the shared shadow state back. Tiers charge the replica time of cancelled
calls here too (`charge_abandoned`), so cost counts what really ran.

Why an actor and not prometheus-client's multiprocess mode: replicas of one app run on several
nodes (pods), and multiprocess mode only merges processes that share one local directory. The
actor is reachable from every node, and it is also where the shadow switch must live so that all
replicas shift to full together. /metrics is served by the actor's own HTTP port (`metricsPort`)
and, proxied, by the router at `/metrics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .policy import REASONS, ShadowMonitor

__all__ = ["Events", "Metrics", "Stats", "charge_abandoned", "stats_actor", "stats_name"]

log = logging.getLogger("tierserve.serving")
FLUSH_S = 0.25
TOKEN_KINDS = ("input", "output")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The contract-3 metric families on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter("tierserve_requests_total", "Requests answered, by tier and reason",
                                ["model", "tier", "reason"], registry=r)
        self.duration = Histogram("tierserve_request_duration_seconds", "Router latency by tier",
                                  ["model", "tier"], buckets=BUCKETS, registry=r)
        self.escalations = Counter("tierserve_escalations_total", "Cascade escalations to full",
                                   ["model"], registry=r)
        self.fallbacks = Counter("tierserve_fallbacks_total", "Pruned errors/timeouts served by full",
                                 ["model"], registry=r)
        self.shadow = Counter("tierserve_shadow_requests_total", "Shadow comparisons made",
                              ["model"], registry=r)
        self.shadow_agreement = Gauge("tierserve_shadow_agreement", "Live agreement (window)",
                                      ["model"], registry=r)
        self.shadow_active = Gauge("tierserve_shadow_fallback_active", "1: all traffic on full",
                                   ["model"], registry=r)
        self.gate = Gauge("tierserve_agreement_gate", "The agreement target", ["model"], registry=r)
        self.cost = Counter("tierserve_cost_usd_total", "Estimated cost", ["model", "tier"],
                            registry=r)
        self.counterfactual = Counter("tierserve_counterfactual_cost_usd_total",
                                      "Estimated cost had full served everything", ["model"],
                                      registry=r)
        self.savings = Gauge("tierserve_savings_usd", "counterfactual - cost, cumulative (can "
                             "dip with escalations, hence a gauge, so no _total)", ["model"],
                             registry=r)
        self.pruned_share = Gauge("tierserve_pruned_share", "Share of requests answered by pruned",
                                  ["model"], registry=r)
        self.tier_up = Gauge("tierserve_tier_up", "1 when the tier answers health checks",
                             ["model", "tier"], registry=r)
        self.tokens = Counter("tierserve_tokens_total", "Tokens processed: kind=input (prompts, "
                              "texts) or output (generated)", ["model", "tier", "kind"],
                              registry=r)
        self.truncated = Counter("tierserve_truncated_total", "Texts cut at maxLength tokens",
                                 ["model", "tier"], registry=r)
        self.cancelled = Counter("tierserve_cancelled_total", "Tier calls cancelled (timed out); "
                                 "their replica time is in the cost", ["model", "tier"], registry=r)
        self.rejected = Counter("tierserve_rejected_total", "Requests refused: reason=backpressure "
                                "(503), too_large (413), tier_down (503), invalid (400/404/422)",
                                ["model", "reason"], registry=r)
        self.circuit_open = Gauge("tierserve_circuit_open", "1 while the router sends nothing to "
                                  "the tier (its replica died or failed health checks)",
                                  ["model", "tier"], registry=r)
        # the cost model and partial escalation
        self.cost_ratio = Gauge("tierserve_cost_ratio", "Pruned/full cost ratio the savings are "
                                "priced with; source=job:measured|job:clamped_to_ideal|live|...",
                                ["model", "source"], registry=r)
        self.escalated_items = Counter("tierserve_escalated_items_total", "Items full scored for "
                                       "escalated cascade requests (rerank: top-m documents; "
                                       "classify: unconfident texts)", ["model", "endpoint"],
                                       registry=r)


REJECTIONS = ("backpressure", "too_large", "tier_down", "invalid")


@dataclass
class Events:
    """What one router replica saw since its last push (plain data, cheap to send)."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (tier, reason) -> n
    durations: list[tuple[str, float]] = field(default_factory=list)  # (tier, seconds)
    escalations: int = 0
    fallbacks: int = 0
    shadow: list[bool] = field(default_factory=list)  # agreement of each comparison
    cost: dict[str, float] = field(default_factory=dict)  # tier -> USD
    counterfactual: float = 0.0
    tier_up: dict[str, bool] = field(default_factory=dict)
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)  # (tier, kind) -> n
    truncated: dict[str, int] = field(default_factory=dict)  # tier -> texts cut
    cancelled: dict[str, int] = field(default_factory=dict)  # tier -> calls cancelled
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> requests refused
    circuit_open: dict[str, bool] = field(default_factory=dict)
    escalated_items: dict[str, int] = field(default_factory=dict)  # endpoint -> items to full
    cost_ratio: tuple[float, str] | None = None  # (ratio in use, its source)

    def count_tokens(self, tier: str, reply: dict) -> None:
        """Tokens a tier processed for one reply (its `input_tokens` / `output_tokens`)."""
        for kind in TOKEN_KINDS:
            n = int(reply.get(f"{kind}_tokens", 0))
            if n:
                self.tokens[(tier, kind)] = self.tokens.get((tier, kind), 0) + n

    def add(self, what: str, key: str, n: int = 1) -> None:
        """Count into one of the keyed counters (`truncated`, `cancelled`, `rejected`)."""
        d = getattr(self, what)
        d[key] = d.get(key, 0) + n

    def request(self, tier: str, reason: str, seconds: float) -> None:
        self.requests[(tier, reason)] = self.requests.get((tier, reason), 0) + 1
        self.durations.append((tier, seconds))

    def spend(self, by_tier: dict[str, float], counterfactual: float) -> None:
        for tier, usd in by_tier.items():
            self.cost[tier] = self.cost.get(tier, 0.0) + usd
        self.counterfactual += counterfactual

    def empty(self) -> bool:
        return not (self.requests or self.shadow or self.cost or self.tier_up or self.tokens
                    or self.escalations or self.fallbacks or self.truncated or self.cancelled
                    or self.rejected or self.circuit_open or self.escalated_items
                    or self.counterfactual or self.cost_ratio is not None)

    def merge(self, other: Events) -> Events:
        """Add `other` (later) into this one: counts add up, states (`tier_up`, `circuit_open`,
        `cost_ratio`) take the later value."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name in _LATEST:
                if isinstance(mine, dict):
                    mine.update(theirs)
                elif theirs is not None:
                    setattr(self, f.name, theirs)
            elif isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            elif isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, f.name, mine + theirs)
        return self

    def to_json(self) -> dict:
        """Plain JSON (the router's journal): tuple keys become lists `[*key, value]`."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _TUPLE_KEYS:
                v = [[*k, n] for k, n in v.items()]
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, doc: dict) -> Events:
        ev = cls()
        for f in fields(cls):
            if f.name not in doc:
                continue
            v = doc[f.name]
            if f.name in _TUPLE_KEYS:
                v = {tuple(row[:-1]): row[-1] for row in v} if isinstance(v, list) else {}
            elif f.name == "durations":
                v = [(t, float(s)) for t, s in v]
            elif f.name == "cost_ratio" and v is not None:
                v = (float(v[0]), str(v[1]))
            setattr(ev, f.name, v)
        return ev


_LATEST = ("tier_up", "circuit_open", "cost_ratio")
_TUPLE_KEYS = ("requests", "tokens")


class Stats:
    """Body of the per-model stats actor (wrapped by `stats_actor`)."""

    def __init__(self, model: str, gate: float, window: int, hysteresis: float) -> None:
        self.model, self.registry = model, CollectorRegistry()
        self.m = Metrics(self.registry)
        self.monitor = ShadowMonitor(gate, window, hysteresis)
        self.m.gate.labels(model).set(gate)
        self._zeros(model)
        self.served = {"full": 0, "pruned": 0}
        self.spent, self.would = 0.0, 0.0
        self.port: int | None = None
        self.applied: dict[str, int] = {}  # journal source -> last sequence number applied

    def _zeros(self, model: str) -> None:
        """Create every labelled series at 0, so dashboards and rate() see them from the start."""
        m = self.m
        for tier in ("full", "pruned"):
            for reason in REASONS:
                m.requests.labels(model, tier, reason)
            m.duration.labels(model, tier)
            m.cost.labels(model, tier)
            for kind in TOKEN_KINDS:
                m.tokens.labels(model, tier, kind)
            m.truncated.labels(model, tier)
            m.cancelled.labels(model, tier)
            m.circuit_open.labels(model, tier).set(0)
        for reason in REJECTIONS:
            m.rejected.labels(model, reason)
        for metric in (m.escalations, m.fallbacks, m.shadow, m.counterfactual):
            metric.labels(model)
        for gauge in (m.shadow_active, m.savings, m.pruned_share):
            gauge.labels(model).set(0)

    def push(self, ev: Events, source: str | None = None, upto: int | None = None) -> dict:
        """Apply one replica's events; returns the shared state the router acts on. A batch
        tagged `(source, upto)` (a router journal's id and last sequence number, journal.py) is
        applied once: a resent or replayed batch at or below what this source reached is skipped."""
        if source is not None and upto is not None:
            if upto <= self.applied.get(source, 0):
                return self.state()
            self.applied[source] = upto
        m, name = self.m, self.model
        for (tier, reason), n in ev.requests.items():
            m.requests.labels(name, tier, reason).inc(n)
            self.served[tier] += n
        for tier, s in ev.durations:
            m.duration.labels(name, tier).observe(s)
        m.escalations.labels(name).inc(ev.escalations)
        m.fallbacks.labels(name).inc(ev.fallbacks)
        for tier, usd in ev.cost.items():
            m.cost.labels(name, tier).inc(usd)
            self.spent += usd
        m.counterfactual.labels(name).inc(ev.counterfactual)
        self.would += ev.counterfactual
        m.savings.labels(name).set(self.would - self.spent)
        total = sum(self.served.values())
        if total:
            m.pruned_share.labels(name).set(self.served["pruned"] / total)
        for (tier, kind), n in ev.tokens.items():
            m.tokens.labels(name, tier, kind).inc(n)
        for tier, up in ev.tier_up.items():
            m.tier_up.labels(name, tier).set(1 if up else 0)
        for counter, counts in ((m.truncated, ev.truncated), (m.cancelled, ev.cancelled),
                                (m.rejected, ev.rejected)):
            for key, n in counts.items():
                counter.labels(name, key).inc(n)
        for tier, is_open in ev.circuit_open.items():
            m.circuit_open.labels(name, tier).set(1 if is_open else 0)
        for endpoint, n in ev.escalated_items.items():
            m.escalated_items.labels(name, endpoint).inc(n)
        if ev.cost_ratio is not None:  # one series: the ratio in use, labelled by its source
            m.cost_ratio.clear()
            m.cost_ratio.labels(name, ev.cost_ratio[1]).set(ev.cost_ratio[0])
        self._shadow(ev.shadow)
        return self.state()

    def _shadow(self, outcomes: list[bool]) -> None:
        for agree in outcomes:
            self.m.shadow.labels(self.model).inc()
            change = self.monitor.record(agree)
            if change is not None:
                log.warning("tierserve %s: shadow fallback %s (window agreement %.4f, gate %.4f)",
                            self.model, change, self.monitor.last, self.monitor.gate)
                self.m.shadow_active.labels(self.model).set(1 if self.monitor.active else 0)
        if self.monitor.agreement is not None:
            self.m.shadow_agreement.labels(self.model).set(self.monitor.agreement)

    def applied_upto(self, source: str) -> int:
        """The last journal sequence number of `source` applied here (0: none)."""
        return self.applied.get(source, 0)

    def forget(self, source: str) -> None:
        """A replayed journal is gone: its source never pushes again."""
        self.applied.pop(source, None)

    def state(self) -> dict:
        return {"shadow_fallback_active": self.monitor.active,
                "shadow_agreement": self.monitor.agreement, "shadow_samples": self.monitor.total}

    def totals(self) -> dict:
        """Running totals for summaries: requests per tier, USD spent, all-full USD, savings."""
        return {"served": dict(self.served), "cost_usd": self.spent,
                "counterfactual_usd": self.would, "savings_usd": self.would - self.spent,
                **self.state()}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve_http(self, port: int) -> int:
        """Start the /metrics HTTP server once; returns the port it listens on."""
        if self.port is None:
            from prometheus_client import start_http_server

            start_http_server(port, addr="0.0.0.0", registry=self.registry)
            self.port = port
        return self.port


def stats_name(model: str) -> str:
    return f"tierserve-stats-{model}"


def stats_actor(model: str, gate: float, window: int, hysteresis: float):
    """The model's stats actor, created on first use and shared by every router replica."""
    import ray

    cls = ray.remote(num_cpus=0, max_restarts=-1)(Stats)
    return cls.options(name=stats_name(model), namespace="tierserve", get_if_exists=True,
                       lifetime="detached").remote(model, gate, window, hysteresis)


def charge_abandoned(model: str, tier: str, cost, compute_s: float, tokens: int) -> None:
    """Charge the replica time a tier's cancelled calls used (no counterfactual: the request was
    answered, and priced, by the other tier; the router counts the cancellations). Best effort."""
    import ray

    if cost is None:
        return
    ev = Events(cost={tier: cost.tier_cost(tier, compute_s, tokens)})
    try:
        ray.get_actor(stats_name(model), namespace="tierserve").push.remote(ev)
    except Exception as err:  # noqa: BLE001 - metrics must never break serving
        log.warning("could not charge %s's cancelled work: %s", tier, err)
