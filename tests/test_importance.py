"""Importance criteria on the real all-MiniLM-L6-v2 with real text (Lee news, Pang & Lee snippets)."""

from __future__ import annotations

import pytest
import torch

from tierserve.pruning import importance
from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.importance import CRITERIA, Targets, layer_scores
from tierserve.pruning.masks import unit_masks
from tierserve.pruning.structure import Scores
from tierserve.pruning.tasks import TaskModel, load_task_model

L, H, FF = 6, 12, 1536
GRADIENT = ("fisher", "taylor")


@pytest.fixture(scope="module")
def emb(minilm_path) -> TaskModel:
    return load_task_model(minilm_path, "embedding", max_length=64)


@pytest.fixture(scope="module")
def clf(minilm_path, polarity) -> TaskModel:
    """MiniLM with a 2-way head fitted (encoder frozen) on 140 snippets not used for scoring."""
    torch.manual_seed(0)
    tm = load_task_model(minilm_path, "sequence-classification", max_length=64)
    train = polarity[20:90] + polarity[120:190]  # scoring uses snippets 0-7 and 100-107
    batch = tm.batch([t for t, _ in train])
    with torch.no_grad():
        pooled = tm.model.bert(**batch).pooler_output  # (N, d)
    y = torch.tensor([label for _, label in train])
    head = tm.model.classifier
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(head(pooled), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.zero_grad(set_to_none=True)
    return tm


@pytest.fixture(scope="module")
def calib(emb, lee_corpus) -> list[dict]:
    return emb.batches(lee_corpus[:16], 8)


@pytest.fixture(scope="module")
def snippets(polarity) -> tuple[list[str], list[int]]:
    """8 negative and 8 positive snippets, interleaved so every batch holds both labels."""
    neg = [t for t, y in polarity if y == 0][:8]
    pos = [t for t, y in polarity if y == 1][:8]
    texts = [t for pair in zip(neg, pos, strict=True) for t in pair]
    return texts, [0, 1] * 8


@pytest.fixture(scope="module")
def self_scores(emb, calib) -> dict[str, Scores]:
    """Every criterion, label-free, on the embedding model (computed once)."""
    ad = adapter_for(emb.model)
    return {name: importance.score(name, emb, ad, calib) for name in CRITERIA}


def _check_scores(s: Scores, name: str) -> None:
    assert s.criterion == name
    assert s.heads.shape == (L, H) and s.neurons.shape == (L, FF)
    for t in (s.heads, s.neurons):
        assert torch.isfinite(t).all() and (t >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_label_free_scores_are_well_formed(self_scores, name):
    s = self_scores[name]
    _check_scores(s, name)
    assert (s.heads > 0).all() and (s.neurons > 0).float().mean() > 0.99
    if name == "magnitude":
        assert s.layers is None
    else:  # Block Influence from the same forwards: identical for every data criterion
        assert s.layers.shape == (L,) and torch.equal(s.layers, self_scores["fisher"].layers)


@pytest.mark.slow
def test_model_state_is_left_alone(emb, calib, self_scores):
    """Taylor enabled grads on some params only inside the call; nothing leaks into the model."""
    flags = {n: p.requires_grad for n, p in emb.model.named_parameters()}
    importance.score("taylor", emb, adapter_for(emb.model), calib[:1])
    assert {n: p.requires_grad for n, p in emb.model.named_parameters()} == flags
    assert all(p.grad is None for p in emb.model.parameters())
    assert not emb.model.training
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in emb.model.modules()) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", GRADIENT)
def test_classifier_with_labels_and_label_free(clf, snippets, name):
    texts, labels = snippets
    ad, batches = adapter_for(clf.model), clf.batches(texts, 8)
    with_labels = importance.score(name, clf, ad, batches, target="labels", labels=labels)
    sampled = importance.score(name, clf, ad, batches, target="self")
    argmax = importance.score(name, clf, ad, batches, target="self", pseudo="argmax")
    for s in (with_labels, sampled, argmax):
        _check_scores(s, name)
        assert (s.heads > 0).all()  # label-free too: the zero-gradient trap is avoided
    assert not torch.allclose(with_labels.heads, sampled.heads, rtol=0.05, atol=0)
    again = importance.score(name, clf, ad, batches, target="self")  # seeded sampling
    assert torch.equal(again.heads, sampled.heads) and torch.equal(again.neurons, sampled.neurons)


@pytest.mark.slow
def test_embedding_with_group_labels(emb, snippets, self_scores):
    """Labels on an embedding model are group ids: same-label snippets count as positives."""
    texts, labels = snippets
    ad, batches = adapter_for(emb.model), emb.batches(texts, 8)
    grouped = importance.score("fisher", emb, ad, batches, target="labels", labels=labels)
    plain = importance.score("fisher", emb, ad, batches, target="self")
    _check_scores(grouped, "fisher")
    assert (grouped.heads > 0).all()
    assert not torch.allclose(grouped.heads, plain.heads, rtol=0.05, atol=0)


@pytest.mark.slow
def test_deterministic_for_fixed_input(emb, calib, self_scores):
    ad = adapter_for(emb.model)
    for name in ("fisher", "activation"):
        again = importance.score(name, emb, ad, calib)
        assert torch.equal(again.heads, self_scores[name].heads)
        assert torch.equal(again.neurons, self_scores[name].neurons)


def _agreement(tm: TaskModel, batches, ref, **masks) -> float:
    """Mean cosine between masked and full embeddings (both unit norm)."""
    with torch.no_grad(), unit_masks(adapter_for(tm.model), **masks):
        cos = [(tm.outputs(b) * r).sum(-1) for b, r in zip(batches, ref, strict=True)]  # (B,)
    return float(torch.cat(cos).mean())


def _drop(scores: torch.Tensor, frac: float, lowest: bool) -> torch.Tensor:
    """0/1 mask removing the `frac` lowest (or highest) scored units, ranked globally."""
    flat = scores.flatten()
    order = flat.argsort(descending=not lowest)[:int(frac * flat.numel())]
    mask = torch.ones_like(flat)
    mask[order] = 0
    return mask.view_as(scores)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fisher", "activation", "taylor"])
def test_low_scores_matter_less_than_high_scores(emb, lee_corpus, self_scores, name):
    held = emb.batches(lee_corpus[25:41], 8)  # held out: scores came from documents 0-15
    with torch.no_grad():
        ref = [emb.outputs(b) for b in held]
    s = self_scores[name]
    for kind, units in (("head_mask", s.heads), ("neuron_mask", s.neurons)):
        low = _agreement(emb, held, ref, **{kind: _drop(units, 0.25, lowest=True)})
        high = _agreement(emb, held, ref, **{kind: _drop(units, 0.25, lowest=False)})
        assert low > high + 0.05, (kind, low, high)


@pytest.mark.slow
def test_block_influence_ranks_layers(emb, calib, lee_corpus, self_scores):
    bi = layer_scores(emb, adapter_for(emb.model), calib)
    assert torch.allclose(bi, self_scores["activation"].layers)
    assert ((bi > 0) & (bi < 2)).all()
    held = emb.batches(lee_corpus[25:41], 8)
    with torch.no_grad():
        ref = [emb.outputs(b) for b in held]

    def skip(i: int) -> float:
        mask = torch.ones(L)
        mask[i] = 0
        return _agreement(emb, held, ref, layer_mask=mask)

    assert skip(int(bi.argmin())) > skip(int(bi.argmax())) + 0.1


def test_bad_arguments_are_clear_errors(emb, calib):
    ad = adapter_for(emb.model)
    with pytest.raises(ValueError, match="unknown 'snip'"):
        importance.score("snip", emb, ad, calib)
    with pytest.raises(ValueError, match="needs `labels`"):
        importance.score("fisher", emb, ad, calib, target="labels")
    with pytest.raises(ValueError, match="batches hold 16 examples"):
        importance.score("fisher", emb, ad, calib, target="labels", labels=[0, 1, 2])
    with pytest.raises(ValueError, match="target: expected"):
        importance.score("fisher", emb, ad, calib, target="gold")
    with pytest.raises(ValueError, match="at least one calibration batch"):
        importance.score("activation", emb, ad, [])
    with pytest.raises(ValueError, match="at least 2 examples"):
        CRITERIA["fisher"](emb, ad, emb.batches(["one lonely sentence"], 1), targets=Targets())
