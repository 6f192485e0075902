"""Distillation objectives, data split and checkpoints: pure unit tests (no model download, fast)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tierserve.pruning.data import RetrievalData
from tierserve.pruning.recovery.distillation import CheckpointStore, distill_texts
from tierserve.pruning.recovery.distillation.data import VAL_EVERY, group_batches
from tierserve.pruning.recovery.distillation.objectives import (
    HiddenMaps,
    Objective,
    choose_objective,
    embedding_loss,
    hidden_loss,
    logits_loss,
    token_loss,
)
from tierserve.pruning.tasks import Task, TaskModel


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_embedding_loss_is_zero_at_the_teacher_and_sees_relations():
    g = torch.Generator().manual_seed(0)
    t = _unit(torch.randn(8, 16, generator=g))
    assert float(embedding_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    # a student that is a rotation of the teacher has cosine < 1 but the same similarity matrix
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    rotated = t @ q
    full = embedding_loss(rotated, t, relational=1.0)
    pointwise = embedding_loss(rotated, t, relational=0.0)
    assert float(full) == pytest.approx(float(pointwise), abs=1e-5)  # relation already kept
    shuffled = _unit(torch.randn(8, 16, generator=g))
    assert float(embedding_loss(shuffled, t, relational=1.0)) > float(
        embedding_loss(shuffled, t, relational=0.0))


def test_logits_loss_is_temperature_scaled_kl():
    s, t = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    T = 2.0
    p_t, log_p_s = F.softmax(t / T, -1), F.log_softmax(s / T, -1)
    manual = float((p_t * (p_t.log() - log_p_s)).sum()) * T * T
    assert float(logits_loss(s, t, T)) == pytest.approx(manual, rel=1e-5)
    assert float(logits_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)
    one = torch.tensor([[0.5], [1.5]])
    assert float(logits_loss(one, one + 1)) == pytest.approx(1.0)  # one logit: MSE


def test_token_loss_with_the_whole_vocabulary_is_the_full_kl():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    top = F.log_softmax(t, -1).topk(7, dim=-1)
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                  reduction="batchmean")
    assert float(token_loss(s, top.values, top.indices, 1.0)) == pytest.approx(float(kl), rel=1e-5)
    # truncated to the top-2 tokens: the student matching the teacher there has ~0 loss
    top2 = F.log_softmax(t, -1).topk(2, dim=-1)
    assert float(token_loss(t, top2.values, top2.indices, 1.0)) < 0.7


def test_hidden_maps_identity_when_widths_match_and_learned_when_not():
    h_s, h_t = (torch.randn(4, 6),), (torch.randn(4, 6),)
    same = HiddenMaps(6, 6, 1)
    assert not list(same.parameters())
    assert float(hidden_loss(h_s, h_t, same)) == pytest.approx(float(F.mse_loss(h_s[0], h_t[0])))
    wide = HiddenMaps(6, 10, 1)
    loss = hidden_loss(h_s, (torch.randn(4, 10),), wide)
    loss.backward()
    assert wide.maps[0].weight.grad is not None and wide.maps[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("task", "cross", "want"), [
    (Task.embedding, False, Objective.embedding), (Task.rerank, False, Objective.embedding),
    (Task.rerank, True, Objective.logits), (Task.sequence_classification, False, Objective.logits),
    (Task.text_generation, False, Objective.tokens)])
def test_objective_follows_the_task_and_can_be_overridden(task, cross, want):
    tm = TaskModel(task=task, model=nn.Identity(), processor=None, cross_encoder=cross)
    assert choose_objective(tm) is want
    assert choose_objective(tm, "logits") is Objective.logits


def test_validation_slice_comes_from_calibration_texts_only(debian_retrieval):
    cal: RetrievalData = debian_retrieval["calibration"]
    texts = distill_texts(cal, extra=["an extra production request"])
    n_q = len(cal.queries)
    assert len(texts.val_queries) == n_q // VAL_EVERY
    assert set(texts.val_queries) <= set(cal.queries)
    assert not set(texts.val_queries) & set(texts.train)  # held back, not trained on
    assert "an extra production request" in texts.train + texts.val_docs
    test = set(debian_retrieval["test"].queries) | set(debian_retrieval["test"].corpus)
    assert not test & set(texts.train + texts.val_queries + texts.val_docs)


def test_retrieval_groups_hold_a_query_and_its_rerank_candidates(debian_retrieval):
    cal: RetrievalData = debian_retrieval["calibration"]
    texts = distill_texts(cal, extra=["an extra production request"])
    n_q = len(cal.queries) - len(texts.val_queries)  # training queries come first in `train`
    assert len(texts.groups) == n_q
    by_text = {t: i for i, t in enumerate(cal.queries)}
    doc_at = {t: cal.doc_ids[j] for j, t in enumerate(cal.corpus)}
    judged_seen = 0
    for g in texts.groups:
        query, docs = texts.train[g[0]], [texts.train[i] for i in g[1:]]
        assert g[0] < n_q and all(i >= n_q for i in g[1:]) and len(docs) == 10
        assert not set(docs) & set(texts.val_docs)  # held-back documents never join a group
        assert "an extra production request" not in docs  # unjudged raw texts: plain batches only
        judged = set(cal.qrels[cal.query_ids[by_text[query]]])
        judged_seen += bool(judged & {doc_at[d] for d in docs})
    assert judged_seen > 0.8 * n_q  # a query's judged documents lead its candidates
    batches = group_batches(texts.groups, 32, seed=0)
    assert max(len(b) for b in batches) <= 32
    assert sorted(i for b in batches for i in b if i < n_q) == list(range(n_q))  # each query once
    assert group_batches(texts.groups, 32, seed=0) == batches  # seeded


def test_checkpoint_roundtrip_and_foreign_checkpoints_are_ignored(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", "run-a")
    assert store.latest() is None
    store.save({"step": 7, "model": {"w": torch.ones(2)}, "curve": [{"loss": math.nan}]})
    snap = store.latest()
    assert snap["step"] == 7 and torch.equal(snap["model"]["w"], torch.ones(2))
    assert CheckpointStore(tmp_path / "ckpt", "run-b").latest() is None
    assert not list((tmp_path / "ckpt").glob("*.tmp*"))  # written atomically
