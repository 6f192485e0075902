"""What an escalated cascade request sends to full, and how the answers merge. Pure numpy: nothing
here imports Serve, so the router and the benchmarks share it with the job's calibration
(`pruning/cascade.py` holds the ranking merge both use).

- rerank, partial escalation: full re-scores only pruned's best `m` documents
  (`rerank_subrequest`), and its scores reorder those m; the others keep pruned's order below
  them (`merge_rerank`). m >= the number of documents: full redoes the whole request.
- classify (and any per-item op), per-item escalation: only the items whose own confidence is
  below the threshold go to full (`escalated_items`, `item_subrequest`); full's rows replace
  pruned's for those items (`merge_items`).
- embed never escalates (no confidence); which tier embeds is `embed_tier` below: one tier, named
  by the spec, unless the report's cross-tier gate passed (`embed_split_allowed`); then a key
  (`X-Tier-Key`, e.g. the collection) keeps each key on one tier (`sticky_draw`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from tierserve.pruning.cascade import confidence, partial_ranking

__all__ = [
    "CROSS_TIER_METRICS", "embed_split_allowed", "escalated_items", "item_subrequest",
    "merge_items", "merge_rerank", "rerank_subrequest", "sticky_draw",
]

CROSS_TIER_METRICS = ("embedding_cosine", "cross_tier_")  # gates that prove one shared space


# -- rerank -------------------------------------------------------------------------------------
def rerank_subrequest(texts: Sequence[str], pruned_scores, m: int) -> tuple[list[str], np.ndarray]:
    """[query, *documents] and pruned's scores -> (the texts full scores, the document indices
    they are: pruned's best m, best first)."""
    top = np.argsort(-np.asarray(pruned_scores, dtype=np.float64), kind="stable")[:m]
    return [texts[0], *(texts[1 + int(j)] for j in top)], top


def merge_rerank(pruned_scores, full_top_scores) -> list[float]:
    """Scores in request order whose descending order is the partial-escalation ranking: the top
    m carry full's scores; the others keep pruned's, shifted (order kept) below the lowest of
    them, so `scores` and `ranking` agree."""
    p = np.asarray(pruned_scores, dtype=np.float64)
    f = np.asarray(full_top_scores, dtype=np.float64)
    order = partial_ranking(p, f)
    m = len(f)
    out = p.copy()
    top = np.argsort(-p, kind="stable")[:m]
    out[top] = f
    rest = order[m:]
    if len(rest):
        shift = max(0.0, float(p[rest].max() - f.min())) + 1e-6
        out[rest] = p[rest] - shift
    return out.tolist()


# -- per item -----------------------------------------------------------------------------------
def escalated_items(conf_name: str, outputs, threshold: float) -> list[int]:
    """Indices of the items whose own confidence is below the threshold."""
    conf = confidence(conf_name, np.asarray(outputs, dtype=np.float64))
    return [int(i) for i in np.flatnonzero(conf < threshold)]


def item_subrequest(texts: Sequence[str], items: Sequence[int]) -> list[str]:
    return [texts[i] for i in items]


def merge_items(pruned_rows, full_rows, items: Sequence[int]) -> list:
    """Pruned's rows with full's rows in place of the escalated items."""
    out = [list(r) for r in pruned_rows]
    for i, row in zip(items, full_rows, strict=True):
        out[i] = list(row)
    return out


# -- embed --------------------------------------------------------------------------------------
def embed_split_allowed(gates: Sequence[dict] | None) -> bool:
    """True when the report has at least one cross-tier gate (embedding_cosine / cross_tier_*)
    and every one of them passed: only then may one index hold vectors from both tiers."""
    cross = [g for g in gates or ()
             if any(str(g.get("metric") or g.get("name") or "").startswith(m)
                    for m in CROSS_TIER_METRICS)]
    return bool(cross) and all(g.get("passed") for g in cross)


def sticky_draw(key: str) -> float:
    """A stable uniform [0, 1) number for a key: the same key always lands on the same tier."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
