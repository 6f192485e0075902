"""Distillation data: label-free texts from the calibration split (+ an optional raw-text file),
tokenised once, with the teacher's targets computed ONCE and cached.

Texts by task: retrieval: queries and corpus; similarity pairs: both texts; classification: the
texts (or images); decoder LMs: the texts plus each prompt followed by the teacher's own greedy
continuation. `spec.data.distillation` adds raw texts (JSONL/Parquet, a `text` field), e.g.
sampled production requests.

Retrieval adds group batches: each training query with its rerank candidates (its judged
documents, then its nearest by word overlap: `calibration.rerank_candidates`, the request shape
the router serves), as many whole groups per batch as fit. The embedding objective's relational
term then matches the teacher's query-candidate similarities, the ones a ranking is decided by;
the plain batches keep covering every text.

Training batches are length-bucketed by default (`train_order`): texts of similar token length
share a batch, so a batch of short queries does not pad to the longest document (~2.8x fewer
padded tokens per step on the Debian calibration texts), and the batch order is shuffled (seeded).

A deterministic slice (every `VAL_EVERY`-th text of each kind, at most `VAL_MAX`) is held back
for the validation agreement that early stopping and the best checkpoint use. It comes from the
calibration texts only: the evaluation split the gates judge is never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tierserve.pruning.tasks import TaskModel

from .objectives import Objective, TeacherOut, teacher_forward

__all__ = ["VAL_EVERY", "VAL_MAX", "DistillData", "DistillTexts", "build_data", "distill_texts",
           "greedy_continuations", "group_batches", "read_texts", "train_order"]

VAL_EVERY = 10  # every 10th text of each kind is held back for validation
VAL_MAX = 256  # at most this many validation texts of each kind
GEN_TOKENS = 32  # decoders: greedy continuation length per prompt


@dataclass(frozen=True)
class DistillTexts:
    """Training examples and the held-back validation slice. For retrieval, validation agreement
    is query -> document top-1 (`val_queries` first, then documents); otherwise nearest neighbour
    (embeddings) or argmax (logits, tokens) over `val_docs`."""

    train: tuple
    val_queries: tuple
    val_docs: tuple
    groups: tuple[tuple[int, ...], ...] = ()  # retrieval: `train` indices, a query + candidates


@dataclass(frozen=True)
class DistillData:
    """Tokenised batches and the teacher's cached targets, ready for the loop (picklable)."""

    objective: Objective
    train: tuple[dict, ...]
    teacher: tuple[TeacherOut, ...]
    val_queries: tuple[dict, ...]
    val_docs: tuple[dict, ...]
    teacher_val_queries: tuple[TeacherOut, ...]
    teacher_val_docs: tuple[TeacherOut, ...]
    texts: int  # training examples
    val_texts: int


def read_texts(path, text_field: str = "text") -> list[str]:
    """Raw texts from a JSONL/Parquet file's `text_field` (non-empty strings only)."""
    from tierserve.pruning.data import DataError, read_records

    texts = [r[text_field] for r in read_records(path)
             if isinstance(r.get(text_field), str) and r[text_field].strip()]
    if not texts:
        raise DataError(f"spec.data.distillation: {path} has no non-empty `{text_field}` texts")
    return texts


def _split(items: Sequence) -> tuple[list, list]:
    held = set(range(VAL_EVERY - 1, len(items), VAL_EVERY)[:VAL_MAX])
    return ([x for i, x in enumerate(items) if i not in held],
            [x for i, x in enumerate(items) if i in held])


def distill_texts(calibration, extra: Sequence[str] = (),
                  continuations: Callable[[list[str]], list[str]] | None = None) -> DistillTexts:
    """The calibration dataset's texts by task (module doc), plus `extra` raw texts."""
    from tierserve.pruning.data import RetrievalData
    from tierserve.pruning.lm import LMData
    from tierserve.pruning.pairs import SimilarityData

    if isinstance(calibration, RetrievalData):
        q_train, q_val = _split(calibration.queries)
        d_train, d_val = _split(list(calibration.corpus) + list(extra))
        return DistillTexts(tuple(q_train + d_train), tuple(q_val), tuple(d_val),
                            _rerank_groups(calibration, len(extra)))
    if isinstance(calibration, SimilarityData):
        texts = list(calibration.texts) + list(calibration.pairs)
    elif isinstance(calibration, LMData):
        prompts = list(calibration.prompts)
        texts = list(calibration.texts) + (continuations(prompts) if continuations and prompts
                                           else prompts)
    else:
        texts = list(calibration.texts)
    train, val = _split(texts + list(extra))
    return DistillTexts(tuple(train), (), tuple(val))


def _rerank_groups(data, n_extra: int) -> tuple[tuple[int, ...], ...]:
    """Each training query with its rerank candidates among the training documents, as indices
    into `DistillTexts.train` (queries first, then documents: `distill_texts`' layout). Held-back
    validation texts never join a group."""
    from tierserve.pruning.calibration import rerank_candidates

    qi, _ = _split(list(range(len(data.queries))))
    slots, _ = _split(list(range(len(data.corpus) + n_extra)))  # the training documents, in order
    at = {j: len(qi) + n for n, j in enumerate(slots)}  # corpus index -> index in `train`
    di = [j for j in slots if j < len(data.corpus)]  # extra raw texts have no judgements
    if not qi or not di:
        return ()
    col = {data.doc_ids[j]: c for c, j in enumerate(di)}
    judged = [[col[d] for d in data.qrels.get(data.query_ids[i], {}) if d in col] for i in qi]
    cands = rerank_candidates([data.queries[i] for i in qi], [data.corpus[j] for j in di], judged)
    return tuple((q, *(at[di[c]] for c in cs)) for q, cs in enumerate(cands))


def group_batches(groups: Sequence[Sequence[int]], batch_size: int, seed: int = 0) -> list[list[int]]:
    """Whole groups per batch, as many as fit in `batch_size` (at least one), in seeded order;
    a text in two groups of one batch appears once."""
    per = max(1, batch_size // max(len(g) for g in groups))
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return [list(dict.fromkeys(i for g in order[j:j + per] for i in groups[g]))
            for j in range(0, len(order), per)]


@torch.no_grad()
def greedy_continuations(teacher: TaskModel, prompts: list[str], tokens: int = GEN_TOKENS,
                         batch_size: int = 8) -> list[str]:
    """Each prompt followed by the teacher's own greedy continuation (decoders)."""
    tok, out = teacher.processor, []
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the last real token
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True,
                      max_length=teacher.max_length)
            dev = next(teacher.model.parameters()).device
            gen = teacher.model.generate(**{k: v.to(dev) for k, v in enc.items()},
                                         max_new_tokens=tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
            new = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [p + n for p, n in zip(chunk, new, strict=True)]
    finally:
        tok.padding_side = side
    return out


def _batches(tm: TaskModel, items: Sequence, size: int) -> tuple[dict, ...]:
    return tuple(tm.batch(list(items[i:i + size])) for i in range(0, len(items), size))


def _lengths(tm: TaskModel, items: Sequence) -> list[int]:
    """Token count of each text (a pair: both texts); other inputs (images) count as equal."""
    if not items or not isinstance(items[0], str | tuple):
        return [0] * len(items)
    pairs = [x if isinstance(x, tuple) else (x,) for x in items]
    enc = tm.processor(*map(list, zip(*pairs, strict=True)), truncation=True,
                       max_length=tm.max_length)
    return [len(ids) for ids in enc["input_ids"]]


def train_order(tm: TaskModel, items: Sequence, batch_size: int, *, seed: int = 0,
                bucket: bool = True) -> list[list[int]]:
    """Seeded training batches (index lists). `bucket`: after the seeded shuffle, texts of
    similar token length share a batch (stable sort, so ties keep the shuffled order) and the
    batches are shuffled again: each batch pads to its own longest text, not the corpus's."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=gen).tolist()
    if bucket:
        n = _lengths(tm, items)
        order = sorted(order, key=lambda i: n[i])
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]
    return chunks


def build_data(teacher: TaskModel, texts: DistillTexts, objective: Objective, batch_size: int,
               *, seed: int = 0, layers: tuple[int, ...] | None = None,
               bucket: bool = True) -> DistillData:
    """Batch the training texts (seeded; see `train_order`), tokenise, and cache the teacher's
    targets once."""
    chunks = train_order(teacher, texts.train, batch_size, seed=seed, bucket=bucket)
    if texts.groups:  # retrieval: group batches among the plain ones (module doc)
        chunks += group_batches(texts.groups, batch_size, seed)
        gen = torch.Generator().manual_seed(seed + 2)
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]
    train = tuple(teacher.batch([texts.train[i] for i in c]) for c in chunks)
    vq, vd = _batches(teacher, texts.val_queries, 64), _batches(teacher, texts.val_docs, 64)

    def run(bs: tuple[dict, ...], hidden: bool) -> tuple[TeacherOut, ...]:
        return tuple(teacher_forward(teacher, b, objective, layers if hidden else None)
                     for b in bs)
    return DistillData(objective, train, run(train, True), vq, vd, run(vq, False),
                       run(vd, False), len(texts.train),
                       len(texts.val_queries) + len(texts.val_docs))
