"""`encode` batches by length and restores the order; `encode_reusing` runs only new texts."""

import numpy as np
import torch

from tierserve.pruning.evaluate import Evaluation, encode, encode_reusing, known_vectors


def test_length_batching_gives_each_text_its_own_vector_in_the_given_order(minilm, lee_corpus):
    texts = [t[: 20 + 37 * (i % 9)] for i, t in enumerate(lee_corpus[:40])]  # mixed lengths
    batched = encode(minilm, texts, batch_size=8)
    alone = torch.cat([encode(minilm, [t]) for t in texts])
    assert batched.shape == (40, 384)
    assert torch.allclose(batched, alone, atol=1e-5)  # padding changes nothing, order kept
    pairs = [(texts[i], texts[-1 - i]) for i in range(6)]  # (query, document) pairs sort too
    assert encode(minilm, pairs, batch_size=4).shape == (6, 384)


def test_vectors_the_evaluation_computed_are_reused_not_recomputed(minilm, lee_corpus):
    texts = lee_corpus[:12]
    sentinel = {t: np.full(384, float(i)) for i, t in enumerate(texts[:5])}
    got = encode_reusing(minilm, texts, sentinel)
    assert got.shape == (12, 384)
    for i in range(5):  # known texts: taken as given (the model never saw them here)
        assert (got[i] == float(i)).all()
    fresh = encode(minilm, texts[5:]).numpy()
    assert np.allclose(got[5:], fresh, atol=1e-5)
    assert np.allclose(encode_reusing(minilm, texts, None), encode(minilm, texts), atol=1e-5)


def test_known_vectors_maps_an_evaluations_texts_and_nothing_else():
    class Data:
        queries, corpus = ("q1", "q2"), ("d1", "d2", "d3")

    q, d = np.eye(2, 3), np.eye(3)
    ev = Evaluation({}, {}, np.zeros((2, 3)), vectors=(q, d))
    known = known_vectors(ev, Data())
    assert set(known) == {"q1", "q2", "d1", "d2", "d3"} and (known["d3"] == d[2]).all()
    assert known_vectors(Evaluation({}, {}, np.zeros((2, 3))), Data()) == {}  # a cross-encoder
    assert known_vectors(Evaluation({}, {}, np.zeros(2), kind="class", vectors=(q, d)),
                         Data()) == {}
