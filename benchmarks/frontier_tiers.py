"""The two tiers the savings frontier compares (benchmarks/frontier.py): MiniLM and its pruned copy
(distilled by the job's stage, INT8 last), as served on the chosen runtime; the Debian splits and
the rerank candidates both score; and the measured cost ratio between them."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
from harness import ROOT

__all__ = ["candidate_scores", "distillation", "load_full", "on_runtime", "pruned_tier",
           "ratio_fn", "retrieval_split", "serve_model"]


def retrieval_split(split: str, limit: int):
    """(the first `limit` queries, the whole corpus, each query's judged corpus columns) of one
    split of the frozen Debian data."""
    from tierserve.pruning.data import load_retrieval

    base = ROOT / "examples/data/debian"
    d = load_retrieval(*(base / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")), split=split)
    col = {x: j for j, x in enumerate(d.doc_ids)}
    judged = [[col[x] for x in d.qrels[q]] for q in d.query_ids]
    return list(d.queries[:limit]), list(d.corpus), judged[:limit]


def distillation(steps: int, seconds: float | None, calibration):
    """(DistillConfig, DistillRun) of the JOB's distillation stage (spec.recovery defaults, its
    texts from `calibration` as the job takes them, 10% held back for validation agreement,
    best weights kept), or (None, None) without a budget."""
    if not steps and not seconds:
        return None, None
    from types import SimpleNamespace

    from tierserve.pruning.engine import DistillRun
    from tierserve.pruning.recovery.distillation import distill_texts
    from tierserve.pruning.recovery.distillation.from_spec import distill_config
    from tierserve.pruning.spec import RecoverySpec

    # no early stop: agreement on ~100 held-back queries is too coarse to stop on (patience 6
    # ended the 2026-11-26 rerank run at step 400 with the step-100 weights)
    recovery = RecoverySpec.model_validate({"distillSteps": steps, "maxSeconds": seconds,
                                            "learningRate": 1e-4})
    return (distill_config(SimpleNamespace(recovery=recovery)),
            DistillRun(distill_texts(calibration)))


def serve_model(result, int8: bool):
    """The tier to serve: the pruned (+ distilled) model, INT8 after everything else with `int8`."""
    if not int8:
        return result.model
    from dataclasses import replace

    from tierserve.pruning.quantize import quantize

    return replace(result.model, model=quantize(copy.deepcopy(result.model.model), "int8-dynamic"))


def on_runtime(args, full, result, examples: list, graph_dir: Path):
    """(full, pruned, runtime section) as the tiers serve them on `--runtime`: ONNX Runtime
    graphs (checked for parity on `examples`, the pruned one INT8 with `--int8`), or eager."""
    from tierserve.pruning.served import onnx_tiers, torch_tiers

    quant = "int8-dynamic" if args.int8 else None
    if args.runtime == "torch":
        s = torch_tiers(full, result.model, quant)
    else:
        s = onnx_tiers(full, result.model, quant, graph_dir, examples)
        if not s.gate.passed:
            raise SystemExit(f"runtime_parity failed: {s.gate.detail}")
    return s.full, s.pruned, s.runtime


def pruned_tier(full, flops: float, int8: bool, distill_steps: int,
                distill_seconds: float | None = None):
    """(model to serve, fp32 pruned result) for MiniLM at `flops` removed; distilled by the job's
    stage on the calibration split when given a step or time budget; INT8 last."""
    from tierserve.pruning.data import load_retrieval
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.structure import Budget

    queries, corpus, _ = retrieval_split("calibration", 128)
    base = ROOT / "examples/data/debian"
    calib = load_retrieval(*(base / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")),
                           split="calibration")
    dcfg, drun = distillation(distill_steps, distill_seconds, calib)
    cfg = PruneConfig(criterion="activation", budget=Budget(kind="flops", target=flops),
                      rescale=True, distill=dcfg)
    result = prune(full, queries + corpus[:128], cfg, distill_run=drun)
    return serve_model(result, int8), result


def candidate_scores(full, pruned, split: str, limit: int):
    """(F, P) (Q, k) scores of each query's rerank candidates, and the requests' texts."""
    from tierserve.pruning.calibration import rerank_candidates, rerank_scores
    from tierserve.pruning.evaluate import encode

    queries, corpus, judged = retrieval_split(split, limit)
    cands = rerank_candidates(queries, corpus, judged)
    used = sorted({j for c in cands for j in c})
    texts = queries + [corpus[j] for j in used]
    where = {j: len(queries) + i for i, j in enumerate(used)}
    outs = []
    for tm in (full, pruned):
        e = encode(tm, texts).numpy()
        outs.append(np.stack([rerank_scores(e[i], e[[where[j] for j in c]])
                              for i, c in enumerate(cands)]))
    bodies = [{"query": q, "documents": [corpus[j] for j in c]} for q, c in zip(queries, cands,
                                                                                strict=True)]
    return outs[0], outs[1], bodies


def load_full(path_or_uri: str, task: str):
    from tierserve.pruning.storage import resolve
    from tierserve.pruning.tasks import load_task_model

    return load_task_model(resolve(path_or_uri), task)


def ratio_fn(full, pruned, rounds: int):
    from tierserve.pruning.calibration import measured_cost_ratio

    def measure(texts):
        r = measured_cost_ratio(full, pruned, texts, rounds=rounds, batch=32)
        print(f"cost ratio {r.ratio:.3f} ({r.source}; measured {r.measured}, 95% CI {r.ci}, "
              f"ideal {r.ideal:.3f}, {r.rounds} rounds) {r.warning or ''}", file=sys.stderr)
        return r
    return measure
