"""Cascade calibration: how confident must the pruned tier be to answer without the full one,
and (rerank) how many of pruned's best candidates must full re-score when it is not?

The pure pieces (confidence functions, empirical and Learn-then-Test thresholds, partial
escalation of a ranking) live in `cascade.py`, re-exported here; the router imports the same code.

`calibration_report(spec, full, pruned, inputs)` runs both models on the validation set (or the
calibration set when the spec has none, and says so) and returns the report's `calibration` block:
- classify: per-item escalation, one threshold on the margin of each text;
- rerank: the threshold and `escalate_top_m` chosen TOGETHER (`calibrate_rerank`): for each m in a
  small grid, the cheapest threshold whose agreement meets the target; the pair with the lowest
  expected cost (priced with the measured cost ratio) wins. With `spec.serving.calibrationDelta`
  (0.05 by default; `guarantee_delta` says when it does not apply) the thresholds are
  Learn-then-Test ones (Bonferroni over the m grid), the report states the
  bound and the validation size it needs, and a too-small validation set is refused;
- the pruned/full cost ratio, measured in interleaved rounds and clamped to the physical range
  (`costratio.py`), which the router prices with.
Rerank requests are built by `rerank_candidates`: the query's judged documents plus its nearest
documents by word overlap (a cheap first stage), so the same request shape is calibrated and served.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .cascade import (
    CONFIDENCES,
    Calibration,
    CalibrationTooSmall,
    calibrate,
    cascade_outcome,
    choose_threshold,
    confidence,
    default_confidence,
    entropy_confidence,
    margin,
    partial_agree,
    top1_agree,
    topk_gap,
)

__all__ = [
    "CONFIDENCES", "Calibration", "CalibrationTooSmall", "RerankChoice", "calibrate",
    "calibrate_rerank", "calibration_report", "cascade_outcome", "confidence",
    "default_confidence", "entropy_confidence", "escalate_grid", "flops_ratio", "guarantee_delta",
    "margin", "rerank_candidates", "rerank_scores", "topk_gap",
]

RERANK_CANDIDATES = 10  # documents per rerank request (judged ones + nearest by word overlap)


# -- rerank requests ----------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def rerank_candidates(queries: Sequence[str], corpus: Sequence[str], judged: Sequence[Sequence[int]],
                      k: int = RERANK_CANDIDATES) -> list[list[int]]:
    """For each query, k document indices: its judged documents, then the nearest others by
    word-overlap (Jaccard), ties by index. Deterministic; no model involved."""
    doc_words = [_words(d) for d in corpus]
    out = []
    for q, pos in zip(queries, judged, strict=True):
        qw = _words(q)
        sims = np.array([len(qw & dw) / (len(qw | dw) or 1) for dw in doc_words])
        pos = list(pos)[:k]
        others = [int(j) for j in np.argsort(-sims, kind="stable") if j not in pos]
        out.append(pos + others[:k - len(pos)])
    return out


def rerank_scores(query_emb, doc_emb) -> np.ndarray:
    """(d,), (D, d) unit embeddings -> (D,) cosine scores (the bi-encoder rerank score)."""
    return np.asarray(doc_emb, dtype=np.float64) @ np.asarray(query_emb, dtype=np.float64)



# -- joint (escalate_top_m, threshold) for rerank -----------------------------------------------
def escalate_grid(k: int) -> tuple[int, ...]:
    """The m values tried for a k-candidate rerank: a few small ones, and k (full re-scores all)."""
    return tuple(sorted({m for m in (2, 3, 5) if m < k} | {k}))


@dataclass(frozen=True)
class RerankChoice:
    m: int  # full re-scores pruned's best m candidates on escalation
    calibration: Calibration
    cost: float  # expected cost per request relative to full alone (1.0 = all-full)
    feasible: bool  # its agreement meets the target (LTT: guaranteed)

    def to_dict(self) -> dict:
        return {"escalate_top_m": self.m, "threshold": self.calibration.threshold,
                "agreement": self.calibration.agreement,
                "pruned_share": self.calibration.pruned_share, "cost": self.cost,
                "savings": 1.0 - self.cost, "feasible": self.feasible,
                "risk_upper": self.calibration.risk_upper}


def expected_cost(cost_ratio: float, escalated_share: float, k: int, m: int, base: int) -> float:
    """Per request, relative to full alone: pruned scores base + k items, full base + m of them
    for an escalated share (base = 1 query text for a bi-encoder, 0 for a cross-encoder)."""
    return (cost_ratio * (base + k) + escalated_share * (base + m)) / (base + k)


def calibrate_rerank(pruned, full, target: float, delta: float | None, cost_ratio: float,
                     base: int = 1, grid: Sequence[int] | None = None,
                     field: str = "spec.data.validation") -> tuple[RerankChoice, list[RerankChoice]]:
    """(Q, k) pruned and full candidate scores -> the cheapest feasible (m, threshold), and every
    m tried. With `delta`, each m is tested at delta / len(grid) (Bonferroni), so the chosen pair
    keeps the guarantee although several were looked at."""
    p, f = np.asarray(pruned, dtype=np.float64), np.asarray(full, dtype=np.float64)
    k = p.shape[1]
    grid = tuple(grid or escalate_grid(k))
    conf, agree = topk_gap(p), top1_agree(p, f)
    level = None if delta is None else delta / len(grid)
    tried = []
    for m in grid:
        cal = choose_threshold(conf, agree, target, level, partial_agree(p, f, m), field)
        ok = cal.guaranteed if level is not None else cal.agreement >= target
        tried.append(RerankChoice(m, cal, expected_cost(cost_ratio, 1.0 - cal.pruned_share, k, m,
                                                        base), bool(ok)))
    feasible = [c for c in tried if c.feasible] or [tried[-1]]  # m = k always meets it
    return min(feasible, key=lambda c: (c.cost, -c.m)), tried


# -- the job's calibration block ----------------------------------------------------------------
def _rerank_rows(full, pruned, queries, corpus, judged, known=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) full and pruned scores of each query's rerank candidates. `known`: each tier's
    vectors of texts it already encoded (`evaluate.known_vectors`), reused here."""
    from .evaluate import encode_reusing

    cands = rerank_candidates(queries, corpus, judged)
    used = sorted({j for c in cands for j in c})
    texts = list(queries) + [corpus[j] for j in used]
    where = {j: len(queries) + i for i, j in enumerate(used)}
    outs = []
    for tier, tm in (("full", full), ("pruned", pruned)):
        e = encode_reusing(tm, texts, (known or {}).get(tier))  # (Q + D_used, d)
        outs.append(np.stack([rerank_scores(e[i], e[[where[j] for j in c]])
                              for i, c in enumerate(cands)]))  # (Q, k)
    return outs[0], outs[1]


def _texts(data) -> list[str]:
    return list(getattr(data, "queries", None) or getattr(data, "texts", None) or [])


def _outputs(full, pruned, data, known=None) -> tuple[np.ndarray, np.ndarray]:
    """Both models' outputs on the requests the router will see: rerank candidate scores for
    retrieval data (and for similarity pairs: each first text against the second texts), else
    classifier logits."""
    from .data import RetrievalData
    from .evaluate import encode

    if isinstance(data, RetrievalData):
        col = {d: j for j, d in enumerate(data.doc_ids)}
        judged = [[col[d] for d in data.qrels[q]] for q in data.query_ids]
        return _rerank_rows(full, pruned, data.queries, data.corpus, judged, known)
    if hasattr(data, "pairs"):  # embedding similarity pairs
        return _rerank_rows(full, pruned, data.texts, data.pairs,
                            [[i] for i in range(len(data.texts))])
    return encode(full, list(data.texts)).numpy(), encode(pruned, list(data.texts)).numpy()


def measured_cost_ratio(full, pruned, texts: Sequence[str], rounds: int = 5, batch: int = 16):
    """Interleaved timing of both models on the same batch of validation texts, clamped to the
    physical range against the FLOPs ideal (`costratio.py`)."""
    import torch

    from .costratio import clamp_ratio, interleaved_ratio, physical_range

    sample = list(texts[:batch]) or ["a short text"]
    lo, hi = physical_range(flops_ratio(full, pruned), _quantized(pruned))

    def run(tm):
        @torch.inference_mode()
        def forward():
            return tm.outputs(tm.batch(sample))
        return forward
    try:
        return interleaved_ratio(run(full), run(pruned), rounds, lo, hi)
    except Exception as err:  # noqa: BLE001 - e.g. inputs this task cannot batch: the ideal then
        return replace(clamp_ratio(None, None, lo, hi),
                       warning=f"not measured ({type(err).__name__}: {err}); priced at the ideal")


def _quantized(tm) -> bool:
    from .quantize import is_quantized

    return bool(getattr(tm, "quantized", False) or is_quantized(tm.model))


def flops_ratio(full, pruned) -> float | None:
    """Pruned/full whole-model FLOPs at 128 tokens; None when the shapes cannot be read."""
    from .adapters import adapter_for
    from .cost import ModelShape, whole_flops

    try:
        f, p = (whole_flops(ModelShape.from_adapter(adapter_for(tm.model))) for tm in (full, pruned))
    except Exception:  # noqa: BLE001 - e.g. a quantized model's packed linears: no ideal then
        return None
    return p / f if f else None


NO_VALIDATION_NOTE = ("no spec.data.validation: calibrated on the calibration rows, which also "
                      "fitted the pruning, so no guarantee; add a validation split for one")


def guarantee_delta(spec, has_validation: bool) -> tuple[float | None, str | None]:
    """The Learn-then-Test delta the job calibrates with, and why there is none: the spec's
    `calibrationDelta` (0.05 by default) on a held-out validation split; the empirical cut when
    the spec sets it to null, routes by another policy, or gives no validation split (those
    rows are not held out)."""
    delta = spec.serving.calibration_delta
    if delta is None:
        return None, "spec.serving.calibrationDelta is null: the empirical cut, no guarantee"
    if spec.serving.policy != "cascade":
        return None, f"policy {spec.serving.policy}: no cascade threshold to guarantee"
    if not has_validation:
        return None, NO_VALIDATION_NOTE
    return delta, None


def _with_delta(spec, delta: float | None):
    """`spec` with serving.calibrationDelta replaced (what the calibration really uses)."""
    return spec.model_copy(update={"serving": spec.serving.model_copy(
        update={"calibration_delta": delta})})


def calibration_report(spec, full, pruned, inputs, known=None) -> dict:
    """The report's `calibration` block, computed on `inputs.validation` (else calibration data).
    `known`: {"full"|"pruned": {text: vector}} the evaluation already computed with these very
    models (`evaluate.known_vectors`): the shared corpus is not encoded twice."""
    delta, note = guarantee_delta(spec, inputs.validation is not None)
    spec = _with_delta(spec, delta)
    if spec.model.task.value == "text-generation":  # decoder LMs: answer log-probability (lm.py)
        from .lm import calibration_lm

        out = calibration_lm(spec, full, pruned, inputs)
        out.setdefault("guarantee", {})["note"] = note
        return out
    data, source, field = inputs.validation, "validation", "spec.data.validation"
    if data is None:
        data, source = inputs.calibration, "calibration (no spec.data.validation given)"
        field = "spec.data.calibration"
    s = spec.serving
    name = default_confidence(spec.model.task.value)
    f, p = _outputs(full, pruned, data, known)
    ratio = measured_cost_ratio(full, pruned, _texts(data))
    agree = top1_agree(p, f)
    out = {"policy": "cascade", "confidence": name, "target_agreement": s.target_agreement,
           "source": source, "cost_ratio": ratio.to_dict()}
    if name == "topk_gap":
        base = 0 if getattr(pruned, "cross_encoder", False) else 1
        choice, tried = calibrate_rerank(p, f, s.target_agreement, s.calibration_delta,
                                         ratio.ratio, base, field=field)
        cal, m = choice.calibration, choice.m
        out.update(request="rerank", candidates=p.shape[1], escalate_top_m=m,
                   escalation="top_m", frontier=[c.to_dict() for c in tried],
                   expected_savings=1.0 - choice.cost)
    else:
        cal = choose_threshold(margin(p) if name == "margin" else confidence(name, p), agree,
                               s.target_agreement, s.calibration_delta, field=field)
        out.update(request="classify", candidates=None, escalate_top_m=None,
                   escalation="per_item",
                   expected_savings=1.0 - (ratio.ratio + 1.0 - cal.pruned_share))
    out["threshold"] = cal.threshold
    out["guarantee"] = {"method": "ltt" if s.calibration_delta is not None else "empirical",
                        "delta": s.calibration_delta, "per_test_delta": cal.delta,
                        "risk_upper": cal.risk_upper,
                        "agreement_lower": cal.agreement_lower, "n_needed": cal.n_needed,
                        "n": cal.n, "note": note}
    out["validation"] = {"agreement": cal.agreement, "pruned_share": cal.pruned_share,
                         "n": cal.n, "pruned_agreement": float(np.mean(agree))}
    return out
