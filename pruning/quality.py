"""Measure a pruned model against the full one: task metrics, agreement, latency, size -> gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .evaluate import Evaluation, agreement, evaluate, quality_signals
from .gates import GateResult, Measured, check_gates
from .inputs import Dataset
from .latency import measure, model_device
from .parallel import run_side_by_side
from .quantize import state_size_bytes
from .spec import PrunedModelSpec
from .tasks import Task, TaskModel

__all__ = ["Judgement", "judge", "latency_pair", "model_bytes"]


@dataclass
class Judgement:
    measured: Measured
    gates: list[GateResult]
    full_eval: Evaluation
    pruned_eval: Evaluation
    latency: dict
    size: dict
    evaluated_on: str = "local"  # "ray": full and pruned were evaluated as parallel Ray tasks

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def model_bytes(tm: TaskModel) -> int:
    """What a tier holds: its graph file on ONNX Runtime (INT8 included), else the state dict."""
    graph = getattr(tm, "graph", "")
    return Path(graph).stat().st_size if graph else state_size_bytes(tm.model)


def latency_pair(full: TaskModel, pruned: TaskModel, batch: int, seq_len: int,
                 rounds: int = 3, repeats: int = 5) -> dict:
    """p50 of full and pruned, measured in alternating rounds so drift hits both alike."""
    f, p = [], []
    for _ in range(rounds):
        f.append(measure(full, batch, seq_len, repeats=repeats).p50_s)
        p.append(measure(pruned, batch, seq_len, repeats=repeats).p50_s)
    full_p50, pruned_p50 = sorted(f)[len(f) // 2], sorted(p)[len(p) // 2]
    return {"batch": batch, "seq_len": seq_len, "full_p50_s": full_p50,
            "pruned_p50_s": pruned_p50, "ratio": pruned_p50 / full_p50,
            "device": model_device(pruned)}


def _latency(full: TaskModel, pruned: TaskModel, batch: int, seq_len: int) -> dict:
    """Decoder LMs: ms/token for prefill and decode (lm.py); others: p50 of one forward."""
    if full.task is Task.text_generation:
        from .lm import latency_lm

        return {**latency_lm(full, pruned, batch=min(batch, 4), seq_len=seq_len),
                "device": model_device(pruned)}
    return latency_pair(full, pruned, batch, seq_len)


def judge(spec: PrunedModelSpec, full: TaskModel, pruned: TaskModel, data: Dataset, *,
          full_eval: Evaluation | None = None, with_latency: bool = True) -> Judgement:
    """Evaluate both models on `data` and check every gate of the spec."""
    if full_eval is None:  # two independent evaluations: Ray tasks side by side on a cluster
        (full_eval, pruned_eval), where = run_side_by_side(
            evaluate, [(full, data), (pruned, data)])
    else:
        pruned_eval, where = evaluate(pruned, data), "local"
    agree, agree_slices = agreement(pruned_eval, full_eval)
    sig = quality_signals(pruned_eval, full_eval)  # embeddings: cosine, cross-tier retrieval
    pruned_metrics = {**pruned_eval.metrics, **agree, **sig.pruned}
    pruned_slices = {s: {**m, **agree_slices.get(s, {}), **sig.pruned_slices.get(s, {})}
                     for s, m in pruned_eval.slices.items()}
    full_metrics = {**full_eval.metrics, **{k: 1.0 for k in agree}, **sig.full}
    full_slices = {s: {**m, **{k: 1.0 for k in agree}, **sig.full_slices.get(s, {})}
                   for s, m in full_eval.slices.items()}
    budget = spec.pruning.budget
    latency = _latency(full, pruned, budget.batch, budget.seq_len) if with_latency else {}
    fb, pb = model_bytes(full), model_bytes(pruned)
    size = {"full_bytes": fb, "pruned_bytes": pb, "ratio": pb / fb}
    phases = {k: latency[k]["ratio"] for k in ("prefill", "decode") if k in latency} or None
    measured = Measured(full_metrics, pruned_metrics, full_slices, pruned_slices,
                        latency.get("ratio"), size["ratio"], latency_phases=phases)
    return Judgement(measured, check_gates(spec.gates, measured), full_eval, pruned_eval,
                     latency, size, where)
