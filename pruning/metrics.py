"""Quality metrics for gates: pure functions over numpy arrays (torch tensors are accepted too).

Classification (predictions are labels (N,) or scores/logits (N, C), argmax taken):
  accuracy, macro_f1, precision, recall
Ranking, from a score matrix (Q, D) and a graded relevance matrix (Q, D) (0 = not relevant):
  ndcg_at_k, mrr_at_k, recall_at_k
Correlation: spearman
Agreement with the full model: top1_agreement, ranking_agreement_ndcg, mean_cosine
Per-slice: per_slice(metric, slices, *arrays) applies any of the above to each slice's rows.

Every metric returns a Python float, averaged over rows (examples or queries). Ranking ties are
broken by document index (stable sort), the same way argmax breaks ties, so results are exact
and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "macro_f1",
    "mean_cosine",
    "mrr_at_k",
    "ndcg_at_k",
    "per_slice",
    "precision",
    "ranking_agreement_ndcg",
    "recall",
    "recall_at_k",
    "spearman",
    "top1_agreement",
]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on GPU or requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(x: Any) -> np.ndarray:
    """(N,) labels as given, or (N, C) scores -> (N,) argmax labels."""
    a = _np(x)
    if a.ndim == 2:
        return a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(f"expected labels (N,) or scores (N, C), got shape {a.shape}")
    return a


def _pair(pred: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _labels(pred), _labels(labels)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"predictions {p.shape} and labels {t.shape} must be equal, non-empty")
    return p, t


# -- classification -----------------------------------------------------------------------------
def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of rows where the predicted label equals the true label."""
    p, t = _pair(pred, labels)
    return float(np.mean(p == t))


def _counts(p: np.ndarray, t: np.ndarray, cls: Hashable) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of class `cls`."""
    tp = int(np.sum((p == cls) & (t == cls)))
    return tp, int(np.sum(p == cls)) - tp, int(np.sum(t == cls)) - tp


def precision(pred: Any, labels: Any, positive: Hashable) -> float:
    """TP / (TP + FP) for class `positive`; 0.0 when the class is never predicted."""
    tp, fp, _ = _counts(*_pair(pred, labels), positive)
    return tp / (tp + fp) if tp + fp else 0.0


def recall(pred: Any, labels: Any, positive: Hashable) -> float:
    """TP / (TP + FN) for class `positive`; 0.0 when the class never occurs in `labels`."""
    tp, _, fn = _counts(*_pair(pred, labels), positive)
    return tp / (tp + fn) if tp + fn else 0.0


def macro_f1(pred: Any, labels: Any, classes: Sequence[Hashable] | None = None) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN) (0.0 for a class with no TP, FP
    or FN). `classes` defaults to the classes seen in labels or predictions, as sklearn does;
    pass the full label set to count a class the model never predicts and that never occurs."""
    p, t = _pair(pred, labels)
    cls = np.union1d(p, t) if classes is None else list(classes)
    f1s = []
    for c in cls:
        tp, fp, fn = _counts(p, t, c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


# -- ranking ------------------------------------------------------------------------------------
def _ranked_gains(scores: Any, relevance: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Relevance of each query's top-k documents in score order (Q, k), and relevance (Q, D)."""
    s, r = _np(scores).astype(np.float64), _np(relevance).astype(np.float64)
    if s.ndim != 2 or s.shape != r.shape or s.size == 0:
        raise ValueError(f"scores {s.shape} and relevance {r.shape} must be equal (Q, D) arrays")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (Q, k) doc indices, best first
    return np.take_along_axis(r, top, axis=1), r


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))  # (n,) rank 1 -> 1, rank 2 -> 1/log2(3), ...


def ndcg_at_k(scores: Any, relevance: Any, k: int = 10) -> float:
    """Mean NDCG@k with linear gains: DCG = sum_{rank<=k} rel / log2(rank + 1), divided by the DCG
    of the ideal ordering. A query with no relevant document scores 0 (as sklearn's ndcg_score).
    scores, relevance: (Q, D); larger score = ranked higher."""
    gains, r = _ranked_gains(scores, relevance, k)
    disc = _discounts(gains.shape[1])
    dcg = gains @ disc  # (Q,)
    ideal = -np.sort(-r, axis=1)[:, : gains.shape[1]] @ disc  # (Q,)
    return float(np.mean(np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)))


def mrr_at_k(scores: Any, relevance: Any, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant (relevance > 0) document within the top k;
    0 for a query with none there."""
    hits = _ranked_gains(scores, relevance, k)[0] > 0  # (Q, k)
    first = hits.argmax(axis=1)  # (Q,) 0-based rank of the first hit
    return float(np.mean(np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)))


def recall_at_k(scores: Any, relevance: Any, k: int = 100) -> float:
    """Mean fraction of each query's relevant documents found in its top k; 0 for a query with
    no relevant document."""
    gains, r = _ranked_gains(scores, relevance, k)
    found, total = (gains > 0).sum(axis=1), (r > 0).sum(axis=1)  # (Q,), (Q,)
    return float(np.mean(np.divide(found, total, out=np.zeros(len(total)), where=total > 0)))


# -- correlation --------------------------------------------------------------------------------
def _rank_average(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (scipy's rankdata 'average')."""
    order = np.argsort(a, kind="mergesort")
    inverse = np.empty(len(a), dtype=np.intp)
    inverse[order] = np.arange(len(a))
    sorted_a = a[order]
    new_value = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = new_value.cumsum()[inverse]  # 1-based tie-group index of each element
    starts = np.r_[np.flatnonzero(new_value), len(a)]  # group g spans sorted positions [s_g, s_g+1)
    return 0.5 * (starts[dense - 1] + 1 + starts[dense])


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of two 1-D arrays (Pearson correlation of average ranks).
    NaN when either input is constant (as scipy.stats.spearmanr); a gate comparing NaN fails."""
    a, b = _np(x).astype(np.float64).ravel(), _np(y).astype(np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two equal 1-D arrays of >= 2 values, got {a.shape}, "
                         f"{b.shape}")
    ra, rb = _rank_average(a) - (a.size + 1) / 2, _rank_average(b) - (b.size + 1) / 2
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else float("nan")


# -- agreement with the full model --------------------------------------------------------------
def top1_agreement(pruned: Any, full: Any) -> float:
    """Fraction of rows where pruned and full pick the same top-1: the same label for labels (N,)
    or logits (N, C), the same best document for score matrices (Q, D)."""
    return accuracy(pruned, full)


def ranking_agreement_ndcg(pruned_scores: Any, full_scores: Any, k: int = 10) -> float:
    """NDCG@k of the pruned ranking, judged against the full model's ranking: each query's full
    top-k documents get graded relevance k, k-1, ..., 1 (in full's order), all others 0.
    1.0 exactly when the pruned top-k equals the full top-k in the same order."""
    full = _np(full_scores).astype(np.float64)
    if full.ndim != 2:
        raise ValueError(f"full_scores must be (Q, D), got {full.shape}")
    kk = min(k, full.shape[1])
    top = np.argsort(-full, axis=1, kind="stable")[:, :kk]  # (Q, kk)
    rel = np.zeros_like(full)  # (Q, D)
    np.put_along_axis(rel, top, np.arange(kk, 0, -1, dtype=np.float64)[None, :], axis=1)
    return ndcg_at_k(pruned_scores, rel, k)


def mean_cosine(pruned: Any, full: Any) -> float:
    """Mean cosine similarity between matching rows of two (N, d) output arrays (embeddings)."""
    a, b = _np(pruned).astype(np.float64), _np(full).astype(np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"expected two equal (N, d) arrays, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (N,)
    cos = np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)
    return float(np.mean(cos))


# -- slices -------------------------------------------------------------------------------------
def per_slice(metric: Callable[..., float], slices: Sequence[Hashable], *arrays: Any,
              **kwargs: Any) -> dict[str, float]:
    """`metric` computed separately on the rows of each slice, as {slice: value}, sorted by name.

    Every array is indexed along axis 0 (examples, or queries of a (Q, D) matrix), so
    `per_slice(ndcg_at_k, query_slices, scores, relevance, k=10)` gives per-slice NDCG@10.
    kwargs go to `metric` unchanged.
    """
    keys = np.asarray([str(s) for s in slices])
    arrs = [_np(a) for a in arrays]
    for a in arrs:
        if a.shape[0] != len(keys):
            raise ValueError(f"an array has {a.shape[0]} rows but there are {len(keys)} slices")
    return {str(s): metric(*(a[keys == s] for a in arrs), **kwargs) for s in np.unique(keys)}
