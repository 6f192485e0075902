"""Where a routed request's time goes, pure: per-stage milliseconds the router sends
in the `x-tierserve-stages` header, e.g. `decide=0.041;pruned_hop=1.210;pruned_replica=17.9;
commit=0.052`:

- `decide`: request info, policy and admission, before any tier is asked;
- `<tier>_replica`: the tier's own time for the call (from entering `infer` to its reply, batch
  wait included: `replica_s` in the reply);
- `<tier>_hop`: the rest of the wait on that tier: the handle call, queueing at the replica,
  pickling the request and the reply (0 when the tier is served inside the router replica);
- `commit`: recording the metric events (awaited group commit, or the send).

What the header cannot see (the HTTP proxy, FastAPI parsing and the response's validation and
JSON) is the client-side time minus the router's (`x-tierserve-router-ms`) and the tier's.
"""

from __future__ import annotations

__all__ = ["STAGES_HEADER", "add_stages", "parse_stages", "stage_header"]

STAGES_HEADER = "x-tierserve-stages"


def add_stages(stages: dict[str, float], tier: str, waited_s: float, reply: dict) -> None:
    """Split one tier call's wait into the tier's own time and the hop around it (ms)."""
    inside = float(reply.get("replica_s") or 0.0)
    for key, ms in ((f"{tier}_replica", 1000 * inside),
                    (f"{tier}_hop", 1000 * max(0.0, waited_s - inside))):
        stages[key] = stages.get(key, 0.0) + ms


def stage_header(stages: dict[str, float]) -> str:
    return ";".join(f"{k}={v:.3f}" for k, v in stages.items())


def parse_stages(value: str | None) -> dict[str, float]:
    if not value:
        return {}
    return {k: float(v) for k, v in (item.split("=", 1) for item in value.split(";") if item)}
