"""The quality signals of embedding runs: `embedding_cosine` (full vs pruned vectors of the same
texts) and `cross_tier_*` (pruned queries searched against the FULL model's index), on the real
all-MiniLM-L6-v2 and the real Debian test split, judged by real gates."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tierserve.pruning import metrics as M
from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.data import RetrievalData
from tierserve.pruning.evaluate import Evaluation, evaluate, quality_kept, quality_signals
from tierserve.pruning.gates import Measured, check_gates
from tierserve.pruning.quality import judge
from tierserve.pruning.spec import Gate, GatesSpec, SpecError, parse_spec
from tierserve.pruning.structure import LayerStructure, Structure
from tierserve.pruning.surgery import apply_structure

SIGNALS = ("embedding_cosine", "cross_tier_ndcg@10", "cross_tier_mrr@10", "cross_tier_recall@100")


def _subset(data: RetrievalData, n_queries: int, n_docs: int) -> RetrievalData:
    """The first queries, their judged documents and the first other documents (a small index)."""
    qids = data.query_ids[:n_queries]
    judged = {d for q in qids for d in data.qrels[q]}
    keep = [j for j, d in enumerate(data.doc_ids) if d in judged or j < n_docs]
    return RetrievalData(qids, data.queries[:n_queries], tuple(data.doc_ids[j] for j in keep),
                         tuple(data.corpus[j] for j in keep), {q: data.qrels[q] for q in qids},
                         data.query_slices[:n_queries] if data.query_slices else None)


@pytest.fixture(scope="module")
def evals(minilm, debian_retrieval):
    """Full and a half-width MiniLM (first 6 heads, first 768 neurons per layer, by surgery)."""
    data = _subset(debian_retrieval["test"], 64, 160)
    pruned = copy.deepcopy(minilm)
    layer = LayerStructure(heads=tuple(range(6)), neurons=tuple(range(768)))
    apply_structure(adapter_for(pruned.model), Structure((layer,) * 6))
    pruned.model.eval()
    return data, minilm, pruned, evaluate(minilm, data), evaluate(pruned, data)


def test_full_against_itself_is_cosine_one_and_its_own_metrics(evals):
    _, _, _, full_eval, _ = evals
    sig = quality_signals(full_eval, full_eval)
    assert sig.pruned["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    for k in ("ndcg@10", "mrr@10", "recall@100"):
        assert sig.pruned[f"cross_tier_{k}"] == pytest.approx(full_eval.metrics[k], abs=1e-9)
        assert sig.full[f"cross_tier_{k}"] == full_eval.metrics[k]
    assert sig.full["embedding_cosine"] == 1.0


def test_pruned_queries_on_the_full_index(evals):
    data, _, _, full_eval, pruned_eval = evals
    sig = quality_signals(pruned_eval, full_eval)
    (pq, pd), (fq, fd) = pruned_eval.vectors, full_eval.vectors
    rel = data.relevance_matrix()
    # independent recomputation: pruned query vectors x full corpus vectors
    assert sig.pruned["cross_tier_ndcg@10"] == pytest.approx(M.ndcg_at_k(pq @ fd.T, rel, 10))
    assert sig.pruned["cross_tier_recall@100"] == pytest.approx(M.recall_at_k(pq @ fd.T, rel, 100))
    cos = M.mean_cosine(np.concatenate([pq, pd]), np.concatenate([fq, fd]))
    assert sig.pruned["embedding_cosine"] == pytest.approx(cos)
    # half the width moves the vectors: a real, not a trivial, signal
    assert 0.2 < sig.pruned["embedding_cosine"] < 0.99
    mixed = sig.pruned["cross_tier_ndcg@10"]
    assert 0.0 < mixed < full_eval.metrics["ndcg@10"]
    assert mixed != pytest.approx(pruned_eval.metrics["ndcg@10"])  # not pruned-on-pruned
    # per slice, where the data has slices
    if data.query_slices:
        assert set(sig.pruned_slices) == set(pruned_eval.slices)
        assert all("cross_tier_ndcg@10" in m for m in sig.pruned_slices.values())


def test_judge_reports_and_gates_both_signals(evals):
    data, full, pruned, full_eval, _ = evals
    spec = parse_spec({
        "model": {"uri": "unused", "task": "embedding"},
        "data": {"calibration": {"uri": "unused"}, "evaluation": {"uri": "unused"}},
        "gates": {"quality": [
            {"metric": "embedding_cosine", "min": 0.2},  # passes
            {"metric": "cross_tier_ndcg@10", "relative": 0.999},  # a half-width model fails it
            {"metric": "cross_tier_mrr@5", "min": 0.1},  # k not evaluated: fails, not measured
        ]}})
    j = judge(spec, full, pruned, data, full_eval=full_eval, with_latency=False)
    for k in SIGNALS:
        assert k in j.measured.pruned and k in j.measured.full
    cos, cross, missing, *_ = j.gates  # then latency (not measured here) and size
    assert cos.passed and cos.value == j.measured.pruned["embedding_cosine"]
    assert not cross.passed
    assert cross.threshold == pytest.approx(0.999 * full_eval.metrics["ndcg@10"])
    assert missing.value is None and not missing.passed and "retrieval" in missing.detail
    kept = quality_kept(j.measured.pruned, j.measured.full, full_eval.metrics)
    assert kept["cross_tier_ndcg@10"] == pytest.approx(
        j.measured.pruned["cross_tier_ndcg@10"] / full_eval.metrics["ndcg@10"])
    assert "embedding_cosine" not in kept and "agreement" not in kept and "ndcg@10" in kept


def test_non_embedding_outputs_have_no_signals_and_gates_say_why():
    logits = np.eye(3)[[0, 1, 2, 1]]  # (N, C) classifier outputs: no vectors kept
    ev = Evaluation({"accuracy": 1.0}, {}, logits, kind="class")
    sig = quality_signals(ev, ev)
    assert sig.pruned == {} and sig.full == {}
    m = Measured({"accuracy": 1.0}, {"accuracy": 0.9}, {}, {})
    res, *_ = check_gates(GatesSpec(quality=[Gate(metric="embedding_cosine", min=0.9)]), m)
    assert not res.passed and res.value is None and "embedding models only" in res.detail


def test_similarity_pairs_get_cosine_but_no_cross_tier():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    full = Evaluation({"spearman": 0.5}, {}, np.zeros((5, 1)), kind="similarity", vectors=(a, b))
    pruned = Evaluation({"spearman": 0.4}, {}, np.zeros((5, 1)), kind="similarity",
                        vectors=(a + 0.1, b))
    sig = quality_signals(pruned, full)
    assert set(sig.pruned) == {"embedding_cosine"} and 0.9 < sig.pruned["embedding_cosine"] < 1.0


@pytest.mark.parametrize("metric", ["embedding_cosine", "cross_tier_ndcg@10", "cross_tier_mrr@10",
                                    "cross_tier_recall@100"])
def test_spec_accepts_the_signal_gates(metric):
    assert Gate(metric=metric, min=0.5).metric == metric


@pytest.mark.parametrize("metric", ["cross_tier_accuracy", "embeddingCosine", "cross_tier_ndcg"])
def test_spec_refuses_other_names(metric):
    with pytest.raises(SpecError, match="metric"):
        parse_spec({"model": {"uri": "x", "task": "embedding"},
                    "data": {"calibration": {"uri": "x"}, "evaluation": {"uri": "x"}},
                    "gates": {"quality": [{"metric": metric, "min": 0.5}]}})
