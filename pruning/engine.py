"""The pruning engine: score -> plan -> surgery -> recover, for one `TaskModel`.

    result = prune(full, calibration_examples, PruneConfig(criterion="fisher",
                   budget=Budget(kind="flops", target=0.5)))
    save_pruned(result, "out/pruned")        # artifact.py

The full model is never modified: every step works on a deep copy. With `rounds > 1` the target is
approached in steps (prune -> recover -> re-score); each round re-plans from the full model with
importance measured on the previous round's recovered model, so removed units score 0 and are
not revived in practice, and the final structure always meets the budget's tolerance. A latency
budget is turned into the FLOPs fraction that achieves it on this hardware (`latency_to_flops`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import importance
from .adapters import adapter_for
from .cost import ModelShape
from .latency import measure
from .plan import plan, plan_report
from .recovery import DistillConfig, distill, distill_stage, ls_rescale
from .recovery.distillation import DistillTexts, fingerprint
from .structure import Budget, Scores, Structure
from .surgery import apply_structure
from .tasks import TaskModel

__all__ = ["DistillRun", "Progress", "PruneConfig", "PruneResult", "distill_result",
           "latency_to_flops", "prune", "prune_with_scores", "score_units"]

Progress = Callable[[str, float], None]  # (stage, fraction of the whole run done)


@dataclass(frozen=True)
class PruneConfig:
    criterion: str = "fisher"  # one of importance.CRITERIA
    budget: Budget = field(default_factory=Budget)
    target: str = "self"  # "self" (label-free: the full model's outputs) or "labels"
    rescale: bool = True  # Kwon et al.'s least-squares rescale (retraining-free)
    distill_steps: int = 0  # plain distillation on the calibration batches (no validation)
    distill_lr: float = 2e-5
    distill: DistillConfig | None = None  # the distillation stage (needs `DistillTexts`)
    rounds: int = 1  # prune -> recover -> re-score rounds toward the target
    batch_size: int = 32  # calibration batch size (Fisher/Taylor use it for gradient batches)
    seed: int = 0


@dataclass
class PruneResult:
    model: TaskModel  # the physically smaller model
    structure: Structure  # kept units, in the full model's indices
    scores: Scores  # the importance the final plan used
    config: PruneConfig
    report: dict[str, Any]  # plan costs, recovery stats, timings


def _noop(stage: str, done: float) -> None:
    return None


def _copy(tm: TaskModel) -> TaskModel:
    return replace(tm, model=copy.deepcopy(tm.model))


def _lift(scores: Scores, structure: Structure, shape: ModelShape) -> Scores:
    """Scores of a pruned model -> the full model's indices; removed units score 0."""
    L, H, F = shape.num_layers, max(shape.heads), max(shape.intermediate)
    heads, neurons = torch.zeros(L, H), torch.zeros(L, F)
    layers = torch.zeros(L) if scores.layers is not None else None
    for j, i in enumerate(structure.kept_layers):
        ls = structure.layers[i]
        heads[i, list(ls.heads)] = scores.heads[j, :len(ls.heads)].float().nan_to_num(0.0)
        neurons[i, list(ls.neurons)] = scores.neurons[j, :len(ls.neurons)].float().nan_to_num(0.0)
        if layers is not None:
            layers[i] = float(scores.layers[j])
    return replace(scores, heads=heads, neurons=neurons, layers=layers)


def score_units(tm: TaskModel, batches: list, config: PruneConfig,
                labels: Sequence | None = None) -> Scores:
    """Importance of every unit of `tm` by `config.criterion`; layer scores when layers are prunable."""
    adapter = adapter_for(tm.model)
    scores = importance.score(config.criterion, tm, adapter, batches, target=config.target,
                              labels=labels, seed=config.seed)
    if "layers" in config.budget.structures and scores.layers is None:
        scores = replace(scores, layers=importance.layer_scores(tm, adapter, batches))
    return scores


def prune_with_scores(full: TaskModel, scores: Scores, batches: list, config: PruneConfig,
                      shape: ModelShape | None = None) -> PruneResult:
    """Plan from given scores (reused across budgets by a search), then surgery and recovery."""
    shape = shape or ModelShape.from_adapter(adapter_for(full.model))
    t0 = time.perf_counter()
    structure = plan(scores, config.budget, shape)
    pruned = _copy(full)
    apply_structure(adapter_for(pruned.model), structure)
    report: dict[str, Any] = {"plan": plan_report(structure, shape, config.budget.seq_len)}
    if config.rescale:
        report["rescale"] = ls_rescale(pruned, full, structure, batches).errors
    if config.distill_steps:
        report["distill"] = distill(pruned, full, batches, config.distill_steps, config.distill_lr)
    report["seconds"] = {"plan_surgery_recovery": time.perf_counter() - t0}
    return PruneResult(pruned, structure, scores, config, report)


@dataclass(frozen=True)
class DistillRun:
    """Where and how the distillation stage runs (the job's side of it)."""

    texts: DistillTexts
    ckpt_dir: str | None = None  # on the artifact store: a restarted job resumes from here
    use_ray: bool = False  # Ray Train when the job runs inside Ray


def distill_result(full: TaskModel, result: PruneResult, cfg: DistillConfig, run: DistillRun, *,
                   progress: Progress = _noop, span: tuple[float, float] = (0.0, 1.0),
                   tag: str = "final") -> dict:
    """Distil `full` into `result.model` (in place); the report section goes to
    `result.report["distillation"]`, the details to `result.report["distill"]`."""
    structure = result.structure.to_dict()
    ckpt = f"{run.ckpt_dir}/{tag}" if run.ckpt_dir else None

    def tick(step, total, loss, agree, frac):
        of = f"{step}/{total}" if total else f"{step}"
        va = "n/a" if agree is None else f"{agree:.3f}"
        progress(f"distill {of} loss {loss:.4f} val_agreement {va}",
                 span[0] + (span[1] - span[0]) * frac)
    section, details = distill_stage(
        result.model, full, run.texts, cfg, kept_layers=result.structure.kept_layers,
        ckpt_dir=ckpt, fingerprint=fingerprint(structure, cfg, run.texts, tag),
        use_ray=run.use_ray, on_progress=tick)
    result.report["distillation"], result.report["distill"] = section, details
    return section


def _round_share(cfg: DistillConfig, r: int, rounds: int) -> DistillConfig:
    """Intermediate rounds distil with 1/rounds of the budget; the last one with all of it."""
    if r == rounds:
        return cfg
    return replace(cfg, steps=max(1, cfg.steps // rounds) if cfg.steps else 0,
                   max_seconds=cfg.max_seconds / rounds if cfg.max_seconds else None)


def prune(full: TaskModel, calibration: Sequence[Any], config: PruneConfig, *,
          labels: Sequence | None = None, progress: Progress = _noop,
          distill_run: DistillRun | None = None) -> PruneResult:
    """Prune a copy of `full` to `config.budget` using `calibration` examples (texts, pairs, images).
    With `config.distill` and `distill_run`, the distillation stage runs after surgery in every
    round (the intermediate rounds' students only re-score; module doc)."""
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    batches = full.batches(list(calibration), config.batch_size)
    shape = ModelShape.from_adapter(adapter_for(full.model))
    budget = config.budget
    if budget.kind == "latency":
        progress("latency", 0.0)
        flops = latency_to_flops(full, shape, budget)
        budget = replace(budget, kind="flops", target=flops["flops_target"])
    result: PruneResult | None = None
    timings: dict[str, float] = {}
    for r in range(1, config.rounds + 1):
        step = replace(config, budget=replace(budget, target=budget.target * r / config.rounds),
                       distill_steps=config.distill_steps if r == config.rounds else 0)
        progress(f"score round {r}/{config.rounds}", (r - 1) / config.rounds)
        ts = time.perf_counter()
        if result is None:
            scores = score_units(full, batches, step, labels)
        else:
            scores = _lift(score_units(result.model, batches, step, labels), result.structure, shape)
        timings[f"score_round_{r}"] = time.perf_counter() - ts
        progress(f"prune round {r}/{config.rounds}", (r - 0.5) / config.rounds)
        result = prune_with_scores(full, scores, batches, step, shape)
        timings[f"recover_round_{r}"] = result.report["seconds"]["plan_surgery_recovery"]
        if config.distill is not None and distill_run is not None:
            ts = time.perf_counter()
            distill_result(full, result, _round_share(config.distill, r, config.rounds),
                           distill_run, progress=progress, tag=f"round{r}",
                           span=((r - 0.5) / config.rounds, r / config.rounds))
            timings[f"distill_round_{r}"] = time.perf_counter() - ts
    assert result is not None
    result.config = config
    result.report["seconds"] = {**timings, "total": time.perf_counter() - t0}
    result.report["criterion"] = config.criterion
    result.report["calibration_examples"] = len(calibration)
    if config.budget.kind == "latency":
        result.report["latency_budget"] = flops
    progress("done", 1.0)
    return result


def latency_to_flops(full: TaskModel, shape: ModelShape, budget: Budget, *,
                     steps: int = 6, repeats: int = 5) -> dict[str, Any]:
    """Bisect the FLOPs fraction whose pruned/full p50 latency ratio meets `budget.target`.

    Candidates are pruned by weight magnitude only (timing depends on shapes, not on which units
    survive), so this costs a few forwards per step, not a calibration pass.
    """
    base = measure(full, budget.batch, budget.seq_len, repeats=repeats)
    adapter = adapter_for(full.model)
    mag = importance.score("magnitude", full, adapter, [], target="self")
    lo, hi, trace = 0.0, 0.9, []  # 0.9: the most a plan keeping 1 head per layer can reach
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand = _copy(full)
        structure = plan(mag, replace(budget, kind="flops", target=mid), shape)
        apply_structure(adapter_for(cand.model), structure)
        ratio = measure(cand, budget.batch, budget.seq_len, repeats=repeats).p50_s / base.p50_s
        trace.append({"flops_removed": mid, "latency_ratio": ratio})
        lo, hi = (lo, mid) if ratio <= budget.target else (mid, hi)
    return {"flops_target": hi, "full_p50_s": base.p50_s, "trace": trace,
            "latency_target": budget.target}
