"""The job's steps, in order: load full -> score -> prune (or search) -> recover -> judge -> save."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from .artifact import save_pruned
from .calibration import calibration_report
from .data import RetrievalData
from .engine import DistillRun, PruneConfig, distill_result, prune, score_units
from .evaluate import known_vectors, quality_kept
from .inputs import Dataset, JobInputs
from .pairs import SimilarityData
from .quality import judge
from .search import search_max_sparsity
from .served import GRAPH_DIR, parity_examples, serve_tiers
from .spec import PrunedModelSpec, SpecError
from .structure import Budget
from .tasks import Task, TaskModel, load_task_model

__all__ = ["calibration_examples", "prune_config", "run_pipeline"]


def prune_config(spec: PrunedModelSpec) -> PruneConfig:
    p, r = spec.pruning, spec.recovery
    budget = Budget(kind=p.budget.kind, target=p.budget.target, seq_len=p.budget.seq_len,
                    batch=p.budget.batch, multiple=p.multiple,
                    structures=tuple(s.value for s in p.structures))
    # A causal LM's outputs are (tokens, vocab) logits: 32 x seqLen x 49k floats would not fit.
    batch = 4 if spec.model.task is Task.text_generation else 32
    from .recovery.distillation.from_spec import distill_config

    return PruneConfig(criterion=p.criterion.value, budget=budget, target=spec.data.labels,
                       rescale=r.rescale, rounds=r.rounds, batch_size=batch,
                       distill=distill_config(spec))


def _distill_run(spec: PrunedModelSpec, inputs: JobInputs, full: TaskModel, art: Path,
                 config: PruneConfig) -> DistillRun | None:
    """Texts and checkpoints of the distillation stage; Ray Train when the job runs on Ray."""
    if config.distill is None:
        return None
    from .parallel import ray_active
    from .recovery.distillation.from_spec import spec_texts

    texts = spec_texts(spec, inputs.calibration, full, inputs.hashes.get("data", {}))
    return DistillRun(texts, str(art / "distill"), use_ray=ray_active())


def calibration_examples(data: Dataset, n: int) -> tuple[list, list | None]:
    """Up to n examples (and labels for classification). Retrieval: half queries, half documents."""
    if isinstance(data, SimilarityData):
        return list(data.texts[: (n + 1) // 2]) + list(data.pairs[: n // 2]), None
    if isinstance(data, RetrievalData):
        half = max(1, n // 2)
        return list(data.queries[:half]) + list(data.corpus[:n - min(half, len(data.queries))]), None
    return list(data.texts[:n]), list(data.labels[:n])


def _search(spec, full, examples, labels, config, inputs, tick):
    if config.budget.kind == "latency":
        raise SpecError("spec.pruning.search.mode: maxSparsity searches a flops or params budget, "
                        "not latency (set spec.gates.maxLatencyRatio instead)")
    batches = full.batches(examples, config.batch_size)
    scores = score_units(full, batches, config, labels if config.target == "labels" else None)
    data = inputs.validation or inputs.evaluation
    return search_max_sparsity(spec, full, scores, batches, config, data, tick)


def _versions() -> dict:
    import transformers

    import tierserve

    return {"tierserve": tierserve.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "torch_threads": torch.get_num_threads()}


def _load_full(spec: PrunedModelSpec, path: Path) -> TaskModel:
    from .latency import job_device

    m = spec.model
    tm = load_task_model(path, m.task, trust_remote_code=m.trust_remote_code,
                         max_length=m.max_length)
    tm.model.to(job_device())  # chosen once; every copy (the pruned model) stays there
    return tm


def run_pipeline(spec: PrunedModelSpec, inputs: JobInputs, art: Path, tick) -> dict:
    t0 = time.perf_counter()
    full = _load_full(spec, inputs.model_path)
    config = prune_config(spec)
    if config.target == "labels" and isinstance(inputs.calibration, RetrievalData | SimilarityData):
        raise SpecError("spec.data.labels: embedding calibration is label-free; use 'self'")
    examples, labels = calibration_examples(inputs.calibration, spec.pruning.calibration_samples)
    tick("prune", 0.1)
    trace: list[dict] = []
    run = _distill_run(spec, inputs, full, art, config)
    if spec.pruning.search.mode == "maxSparsity":
        result, trace = _search(spec, full, examples, labels, config, inputs, tick)
        if result is not None and run is not None:  # the searched budget, then distilled
            distill_result(full, result, config.distill, run, span=(0.6, 0.65),
                           progress=tick)
    else:
        result = prune(full, examples, config, labels=labels if config.target == "labels" else None,
                       progress=lambda s, f: tick(s, 0.1 + 0.5 * f), distill_run=run)
    if result is None:
        return _no_result(spec, trace, t0)
    tick("evaluate", 0.65)
    quant = None if spec.quantization.mode == "none" else spec.quantization.mode
    quant = result.report.get("serve_quantization") or quant  # search chose pruning + INT8
    served = serve_tiers(spec, full, result.model, quant, art / "model" / GRAPH_DIR,
                         parity_examples(inputs.evaluation, full))
    # the gates judge what will serve: the runtime's graphs, INT8 included
    j = judge(spec, served.full, served.pruned, inputs.evaluation)
    gates = j.gates + ([served.gate] if served.gate else [])
    passed = all(g.passed for g in gates)
    tick("save", 0.9)
    save_pruned(result.model, art / "model", structure=result.structure, source=spec.model.uri,
                criterion=config.criterion, budget=result.config.budget, report=result.report,
                quantization=quant, extra={"runtime": served.runtime})
    kept = quality_kept(j.measured.pruned, j.measured.full, j.full_eval.metrics)
    return {
        "apiVersion": "tierserve.io/v1alpha1", "kind": "PruningReport",
        "task": spec.model.task.value, "deployable": passed,
        "status": "passed" if passed else "gates_failed",
        "spec": spec.model_dump(mode="json", by_alias=True),
        "budget": {"requested": spec.pruning.budget.model_dump(by_alias=True),
                   "achieved_target": result.config.budget.target,
                   "encoder_flops_removed": result.report["plan"]["encoder"]["flops_removed_fraction"],
                   "encoder_params_removed": result.report["plan"]["encoder"]["params_removed_fraction"]},
        "plan": result.report["plan"], "prune": {k: v for k, v in result.report.items() if k != "plan"},
        "metrics": {"full": j.measured.full, "pruned": j.measured.pruned, "quality_kept": kept},
        "slices": {"full": j.measured.full_slices, "pruned": j.measured.pruned_slices},
        "latency": j.latency, "size": j.size, "quantization": served.quantization,
        "runtime": served.runtime, "gates": [g.to_dict() for g in gates],
        "search": trace, "versions": _versions(), "evaluated_on": j.evaluated_on,
        "distillation": result.report.get("distillation"),
        "calibration": calibration_report(  # the cascade, reusing the evaluation's vectors
            spec, served.full, served.pruned, inputs,
            {"full": known_vectors(j.full_eval, inputs.evaluation),
             "pruned": known_vectors(j.pruned_eval, inputs.evaluation)}),
        "seconds": time.perf_counter() - t0,
    }


def _no_result(spec: PrunedModelSpec, trace: list[dict], t0: float) -> dict:
    return {"apiVersion": "tierserve.io/v1alpha1", "kind": "PruningReport",
            "task": spec.model.task.value, "deployable": False, "status": "gates_failed",
            "spec": spec.model_dump(mode="json", by_alias=True), "gates": [], "search": trace,
            "message": "no budget in [search.low, search.high] passes every gate",
            "versions": _versions(), "seconds": time.perf_counter() - t0}
