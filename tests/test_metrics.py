"""Metrics: hand-computable cases, plus cross-checks against sklearn and scipy on random data."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, ndcg_score, precision_score, recall_score

from tierserve.pruning.metrics import (
    accuracy,
    macro_f1,
    mean_cosine,
    mrr_at_k,
    ndcg_at_k,
    per_slice,
    precision,
    ranking_agreement_ndcg,
    recall,
    recall_at_k,
    spearman,
    top1_agreement,
)

L3, L5 = 1 / np.log2(3), 1 / np.log2(5)  # discounts at ranks 2 and 4

PRED, TRUE = [1, 1, 1, 0], [1, 0, 0, 1]  # class 1: TP 1, FP 2, FN 1; class 0: TP 0, FP 1, FN 2

# one query, 4 documents ranked 0, 1, 2, 3 by score; documents 1 and 3 are relevant
SCORES = np.array([[0.9, 0.8, 0.7, 0.1]])
REL = np.array([[0, 1, 0, 1]])


def test_classification_by_hand():
    assert accuracy(PRED, TRUE) == 0.25
    assert precision(PRED, TRUE, positive=1) == pytest.approx(1 / 3)
    assert recall(PRED, TRUE, positive=1) == pytest.approx(1 / 2)
    assert precision(PRED, TRUE, positive=0) == 0.0
    assert macro_f1(PRED, TRUE) == pytest.approx((2 / 5 + 0.0) / 2)
    # a class listed but never seen counts as F1 0 and pulls the mean down
    assert macro_f1(PRED, TRUE, classes=[0, 1, 2]) == pytest.approx(0.4 / 3)


def test_logits_are_argmaxed_and_tensors_accepted():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]], requires_grad=True)  # 1, 0, 1
    assert accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)
    assert top1_agreement(logits, logits.detach() * 5) == 1.0
    assert top1_agreement([0, 1, 2, 2], [0, 1, 2, 1]) == 0.75


def test_classification_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[:120] = y[:120]  # some signal
    assert macro_f1(p, y) == pytest.approx(f1_score(y, p, average="macro"))
    for c in range(5):
        assert precision(p, y, c) == pytest.approx(precision_score(y, p, labels=[c], average="macro"))
        assert recall(p, y, c) == pytest.approx(recall_score(y, p, labels=[c], average="macro"))


def test_ranking_by_hand():
    assert ndcg_at_k(SCORES, REL, k=4) == pytest.approx((L3 + L5) / (1 + L3))
    assert ndcg_at_k(SCORES, REL, k=2) == pytest.approx(L3 / (1 + L3))
    assert ndcg_at_k(SCORES, REL, k=1) == 0.0
    assert mrr_at_k(SCORES, REL, k=10) == 0.5
    assert mrr_at_k(SCORES, REL, k=1) == 0.0
    assert recall_at_k(SCORES, REL, k=2) == 0.5
    assert recall_at_k(SCORES, REL, k=100) == 1.0  # k beyond D is clamped
    perfect = np.array([[0.1, 0.9, 0.2, 0.8]])
    assert ndcg_at_k(perfect, REL, k=10) == 1.0
    assert mrr_at_k(perfect, REL) == 1.0


def test_ranking_edge_cases():
    # a query with nothing relevant scores 0 and is averaged in
    two = np.vstack([SCORES, SCORES]), np.vstack([REL, np.zeros((1, 4))])
    assert ndcg_at_k(*two, k=2) == pytest.approx(L3 / (1 + L3) / 2)
    assert mrr_at_k(*two) == 0.25
    # ties are broken by document index: document 0 comes first
    tied = np.zeros((1, 4))
    assert mrr_at_k(tied, [[1, 0, 0, 0]]) == 1.0
    assert mrr_at_k(tied, [[0, 0, 0, 1]]) == 0.25
    with pytest.raises(ValueError, match="scores"):
        ndcg_at_k(SCORES, REL[:, :3])
    with pytest.raises(ValueError, match="k must be"):
        mrr_at_k(SCORES, REL, k=0)


def test_ndcg_matches_sklearn_on_graded_relevance():
    rng = np.random.default_rng(1)
    rel = rng.integers(0, 4, (30, 60)) * (rng.random((30, 60)) < 0.2)  # sparse grades 0..3
    rel[0] = 0  # a query with nothing relevant (sklearn also scores it 0)
    scores = rng.normal(size=(30, 60)) + 0.5 * rel
    for k in (1, 5, 10, 60):
        assert ndcg_at_k(scores, rel, k) == pytest.approx(ndcg_score(rel, scores, k=k))


def test_mrr_and_recall_match_a_direct_loop():
    rng = np.random.default_rng(2)
    rel = (rng.random((25, 40)) < 0.1).astype(int)
    scores = rng.normal(size=(25, 40))
    rr, rec = [], []
    for s, r in zip(scores, rel, strict=True):
        ranked = sorted(range(40), key=lambda j: -s[j])[:10]
        hits = [i for i, j in enumerate(ranked) if r[j]]
        rr.append(1 / (hits[0] + 1) if hits else 0.0)
        rec.append(len(hits) / r.sum() if r.sum() else 0.0)
    assert mrr_at_k(scores, rel, k=10) == pytest.approx(np.mean(rr))
    assert recall_at_k(scores, rel, k=10) == pytest.approx(np.mean(rec))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, 200)  # many ties
    y = x + rng.integers(0, 4, 200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_ranking_agreement_with_full_model():
    full = np.array([[0.9, 0.5, 0.1, 0.0]])  # full top-2: doc 0 (grade 2), doc 1 (grade 1)
    assert ranking_agreement_ndcg(full, full, k=2) == 1.0
    swapped = np.array([[0.5, 0.9, 0.1, 0.0]])  # pruned ranks doc 1 first
    assert ranking_agreement_ndcg(swapped, full, k=2) == pytest.approx((1 + 2 * L3) / (2 + L3))
    disjoint = np.array([[0.0, 0.1, 0.9, 0.5]])
    assert ranking_agreement_ndcg(disjoint, full, k=2) == 0.0
    rng = np.random.default_rng(4)
    a = rng.normal(size=(50, 100))
    near, far = a + 0.05 * rng.normal(size=a.shape), a + 2.0 * rng.normal(size=a.shape)
    assert ranking_agreement_ndcg(near, a) > ranking_agreement_ndcg(far, a)
    assert top1_agreement(near, a) > top1_agreement(far, a)


def test_mean_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert mean_cosine(a, 3 * a) == pytest.approx(1.0)
    assert mean_cosine(a, a[::-1]) == pytest.approx(0.0)
    assert mean_cosine(a, [[1.0, 1.0], [0.0, 1.0]]) == pytest.approx((1 / np.sqrt(2) + 1) / 2)


def test_per_slice_subsets_rows():
    slices = ["a", "b", "a", "b"]
    assert per_slice(accuracy, slices, [1, 0, 1, 1], [1, 0, 0, 0]) == {"a": 0.5, "b": 0.5}
    rng = np.random.default_rng(5)
    scores, rel = rng.normal(size=(40, 30)), np.eye(40, 30)
    qs = np.array(["x"] * 10 + ["y"] * 30)
    got = per_slice(ndcg_at_k, qs, scores, rel, k=5)
    assert got["x"] == pytest.approx(ndcg_at_k(scores[:10], rel[:10], k=5))
    # the query-weighted mean of the slices is the overall value
    assert (10 * got["x"] + 30 * got["y"]) / 40 == pytest.approx(ndcg_at_k(scores, rel, k=5))
    with pytest.raises(ValueError, match="rows"):
        per_slice(accuracy, slices, [1, 0], [1, 0])
