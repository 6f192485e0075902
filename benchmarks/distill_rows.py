"""Distillation rows of the pruning benchmark (`python benchmarks/pruning.py --distill`).

For each FLOPs level: prune all-MiniLM-L6-v2 (activation criterion + LS rescale, scored on the
benchmark's calibration texts), evaluate the undistilled twin, then distil a copy from the full
model on the calibration split only (queries + corpus; every 10th text held back for validation
agreement) within a wall-time budget, and evaluate it on the same test queries. Each row has
exactly `DISTILL_KEYS`, and `baseline` holds the same fields for the undistilled twin.

cross_tier_kept = NDCG@10 of the model's query vectors searched in a FULL-model index / the full
model's own NDCG@10; embedding_cosine = mean cosine of full vs pruned vectors of the same test
texts (queries and documents), the definitions of the job's `embedding_cosine` and
`cross_tier_ndcg@10`, computed here from one encoding of the test texts per model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch

from tierserve.pruning import importance
from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape
from tierserve.pruning.data import RetrievalData
from tierserve.pruning.engine import PruneConfig, prune_with_scores
from tierserve.pruning.evaluate import encode
from tierserve.pruning.latency import model_device
from tierserve.pruning.metrics import ndcg_at_k, top1_agreement
from tierserve.pruning.recovery import DistillConfig, distill_stage, distill_texts
from tierserve.pruning.structure import Budget
from tierserve.pruning.tasks import TaskModel

__all__ = ["DISTILL_KEYS", "DistillSettings", "run_distill"]

DISTILL_KEYS = ("model", "criterion", "flops_removed", "distill_steps", "distill_seconds",
                "device", "quality_kept", "top1_agreement", "cross_tier_kept",
                "embedding_cosine")


@dataclass(frozen=True)
class DistillSettings:
    levels: tuple[float, ...] = (0.5, 0.7)
    criterion: str = "activation"
    # the budget is <= 10 min of distillation on 2 cores: 540 s of loop leaves room for
    # the teacher's cached targets (~40-60 s), so `distill_seconds` (the whole stage) stays <= 600
    max_seconds: float = 540.0
    steps: int = 5000  # a cap; the time budget ends the run first on 2 cores
    # the recipe (peak lr with warm-up + cosine decay over the budget, length-bucketed batches,
    # batch size) is DistillConfig's defaults: the job and the benchmark distil the same way
    recipe: DistillConfig = DistillConfig()


@dataclass
class _Signals:
    ndcg: float
    top1: float
    cross_tier: float
    cosine: float


def _signals(tm: TaskModel, data: RetrievalData, ref_scores, full_vecs) -> _Signals:
    """One encoding of the test queries and documents gives all four numbers."""
    q, d = encode(tm, list(data.queries)), encode(tm, list(data.corpus))  # (Q, d), (D, d)
    fq, fd = full_vecs
    rel = data.relevance_matrix()
    scores = (q @ d.T).numpy()  # (Q, D)
    cos = float(torch.cat([(q * fq).sum(-1), (d * fd).sum(-1)]).mean())
    return _Signals(ndcg_at_k(scores, rel, 10), top1_agreement(scores, ref_scores),
                    ndcg_at_k((q @ fd.T).numpy(), rel, 10), cos)


def _row(level_removed: float, s: _Signals, full_ndcg: float, steps: int, seconds: float,
         device: str, criterion: str) -> dict:
    row = dict(model="all-MiniLM-L6-v2", criterion=criterion, flops_removed=level_removed,
               distill_steps=steps, distill_seconds=seconds, device=device,
               quality_kept=s.ndcg / full_ndcg, top1_agreement=s.top1,
               cross_tier_kept=s.cross_tier / full_ndcg, embedding_cosine=s.cosine)
    assert tuple(row) == DISTILL_KEYS
    return row


def run_distill(full: TaskModel, test: RetrievalData, calib_batches: list,
                calibration: RetrievalData, ds: DistillSettings, log) -> list[dict]:
    """One distilled row (with its undistilled `baseline`) per level."""
    full_vecs = (encode(full, list(test.queries)), encode(full, list(test.corpus)))
    ref = (full_vecs[0] @ full_vecs[1].T).numpy()  # (Q, D)
    full_ndcg = ndcg_at_k(ref, test.relevance_matrix(), 10)
    shape = ModelShape.from_adapter(adapter_for(full.model))
    torch.manual_seed(0)
    scores = importance.score(ds.criterion, full, adapter_for(full.model), calib_batches,
                              target="self", seed=0)
    texts = distill_texts(calibration)
    rows = []
    for level in ds.levels:
        cfg = PruneConfig(criterion=ds.criterion, budget=Budget(kind="flops", target=level))
        res = prune_with_scores(full, scores, calib_batches, cfg, shape)
        removed = res.report["plan"]["encoder"]["flops_removed_fraction"]
        base = _signals(res.model, test, ref, full_vecs)
        student = replace(res.model, model=copy.deepcopy(res.model.model))
        dc = replace(ds.recipe, steps=ds.steps, max_seconds=ds.max_seconds)
        t0 = time.perf_counter()
        sec, details = distill_stage(student, full, texts, dc,
                                     kept_layers=res.structure.kept_layers)
        wall = time.perf_counter() - t0  # teacher cache + loop
        dist = _signals(student, test, ref, full_vecs)
        device = model_device(student)
        row = _row(removed, dist, full_ndcg, sec["steps"], wall, device, ds.criterion)
        row["baseline"] = _row(removed, base, full_ndcg, 0, 0.0, device, ds.criterion)
        row["distill"] = {"best_step": sec["best_step"], "loop_seconds": sec["seconds"],
                          "curve": sec["curve"], **{k: details[k] for k in (
                              "objective", "texts", "val_texts", "stopped",
                              "best_val_agreement", "lr", "schedule", "warmup", "bucket",
                              "batch_size", "max_seconds")}}
        rows.append(row)
        log(f"distill {level:.0%}: kept {row['baseline']['quality_kept']:.4f} -> "
            f"{row['quality_kept']:.4f}, top-1 {base.top1:.3f} -> {dist.top1:.3f}, cross-tier "
            f"{row['baseline']['cross_tier_kept']:.4f} -> {row['cross_tier_kept']:.4f}, cosine "
            f"{base.cosine:.4f} -> {dist.cosine:.4f} ({sec['steps']} steps, {wall:.0f} s)")
    return rows
