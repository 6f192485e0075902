"""Gate-driven search: the CHEAPEST tier that still passes every gate.

Importance is scored once on the full model and reused for every budget tried (plan, surgery and
rescale are cheap next to scoring). Bisection over the budget finds the sparsest passing one; then
the candidate tiers are compared by their measured cost per request (the judged latency ratio,
pruned p50 / full p50 on the job's hardware), not by sparsity alone:
- every passing budget, fp32;
- pruning + INT8 as ONE candidate tier (when `spec.quantization.mode` is `none`, i.e. the spec
  did not already fix it): the INT8 twin of the passing budgets, sparsest first, judged by the same
  gates until one passes (a less sparse INT8 twin only costs more).
The cheapest passing candidate is returned; an INT8 choice is recorded in the result's
`report["serve_quantization"]` so the job quantizes, judges and serves it.
Bisection runs on the validation set; the chosen model is then judged on the held-out evaluation
set by the caller, so the search never tunes on the rows the gates judge.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from .engine import PruneConfig, PruneResult, prune_with_scores
from .evaluate import evaluate
from .inputs import Dataset
from .plan import PlanError
from .quality import judge
from .spec import PrunedModelSpec
from .structure import Scores
from .tasks import TaskModel

__all__ = ["INT8", "cheapest", "search_max_sparsity"]

INT8 = "int8-dynamic"


def search_max_sparsity(spec: PrunedModelSpec, full: TaskModel, scores: Scores, batches: list,
                        config: PruneConfig, data: Dataset, progress=None
                        ) -> tuple[PruneResult | None, list[dict]]:
    """Bisection over budget.target in [search.low, search.high], then the cheapest passing
    candidate tier (see the module doc). Returns (best, trace)."""
    s = spec.pruning.search
    full_eval = evaluate(full, data)
    trace: list[dict] = []
    cache: dict[float, PruneResult | None] = {}
    cost: dict[float, float | None] = {}

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
        cache[target], cost[target] = (res if j.passed else None), j.latency.get("ratio")
        if progress:
            progress(f"search target {target:.3f}: {'pass' if j.passed else 'fail'}",
                     len(trace) / (s.steps + 2))
        return j.passed

    lo, hi = s.low, s.high
    if not attempt(lo):
        return None, trace
    if not attempt(hi):
        for _ in range(s.steps):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if attempt(mid) else (lo, mid)
    passing = {t: r for t, r in cache.items() if r is not None}
    twin = None
    if spec.quantization.mode == "none":
        twin = _int8_twin(spec, full, passing, data, full_eval, trace, progress)
    return cheapest(passing, cost, twin), trace


def _int8_twin(spec, full, passing: dict[float, PruneResult], data, full_eval, trace,
               progress) -> tuple[float, PruneResult, float | None] | None:
    """(target, result, latency ratio) of the sparsest passing budget whose INT8 twin passes too."""
    from .quantize import quantize

    for target in sorted(passing, reverse=True):
        res = passing[target]
        q = replace(res.model, model=quantize(copy.deepcopy(res.model.model), INT8))
        j = judge(spec, full, q, data, full_eval=full_eval)
        trace.append({"target": target, "quantization": INT8, "passed": j.passed,
                      "failed_gates": [g.name for g in j.gates if not g.passed],
                      "metrics": j.measured.pruned, "latency_ratio": j.latency.get("ratio")})
        if progress:
            progress(f"search target {target:.3f} + INT8: {'pass' if j.passed else 'fail'}", 1.0)
        if j.passed:
            return target, res, j.latency.get("ratio")
    return None


def cheapest(passing: dict[float, PruneResult], cost: dict[float, float | None],
             twin: tuple[float, PruneResult, float | None] | None) -> PruneResult | None:
    """The passing candidate with the lowest measured cost (latency ratio; unmeasured costs rank
    by sparsity behind measured ones). An INT8 choice is marked `serve_quantization`."""
    cands = [(_rank(cost.get(t), t), t, r, None) for t, r in passing.items()]
    if twin is not None:
        cands.append((_rank(twin[2], twin[0]), twin[0], twin[1], INT8))
    if not cands:
        return None
    _, target, res, quant = min(cands, key=lambda c: (c[0], -c[1], c[3] is None))
    report = {**res.report, "serve_quantization": quant,
              "search_choice": {"target": target, "quantization": quant,
                                "latency_ratio": cost.get(target) if quant is None else twin[2],
                                "candidates": len(cands)}}
    return replace(res, report=report)


def _rank(ratio: float | None, target: float) -> float:
    return ratio if ratio is not None else 10.0 - target
