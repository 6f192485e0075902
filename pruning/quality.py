"""Measure a pruned model against the full one: task metrics, agreement, latency, size -> gates."""

from __future__ import annotations

from dataclasses import dataclass

from .evaluate import Evaluation, agreement, evaluate
from .gates import GateResult, Measured, check_gates
from .inputs import Dataset
from .latency import measure
from .quantize import state_size_bytes
from .spec import PrunedModelSpec
from .tasks import TaskModel

__all__ = ["Judgement", "judge", "latency_pair"]


@dataclass
class Judgement:
    measured: Measured
    gates: list[GateResult]
    full_eval: Evaluation
    pruned_eval: Evaluation
    latency: dict
    size: dict

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def latency_pair(full: TaskModel, pruned: TaskModel, batch: int, seq_len: int,
                 rounds: int = 3, repeats: int = 5) -> dict:
    """p50 of full and pruned, measured in alternating rounds so drift hits both alike."""
    f, p = [], []
    for _ in range(rounds):
        f.append(measure(full, batch, seq_len, repeats=repeats).p50_s)
        p.append(measure(pruned, batch, seq_len, repeats=repeats).p50_s)
    full_p50, pruned_p50 = sorted(f)[len(f) // 2], sorted(p)[len(p) // 2]
    return {"batch": batch, "seq_len": seq_len, "full_p50_s": full_p50,
            "pruned_p50_s": pruned_p50, "ratio": pruned_p50 / full_p50}


def judge(spec: PrunedModelSpec, full: TaskModel, pruned: TaskModel, data: Dataset, *,
          full_eval: Evaluation | None = None, with_latency: bool = True) -> Judgement:
    """Evaluate both models on `data` and check every gate of the spec."""
    full_eval = full_eval or evaluate(full, data)
    pruned_eval = evaluate(pruned, data)
    agree, agree_slices = agreement(pruned_eval, full_eval)
    pruned_metrics = {**pruned_eval.metrics, **agree}
    pruned_slices = {s: {**m, **agree_slices.get(s, {})} for s, m in pruned_eval.slices.items()}
    full_metrics = {**full_eval.metrics, **{k: 1.0 for k in agree}}
    full_slices = {s: {**m, **{k: 1.0 for k in agree}} for s, m in full_eval.slices.items()}
    budget = spec.pruning.budget
    latency = latency_pair(full, pruned, budget.batch, budget.seq_len) if with_latency else {}
    fb, pb = state_size_bytes(full.model), state_size_bytes(pruned.model)
    size = {"full_bytes": fb, "pruned_bytes": pb, "ratio": pb / fb}
    measured = Measured(full_metrics, pruned_metrics, full_slices, pruned_slices,
                        latency.get("ratio"), size["ratio"])
    return Judgement(measured, check_gates(spec.gates, measured), full_eval, pruned_eval,
                     latency, size)
