"""Evaluate one model on held-out data: task metrics overall and per slice, plus the raw outputs
that agreement with the full model is computed from (no labels needed for agreement).

Retrieval (embedding, bi-encoder rerank): queries and corpus are embedded, scores = cosine (Q, D).
Cross-encoder rerank: each query scores its judged documents plus `negatives` others, chosen
deterministically, and scores outside that candidate set are -inf.
Classification: logits (N, C).
Similarity pairs (embedding): cosine of the two texts' embeddings, Spearman against the human
scores; agreement with the full model is the Spearman of the two models' cosines.

Embedding models also keep their vectors, for the quality signals that compare two models'
vector spaces (`quality_signals`):
- `embedding_cosine`: mean cosine of full vs pruned vectors of the same evaluation texts
  (queries and corpus; for similarity pairs both texts of every pair);
- `cross_tier_ndcg@10`, `cross_tier_mrr@10`, `cross_tier_recall@100` (bi-encoder retrieval only):
  pruned query vectors searched against an index of the FULL model's corpus vectors, which is what
  a client sees when split routing sends some requests to each tier. The full model's counterpart
  is its own metric (full queries on the full index), so kept = cross-tier / full's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .data import ClassificationData, RetrievalData
from .pairs import SimilarityData
from .tasks import TaskModel

__all__ = ["Evaluation", "Signals", "agreement", "encode", "evaluate", "quality_kept",
           "quality_signals"]

_RANK_KS = (10,)
CROSS_TIER = "cross_tier_"  # prefix of the cross-tier retrieval metrics
EMBEDDING_COSINE = "embedding_cosine"


@dataclass
class Evaluation:
    metrics: dict[str, float]  # e.g. {"ndcg@10": 0.87, "mrr@10": 0.85, "recall@100": 0.99}
    slices: dict[str, dict[str, float]]  # {slice: {metric: value}}
    outputs: np.ndarray = field(repr=False)  # (Q, D) scores or (N, C) logits, for agreement
    slice_of_row: tuple[str, ...] | None = field(default=None, repr=False)
    kind: str = "rank"  # rank | class | similarity: how agreement compares outputs
    # embedding models: (queries (Q, d), corpus (D, d)) or similarity (texts (N, d), pairs (N, d))
    vectors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    relevance: np.ndarray | None = field(default=None, repr=False)  # (Q, D) bi-encoder retrieval


def _length(example) -> int:
    """A cheap proxy for an example's token count (texts and (query, document) pairs)."""
    if isinstance(example, str):
        return len(example)
    if isinstance(example, (tuple, list)) and all(isinstance(x, str) for x in example):
        return sum(len(x) for x in example)
    return 0  # images: one size


def known_vectors(ev: Evaluation, data) -> dict[str, np.ndarray]:
    """{text: vector} of every text an embedding evaluation encoded (queries and corpus), so a
    later pass over the same texts with the same model (the cascade calibration) reuses them.
    Empty for anything but bi-encoder retrieval."""
    if ev.vectors is None or not hasattr(data, "corpus") or ev.kind != "rank":
        return {}
    q, d = ev.vectors
    return {**dict(zip(data.corpus, d, strict=True)), **dict(zip(data.queries, q, strict=True))}


def encode_reusing(tm: TaskModel, texts: Sequence[str], known: dict[str, np.ndarray] | None,
                   batch_size: int = 64) -> np.ndarray:
    """`encode(tm, texts)` as numpy, running only the texts `known` (this model's vectors of
    the same texts, `known_vectors`) does not hold."""
    known = known or {}
    todo = sorted({t for t in texts if t not in known})
    fresh = dict(zip(todo, encode(tm, todo, batch_size).numpy(), strict=True)) if todo else {}
    return np.stack([known[t] if t in known else fresh[t] for t in texts])


@torch.inference_mode()
def encode(tm: TaskModel, examples: Sequence, batch_size: int = 64) -> torch.Tensor:
    """Task outputs for many examples: (N, d) embeddings or (N, C) logits, on the CPU, in the
    order given. Examples are batched by length (longest first), so a batch pads to its own
    longest text instead of the longest of a random draw: on the Debian corpus (median 48 words,
    up to 270) that cuts the padded tokens the models run by about a third. An example's output
    does not depend on its batch (the attention mask hides padding)."""
    if not len(examples):
        return torch.empty(0)
    order = sorted(range(len(examples)), key=lambda i: -_length(examples[i]))
    out = [tm.outputs(tm.batch([examples[j] for j in order[i:i + batch_size]])).float().cpu()
           for i in range(0, len(order), batch_size)]
    flat = torch.cat(out)
    result = torch.empty_like(flat)
    result[torch.tensor(order)] = flat
    return result


def _candidates(data: RetrievalData, negatives: int) -> list[list[int]]:
    col = {d: j for j, d in enumerate(data.doc_ids)}
    rng = np.random.default_rng(0)
    out = []
    for qid in data.query_ids:
        pos = [col[d] for d in data.qrels[qid]]
        neg = [j for j in rng.permutation(len(data.doc_ids))[:negatives + len(pos)] if j not in pos]
        out.append(pos + neg[:negatives])
    return out


def _rank_scores(tm: TaskModel, data: RetrievalData, batch_size: int, negatives: int
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """(Q, D) scores, and the (query, corpus) vectors of a bi-encoder (None for a cross-encoder)."""
    if not tm.cross_encoder:
        q = encode(tm, list(data.queries), batch_size)  # (Q, d)
        d = encode(tm, list(data.corpus), batch_size)  # (D, d)
        return (q @ d.T).numpy(), (q.numpy(), d.numpy())  # (Q, D)
    cands = _candidates(data, negatives)
    pairs = [(data.queries[i], data.corpus[j]) for i, c in enumerate(cands) for j in c]
    flat = encode(tm, pairs, batch_size)[:, 0].numpy()  # (sum of candidates,)
    scores = np.full((len(data.queries), len(data.doc_ids)), -np.inf)
    k = 0
    for i, c in enumerate(cands):
        scores[i, c] = flat[k:k + len(c)]
        k += len(c)
    return scores, None


def _retrieval_metrics(scores: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    out = {}
    for k in _RANK_KS:
        out[f"ndcg@{k}"] = M.ndcg_at_k(scores, rel, k)
        out[f"mrr@{k}"] = M.mrr_at_k(scores, rel, k)
    out["recall@100"] = M.recall_at_k(scores, rel, 100)
    return out


def _class_metrics(logits: np.ndarray, labels: np.ndarray,
                   names: Sequence[str] = ()) -> dict[str, float]:
    """accuracy, macro_f1, and `precision:<class>` / `recall:<class>` for every class name."""
    out = {"accuracy": M.accuracy(logits, labels),
           "macro_f1": M.macro_f1(logits, labels, classes=list(range(len(names))) or None)}
    for i, name in enumerate(names):
        out[f"precision:{name}"] = M.precision(logits, labels, i)
        out[f"recall:{name}"] = M.recall(logits, labels, i)
    return out


def _by_slice(fn, slices: Sequence[str] | None, *arrays: np.ndarray) -> dict[str, dict[str, float]]:
    if not slices:
        return {}
    keys = np.asarray(slices)
    return {str(s): fn(*(a[keys == s] for a in arrays)) for s in np.unique(keys)}


def _similarity(tm: TaskModel, data: SimilarityData, batch_size: int) -> Evaluation:
    a = encode(tm, list(data.texts), batch_size)  # (N, d), unit norm
    b = encode(tm, list(data.pairs), batch_size)  # (N, d)
    cos = (a * b).sum(-1).numpy()  # (N,)
    scores = np.asarray(data.scores)

    def metrics(c: np.ndarray, s: np.ndarray) -> dict[str, float]:
        return {"spearman": M.spearman(c, s)}
    return Evaluation(metrics(cos, scores), _by_slice(metrics, data.slices, cos, scores),
                      cos[:, None], data.slices, kind="similarity", vectors=(a.numpy(), b.numpy()))


def evaluate(tm: TaskModel, data: RetrievalData | ClassificationData | SimilarityData, *,
             batch_size: int = 64, negatives: int = 19) -> Evaluation:
    """Task metrics of `tm` on `data`, overall and per slice."""
    from .lm import LMData, evaluate_lm

    if isinstance(data, LMData):  # decoder LMs: perplexity, generation task (lm.py)
        return Evaluation(*evaluate_lm(tm, data), kind="lm")
    if isinstance(data, SimilarityData):
        return _similarity(tm, data, batch_size)
    if isinstance(data, RetrievalData):
        scores, vectors = _rank_scores(tm, data, batch_size, negatives)
        rel = data.relevance_matrix()
        return Evaluation(_retrieval_metrics(scores, rel),
                          _by_slice(_retrieval_metrics, data.query_slices, scores, rel),
                          scores, data.query_slices, vectors=vectors,
                          relevance=rel if vectors is not None else None)
    logits = encode(tm, list(data.texts), batch_size).numpy()  # (N, C)
    labels = np.asarray(data.labels)

    def metrics(lo: np.ndarray, la: np.ndarray) -> dict[str, float]:
        return _class_metrics(lo, la, data.label_names)
    return Evaluation(metrics(logits, labels), _by_slice(metrics, data.slices, logits, labels),
                      logits, data.slices, kind="class")


def agreement(pruned: Evaluation, full: Evaluation) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Label-free agreement of pruned with full: top-1 agreement, and for rankings the NDCG@10 of
    the pruned ranking against the full one; for similarity pairs, the Spearman of the pruned
    cosines against the full ones. Overall and per slice."""
    def fn(p: np.ndarray, f: np.ndarray) -> dict[str, float]:
        if full.kind == "lm":  # top-1 next-token ids per text position
            from .lm import token_agreement

            return token_agreement(p, f)
        if full.kind == "similarity":
            return {"agreement": M.spearman(p[:, 0], f[:, 0])}
        out = {"agreement": M.top1_agreement(p, f)}
        if p.shape[1] > 1 and np.isfinite(f).sum(1).min() > 2 and p.shape[1] >= 10:
            out["agreement_ndcg@10"] = M.ranking_agreement_ndcg(p, f, 10)
        return out
    p, f = pruned.outputs, full.outputs
    return fn(p, f), _by_slice(fn, full.slice_of_row, p, f)


@dataclass(frozen=True)
class Signals:
    """Quality signals comparing the two models' vector spaces, shaped like the metrics they
    join: pruned/full {metric: value} overall and {slice: {metric: value}}. Empty for
    non-embedding runs."""

    pruned: dict[str, float] = field(default_factory=dict)
    full: dict[str, float] = field(default_factory=dict)
    pruned_slices: dict[str, dict[str, float]] = field(default_factory=dict)
    full_slices: dict[str, dict[str, float]] = field(default_factory=dict)


def _prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {CROSS_TIER + k: v for k, v in metrics.items()}


def quality_signals(pruned: Evaluation, full: Evaluation) -> Signals:
    """`embedding_cosine` and the `cross_tier_*` retrieval metrics of pruned against full (see the
    module doc). The full model's side: cosine 1.0, cross-tier = its own retrieval metrics."""
    if pruned.vectors is None or full.vectors is None:
        return Signals()
    (pa, pb), (fa, fb) = pruned.vectors, full.vectors
    cosine = M.mean_cosine(np.concatenate([pa, pb]), np.concatenate([fa, fb]))
    out_p, out_f = {EMBEDDING_COSINE: cosine}, {EMBEDDING_COSINE: 1.0}
    if full.relevance is None:  # similarity pairs: no index to search
        return Signals(out_p, out_f)
    cross = pa @ fb.T  # (Q, D): pruned queries on the full model's index
    rel = full.relevance
    slices_p = {s: _prefixed(m) for s, m in
                _by_slice(_retrieval_metrics, full.slice_of_row, cross, rel).items()}
    slices_f = {s: _prefixed(m) for s, m in full.slices.items()}
    return Signals({**out_p, **_prefixed(_retrieval_metrics(cross, rel))},
                   {**out_f, **_prefixed(full.metrics)}, slices_p, slices_f)


def quality_kept(pruned: dict[str, float], full: dict[str, float],
                 own: Iterable[str]) -> dict[str, float | None]:
    """pruned / full for the task's own metrics (`own`) and the cross-tier ones (kept against
    full's own retrieval metric); not for agreement or cosine, which already compare the two."""
    keys = set(own)
    return {k: (v / full[k] if full.get(k) else None) for k, v in pruned.items()
            if k in keys or k.startswith(CROSS_TIER)}
