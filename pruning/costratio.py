"""The pruned/full cost ratio, measured so that it cannot leave the physical range.

One timing of each model is noise on a shared machine (a 50%-FLOPs model once measured 0.25 of
full, below what removing half the FLOPs can give). Here:

- `interleaved_ratio(run_full, run_pruned, rounds)`: the two models run alternately on the same
  batch (full-pruned, then pruned-full, ...), so load drifts hit both alike; each round gives one
  ratio; the estimate is the geometric mean, with a Student-t confidence interval on the log ratios.
- `physical_range(flops_ratio, quantized)`: the ratio cannot be below the FLOPs ideal (pruned
  FLOPs / full FLOPs; INT8 kernels are credited at most 4x fp32 throughput) and a smaller model
  should not cost more than the full one (upper end 1.0).
- `clamp_ratio(estimate, lo, hi)`: the ratio in use; outside the range it is clamped and a warning
  says so (`source` tells which: measured, or clamped to the ideal / to 1.0).

`CostRatio.to_dict()` is the report's `calibration.cost_ratio` block; the router prices with
`ratio` and exports where it came from.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["INT8_SPEEDUP_MAX", "CostRatio", "clamp_ratio", "interleaved_ratio", "physical_range"]

INT8_SPEEDUP_MAX = 4.0  # int8 vs fp32 multiply-add throughput, at best
_T975 = {1: 12.71, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t975(df: int) -> float:
    """Two-sided 95% Student-t quantile (table; conservative between entries)."""
    if df <= 0:
        return math.inf
    keys = [k for k in sorted(_T975) if k <= df]
    return _T975[keys[-1]] if df < 30 else 1.96 + (_T975[30] - 1.96) * 30 / df


@dataclass(frozen=True)
class CostRatio:
    ratio: float  # in use: pruned cost / full cost for the same work
    source: str  # "measured" | "clamped_to_ideal" | "clamped_to_full" | "flops_ideal" | "assumed"
    measured: float | None = None  # geometric mean of the interleaved rounds
    ci: tuple[float, float] | None = None  # 95% interval of the measured ratio
    ideal: float | None = None  # lower end of the physical range (FLOPs ideal, INT8 credited)
    rounds: int = 0
    warning: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci else None
        return d


def physical_range(flops_ratio: float | None, quantized: bool = False) -> tuple[float, float]:
    """(lowest, highest) plausible pruned/full cost ratio."""
    lo = flops_ratio if flops_ratio else 0.0
    if quantized:
        lo /= INT8_SPEEDUP_MAX
    return max(lo, 1e-3), 1.0


def clamp_ratio(measured: float | None, ci: tuple[float, float] | None, lo: float, hi: float,
                rounds: int = 0) -> CostRatio:
    """The ratio to price with: the measurement inside [lo, hi], else the nearest end + warning."""
    if measured is None or not math.isfinite(measured):
        return CostRatio(lo if lo > 1e-3 else 1.0, "flops_ideal" if lo > 1e-3 else "assumed",
                         None, None, lo, rounds, "no measurement: priced at the FLOPs ideal")
    if measured < lo:
        return CostRatio(lo, "clamped_to_ideal", measured, ci, lo, rounds,
                         f"measured ratio {measured:.3f} is below the physical limit {lo:.3f} "
                         f"(FLOPs ideal): implausible, a noisy measurement; using {lo:.3f}")
    if measured > hi:
        return CostRatio(hi, "clamped_to_full", measured, ci, lo, rounds,
                         f"measured ratio {measured:.3f} is above {hi:.3f}: the pruned tier "
                         f"measured dearer than full; using {hi:.3f}")
    return CostRatio(measured, "measured", measured, ci, lo, rounds)


def interleaved_ratio(run_full: Callable[[], object], run_pruned: Callable[[], object],
                      rounds: int = 7, lo: float = 1e-3, hi: float = 1.0,
                      clock: Callable[[], float] = time.perf_counter) -> CostRatio:
    """Time both models alternately `rounds` times (after one warm-up each); clamp the result."""
    run_full(), run_pruned()  # warm-up: allocator, kernels, caches
    logs = []
    for r in range(rounds):
        times = {}
        for name, fn in (("f", run_full), ("p", run_pruned))[:: 1 if r % 2 == 0 else -1]:
            t0 = clock()
            fn()
            times[name] = clock() - t0
        if times["f"] > 0 and times["p"] > 0:
            logs.append(math.log(times["p"] / times["f"]))
    if not logs:
        return clamp_ratio(None, None, lo, hi, rounds)
    mean = statistics.fmean(logs)
    half = _t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 \
        else math.inf
    ci = (math.exp(mean - half), math.exp(mean + half)) if math.isfinite(half) else None
    return clamp_ratio(math.exp(mean), ci, lo, hi, len(logs))
