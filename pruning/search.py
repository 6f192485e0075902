"""Gate-driven search: the most aggressive budget that still passes every gate.

Importance is scored once on the full model and reused for every budget tried (plan, surgery and
rescale are cheap next to scoring). Bisection runs on the validation set; the chosen model is then
judged on the held-out evaluation set by the caller, so the search never tunes on the rows the
gates judge.
"""

from __future__ import annotations

from dataclasses import replace

from .engine import PruneConfig, PruneResult, prune_with_scores
from .evaluate import evaluate
from .inputs import Dataset
from .plan import PlanError
from .quality import judge
from .spec import PrunedModelSpec
from .structure import Scores
from .tasks import TaskModel

__all__ = ["search_max_sparsity"]


def search_max_sparsity(spec: PrunedModelSpec, full: TaskModel, scores: Scores, batches: list,
                        config: PruneConfig, data: Dataset, progress=None
                        ) -> tuple[PruneResult | None, list[dict]]:
    """Bisection over budget.target in [search.low, search.high]. Returns (best, trace)."""
    s = spec.pruning.search
    full_eval = evaluate(full, data)
    trace: list[dict] = []
    cache: dict[float, PruneResult | None] = {}

    def attempt(target: float) -> bool:
        target = round(target, 4)
        cfg = replace(config, budget=replace(config.budget, target=target))
        try:
            res = prune_with_scores(full, scores, batches, cfg)
        except PlanError as err:
            trace.append({"target": target, "passed": False, "error": str(err)})
            cache[target] = None
            return False
        j = judge(spec, full, res.model, data, full_eval=full_eval)
        failed = [g.name for g in j.gates if not g.passed]
        trace.append({"target": target, "passed": j.passed, "failed_gates": failed,
                      "achieved": res.report["plan"]["encoder"]["flops_removed_fraction"],
                      "metrics": j.measured.pruned, "latency_ratio": j.latency.get("ratio")})
        cache[target] = res if j.passed else None
        if progress:
            progress(f"search target {target:.3f}: {'pass' if j.passed else 'fail'}",
                     len(trace) / (s.steps + 2))
        return j.passed

    lo, hi = s.low, s.high
    if not attempt(lo):
        return None, trace
    if attempt(hi):
        return cache[round(hi, 4)], trace
    for _ in range(s.steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if attempt(mid) else (lo, mid)
    return cache[round(lo, 4)], trace
