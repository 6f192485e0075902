"""Turn an evaluation set into router traffic, and routed answers into a summary. Pure.

Retrieval data (embedding / rerank tasks) becomes `/v1/rerank` requests (similarity pairs too:
each first text against its own second text and the nearest others): each query with
`RERANK_CANDIDATES` documents (its judged ones plus the nearest by word overlap, the same shape
the job calibrated the cascade on), shuffled deterministically so the relevant one is not always
first. Classification data becomes one-text `/v1/classify` requests. Decoder-LM data (prompts with
answers) becomes `/v1/generate` requests; their answers are compared as normalised first lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tierserve.pruning.calibration import rerank_candidates
from tierserve.pruning.data import RetrievalData

__all__ = ["Outcome", "ReplayRequest", "replay_requests", "summarize"]

GENERATE_TOKENS = 16  # as the job's cascade calibration generates


@dataclass(frozen=True)
class ReplayRequest:
    endpoint: str  # "rerank" | "classify" | "generate"
    body: dict
    label: int | str  # index of the relevant document / the true class / the reference answer


@dataclass(frozen=True)
class Outcome:
    tier: str
    reason: str
    seconds: float  # client-side latency
    answer: int | str  # top-1 document index / predicted class / normalised answer
    reference: int | str  # what full alone answers


def replay_requests(data, n: int | None = None, seed: int = 0) -> list[ReplayRequest]:
    if isinstance(data, RetrievalData):
        return _rerank(data, n, seed)
    if hasattr(data, "pairs"):  # similarity pairs: each first text against the second texts
        return _pairs(data, n, seed)
    if hasattr(data, "prompts"):  # decoder LM: the prompted task
        return _generate(data, n)
    rows = range(len(data.texts) if n is None else min(n, len(data.texts)))
    return [ReplayRequest("classify", {"texts": [data.texts[i]]}, data.labels[i]) for i in rows]


def _rerank(data: RetrievalData, n: int | None, seed: int) -> list[ReplayRequest]:
    q = len(data.query_ids) if n is None else min(n, len(data.query_ids))
    col = {d: j for j, d in enumerate(data.doc_ids)}
    judged = [[col[d] for d in data.qrels[qid]] for qid in data.query_ids[:q]]
    cands = rerank_candidates(data.queries[:q], data.corpus, judged)
    rng = random.Random(seed)
    out = []
    for i, c in enumerate(cands):
        order = list(c)
        rng.shuffle(order)
        best = max(judged[i], key=lambda j: data.qrels[data.query_ids[i]][data.doc_ids[j]])
        out.append(ReplayRequest("rerank", {"query": data.queries[i],
                                            "documents": [data.corpus[j] for j in order]},
                                 order.index(best)))
    return out


def _generate(data, n: int | None) -> list[ReplayRequest]:
    from tierserve.pruning.lm import normalize_answer

    if not data.prompts:
        raise ValueError("the evaluation data has no prompt/answer rows to replay as /v1/generate")
    rows = range(len(data.prompts) if n is None else min(n, len(data.prompts)))
    return [ReplayRequest("generate", {"prompt": data.prompts[i], "max_new_tokens": GENERATE_TOKENS},
                          normalize_answer(data.answers[i])) for i in rows]


def _pairs(data, n: int | None, seed: int) -> list[ReplayRequest]:
    q = len(data.texts) if n is None else min(n, len(data.texts))
    cands = rerank_candidates(data.texts[:q], data.pairs, [[i] for i in range(q)])
    rng, out = random.Random(seed), []
    for i, c in enumerate(cands):
        order = list(c)
        rng.shuffle(order)
        out.append(ReplayRequest("rerank", {"query": data.texts[i],
                                            "documents": [data.pairs[j] for j in order]},
                                 order.index(i)))
    return out


def _pct(xs: list[float], p: float) -> float | None:
    return float(np.percentile(xs, p)) if xs else None


def _correct(labels: list) -> Callable[[object, object], bool]:
    """How an answer is judged against its label: equal index, or, for generated answers, the
    job's `accuracy` rule (names the reference and none of the task's other answers)."""
    if labels and isinstance(labels[0], str):
        from tierserve.pruning.lm import answer_correct

        choices = sorted(set(labels))
        return lambda answer, label: answer_correct(str(answer), label, choices)
    return lambda answer, label: answer == label


def summarize(outcomes: list[Outcome], labels: list[int | str]) -> dict:
    """Per tier: share and p50/p95 latency; overall: accuracy vs labels and agreement with full."""
    n = len(outcomes)
    tiers = {}
    for tier in ("pruned", "full"):
        secs = [o.seconds for o in outcomes if o.tier == tier]
        tiers[tier] = {"requests": len(secs), "share": len(secs) / n if n else 0.0,
                       "p50_s": _pct(secs, 50), "p95_s": _pct(secs, 95)}
    reasons: dict[str, int] = {}
    for o in outcomes:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    correct, agree = _correct(labels), _agree(labels)
    pairs = list(zip(outcomes, labels, strict=True))
    return {"requests": n, "tiers": tiers, "reasons": reasons,
            "p50_s": _pct([o.seconds for o in outcomes], 50),
            "p95_s": _pct([o.seconds for o in outcomes], 95),
            "accuracy": float(np.mean([correct(o.answer, y) for o, y in pairs])) if n else None,
            "full_accuracy": (float(np.mean([correct(o.reference, y) for o, y in pairs]))
                              if n else None),
            "agreement": float(np.mean([agree(o.answer, o.reference) for o in outcomes]))
                         if n else None}


def _agree(labels: list) -> Callable[[object, object], bool]:
    """Routed answer vs full's: equal, or for generated answers, `lm.answers_agree` (the router's
    shadow and the job's calibration compare the same way)."""
    if labels and isinstance(labels[0], str):
        from tierserve.pruning.lm import answers_agree, task_choices

        choices = task_choices(labels)
        return lambda a, b: answers_agree(str(a), str(b), choices)
    return lambda a, b: a == b
