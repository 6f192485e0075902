"""A tier's batch as pieces (one text, or one (query, document) pair, each), pure: which request
each piece belongs to, and the replies re-assembled from what the forward passes wrote into them.

A piece left without a row was never run (its request was cancelled first); a request with any
such piece gets `rows=None` (nobody awaits its answer any more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Piece", "plan_pieces", "replies_from"]


@dataclass
class Piece:
    job: int  # index of its request in the batch
    text: str | tuple[str, str]
    row: np.ndarray | None = None  # (d,) embedding or (C,) logits, once run
    tokens: int = 0  # tokens it fed the model
    seconds: float = 0.0  # its token share of the forward pass
    truncated: bool = False  # cut at maxLength


def plan_pieces(reqs: list[dict], cross: bool) -> list[Piece]:
    """Rerank: the query first, then the documents (a cross-encoder gets (query, doc) pairs)."""
    out = []
    for i, r in enumerate(reqs):
        texts = r["texts"]
        items = ([(texts[0], d) for d in texts[1:]] if r["op"] == "rerank" and cross
                 else list(texts))
        out += [Piece(i, t) for t in items]
    return out


def replies_from(pieces: list[Piece], n_jobs: int) -> list[dict]:
    """Per request: `rows` (n, d) in request order, `compute_s`, `input_tokens`, `truncated`."""
    mine: list[list[Piece]] = [[] for _ in range(n_jobs)]
    for p in pieces:
        mine[p.job].append(p)
    replies = []
    for ps in mine:
        done = all(p.row is not None for p in ps)
        replies.append({"rows": np.stack([p.row for p in ps]) if done and ps else None,
                        "compute_s": float(sum(p.seconds for p in ps)),
                        "input_tokens": int(sum(p.tokens for p in ps)),
                        "truncated": int(sum(p.truncated for p in ps))})
    return replies
