"""Live numbers of a serving model for its status, and its health: pruned share and savings, read
from the router's own `/metrics` (contract 3: `tierserve_pruned_share`, `tierserve_savings_usd`; routers
before the rename exposed the savings gauge as `tierserve_savings_usd_total`: both are read)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["parse_live", "read_live"]

_TIMEOUT_S = 3.0
_SAVINGS_OLD = {"tierserve_savings_usd_total": "tierserve_savings_usd"}  # the pre-rename name


def parse_live(text: str) -> tuple[float | None, float | None]:
    """(pruned share, savings in USD) from Prometheus text; None for a metric that is absent."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = _SAVINGS_OLD.get(sample.name, sample.name)
            if name in ("tierserve_pruned_share", "tierserve_savings_usd"):
                found[name] = found.get(name, 0.0) + float(sample.value)
    share, savings = found.get("tierserve_pruned_share"), found.get("tierserve_savings_usd")
    return (None if share is None else round(share, 4),
            None if savings is None else round(savings, 6))


def read_live(endpoint: str) -> tuple[float | None, float | None, str | None]:
    """Scrape `<endpoint>/metrics` within 3 s: (pruned share, savings, None), or
    (None, None, why) when the router did not answer (the app's health probe, backend b)."""
    try:
        with urllib.request.urlopen(f"{endpoint}/metrics", timeout=_TIMEOUT_S) as resp:
            return (*parse_live(resp.read().decode(errors="replace")), None)
    except (OSError, ValueError) as err:
        return None, None, f"{endpoint}/metrics did not answer within {_TIMEOUT_S:g}s: {err}"
