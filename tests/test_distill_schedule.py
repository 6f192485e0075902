"""The distillation recipe's cheap parts: the learning-rate schedule over the budget used, and
length-bucketed batches (each pads to its own longest text), on the real MiniLM tokenizer and
the real Debian calibration texts."""

from __future__ import annotations

import math

from tierserve.pruning.recovery.distillation import DistillConfig, distill_texts
from tierserve.pruning.recovery.distillation.data import train_order
from tierserve.pruning.recovery.distillation.loop import lr_factor


def test_lr_warms_up_then_decays_over_the_budget():
    cfg = DistillConfig(steps=100, warmup=0.1)
    assert lr_factor(cfg, 0.0) == 0.0 and math.isclose(lr_factor(cfg, 0.05), 0.5)
    assert math.isclose(lr_factor(cfg, 0.1), 1.0)
    assert math.isclose(lr_factor(cfg, 0.55), 0.5, abs_tol=1e-9)  # cosine half-way
    assert lr_factor(cfg, 1.0) < 1e-9 and lr_factor(cfg, 2.0) < 1e-9
    flat = DistillConfig(schedule="constant", warmup=0.0)
    assert lr_factor(flat, 0.0) == lr_factor(flat, 0.99) == 1.0


def _padded(tm, texts, chunks) -> int:
    ids = tm.processor(list(texts), truncation=True, max_length=tm.max_length)["input_ids"]
    return sum(len(c) * max(len(ids[i]) for i in c) for c in chunks)


def test_bucketed_batches_cover_every_text_once_and_pad_far_less(minilm, debian_retrieval):
    texts = distill_texts(debian_retrieval["calibration"]).train  # queries and descriptions
    mixed = train_order(minilm, texts, 32, seed=0, bucket=False)
    bucketed = train_order(minilm, texts, 32, seed=0, bucket=True)
    assert bucketed == train_order(minilm, texts, 32, seed=0, bucket=True)  # seeded
    assert sorted(i for c in bucketed for i in c) == list(range(len(texts)))
    assert [len(c) for c in sorted(bucketed, key=len)] == sorted(len(c) for c in mixed)
    ratio = _padded(minilm, texts, mixed) / _padded(minilm, texts, bucketed)
    print(f"padded tokens per epoch, mixed / bucketed: {ratio:.2f}")
    assert ratio > 2.0  # short queries no longer pad to the longest description
