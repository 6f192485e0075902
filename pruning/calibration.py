"""Cascade calibration: how confident must the pruned tier be to answer without the full one?

Confidence functions (pure numpy; the router imports these same functions):
- `margin(logits)`: top-1 minus top-2 softmax probability, for classifiers
- `entropy_confidence(logits)`: 1 - H(p) / log(C), for classifiers
- `topk_gap(scores, k)`: score of the best candidate minus the k-th best, for rerank/retrieval

`calibrate(confidence, agree, target)` picks the threshold: requests with confidence >= threshold
stay on pruned, the rest escalate to full (which agrees with itself). It keeps the largest share on
pruned whose overall agreement with full is still >= target, on the validation rows given.

`calibration_report(spec, full, pruned, inputs)` runs both models on the validation set (or the
calibration set when the spec has none, and says so) and returns the report's `calibration` block.
Rerank requests are built by `rerank_candidates`: the query's judged documents plus its nearest
documents by word overlap (a cheap first stage), so the same request shape is calibrated and served.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CONFIDENCES", "Calibration", "calibrate", "calibration_report", "cascade_outcome",
    "confidence", "default_confidence", "entropy_confidence", "margin", "rerank_candidates",
    "rerank_scores", "topk_gap",
]

RERANK_CANDIDATES = 10  # documents per rerank request (judged ones + nearest by word overlap)


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


# -- threshold ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    threshold: float  # pruned answers when confidence >= threshold
    agreement: float  # overall agreement with full on the calibration rows
    pruned_share: float  # share of rows answered by pruned
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def cascade_outcome(conf, agree, threshold: float) -> tuple[float, float]:
    """(overall agreement with full, pruned share) when rows with conf >= threshold stay pruned."""
    c, a = np.asarray(conf, dtype=np.float64), np.asarray(agree, dtype=bool)
    keep = c >= threshold
    if len(c) == 0:
        return 1.0, 0.0
    return float(np.mean(np.where(keep, a, True))), float(np.mean(keep))


def calibrate(conf, agree, target: float) -> Calibration:
    """The lowest threshold (most traffic on pruned) whose overall agreement is >= target.

    Rows are taken from most to least confident; a cut is only made between distinct confidence
    values, so the threshold means exactly "these rows stay on pruned". When even the single most
    confident group breaks the target, the threshold lies above every observed confidence.
    """
    c, a = np.asarray(conf, dtype=np.float64), np.asarray(agree, dtype=bool)
    n = len(c)
    if n == 0:
        raise ValueError("calibrate: no rows")
    order = np.argsort(-c, kind="stable")
    cs, disagree = c[order], np.cumsum(~a[order])  # disagreements among the top m = disagree[m-1]
    best_m = 0
    for m in range(1, n + 1):
        boundary = m == n or cs[m] < cs[m - 1]
        if boundary and 1.0 - disagree[m - 1] / n >= target:
            best_m = m
    threshold = float(cs[best_m - 1]) if best_m else float(np.nextafter(cs[0], math.inf))
    agreement, share = cascade_outcome(c, a, threshold)
    return Calibration(threshold, agreement, share, n)


# -- rerank requests ----------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def rerank_candidates(queries: Sequence[str], corpus: Sequence[str], judged: Sequence[Sequence[int]],
                      k: int = RERANK_CANDIDATES) -> list[list[int]]:
    """For each query, k document indices: its judged documents, then the nearest others by
    word-overlap (Jaccard), ties by index. Deterministic; no model involved."""
    doc_words = [_words(d) for d in corpus]
    out = []
    for q, pos in zip(queries, judged, strict=True):
        qw = _words(q)
        sims = np.array([len(qw & dw) / (len(qw | dw) or 1) for dw in doc_words])
        pos = list(pos)[:k]
        others = [int(j) for j in np.argsort(-sims, kind="stable") if j not in pos]
        out.append(pos + others[:k - len(pos)])
    return out


def rerank_scores(query_emb, doc_emb) -> np.ndarray:
    """(d,), (D, d) unit embeddings -> (D,) cosine scores (the bi-encoder rerank score)."""
    return np.asarray(doc_emb, dtype=np.float64) @ np.asarray(query_emb, dtype=np.float64)


# -- the job's calibration block ----------------------------------------------------------------
def _rerank_rows(full, pruned, queries, corpus, judged) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) full and pruned scores of each query's rerank candidates."""
    from .evaluate import encode

    cands = rerank_candidates(queries, corpus, judged)
    used = sorted({j for c in cands for j in c})
    texts = list(queries) + [corpus[j] for j in used]
    where = {j: len(queries) + i for i, j in enumerate(used)}
    outs = []
    for tm in (full, pruned):
        e = encode(tm, texts).numpy()  # (Q + D_used, d)
        outs.append(np.stack([rerank_scores(e[i], e[[where[j] for j in c]])
                              for i, c in enumerate(cands)]))  # (Q, k)
    return outs[0], outs[1]


def _outputs(full, pruned, data) -> tuple[np.ndarray, np.ndarray]:
    """Both models' outputs on the requests the router will see: rerank candidate scores for
    retrieval data (and for similarity pairs: each first text against the second texts), else
    classifier logits."""
    from .data import RetrievalData
    from .evaluate import encode

    if isinstance(data, RetrievalData):
        col = {d: j for j, d in enumerate(data.doc_ids)}
        judged = [[col[d] for d in data.qrels[q]] for q in data.query_ids]
        return _rerank_rows(full, pruned, data.queries, data.corpus, judged)
    if hasattr(data, "pairs"):  # embedding similarity pairs
        return _rerank_rows(full, pruned, data.texts, data.pairs,
                            [[i] for i in range(len(data.texts))])
    return encode(full, list(data.texts)).numpy(), encode(pruned, list(data.texts)).numpy()


def calibration_report(spec, full, pruned, inputs) -> dict:
    """The report's `calibration` block, computed on `inputs.validation` (else calibration data)."""
    if spec.model.task.value == "text-generation":  # decoder LMs: answer log-probability (lm.py)
        from .lm import calibration_lm

        return calibration_lm(spec, full, pruned, inputs)
    data, source = inputs.validation, "validation"
    if data is None:
        data, source = inputs.calibration, "calibration (no spec.data.validation given)"
    name = default_confidence(spec.model.task.value)
    f, p = _outputs(full, pruned, data)
    agree = p.argmax(axis=1) == f.argmax(axis=1)
    cal = calibrate(confidence(name, p), agree, spec.serving.target_agreement)
    return {"policy": "cascade", "confidence": name, "threshold": cal.threshold,
            "target_agreement": spec.serving.target_agreement, "source": source,
            "request": "rerank" if name == "topk_gap" else "classify",
            "candidates": RERANK_CANDIDATES if name == "topk_gap" else None,
            "validation": {"agreement": cal.agreement, "pruned_share": cal.pruned_share,
                           "n": cal.n, "pruned_agreement": float(np.mean(agree))}}
