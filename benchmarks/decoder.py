"""Decoder-LM pruning benchmark: SmolLM2-135M-Instruct, width (KV-group heads + FFN) vs depth
(whole layers, Block Influence), at 25% and 50% of per-token FLOPs removed.

    python benchmarks/decoder.py [--quick] [--out benchmarks/results/decoder.json]

Per row, side by side on the same held-out text (examples/data/lm, split test):
- perplexity full / pruned and `ppl_kept` = full / pruned (1.0 = nothing lost);
- next-token top-1 agreement with the full model;
- generation task accuracy (Debian games vs science, one-word answer) full / pruned;
- prefill and decode speedup (full / pruned latency, lm.latency_lm) against the ideal speedup
  (whole-model FLOPs per token, LM head included, full / pruned);
- wall time of the pruning step (score + plan + surgery + LS rescale).
Importance: Fisher (default; --criterion) for heads / neurons and Block Influence for layers,
from one scoring pass shared by all rows. Writes the JSON to --out and the same table as markdown next to it (`.md`).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape, whole_flops
from tierserve.pruning.engine import PruneConfig, prune_with_scores, score_units
from tierserve.pruning.gguf import smollm2_dir
from tierserve.pruning.lm import (
    LMData,
    _task_metrics,
    generate,
    latency_lm,
    load_lm_data,
    perplexity_pass,
)
from tierserve.pruning.recovery import distill_texts
from tierserve.pruning.structure import Budget
from tierserve.pruning.tasks import load_task_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "lm" / "lm.jsonl.gz"
THREADS = 2
KEYS = ("structures", "flops_removed", "achieved", "ppl_full", "ppl_pruned", "ppl_kept",
        "next_token_agreement", "task_acc_full", "task_acc_pruned", "prefill_speedup",
        "decode_speedup", "ideal_speedup", "prefill_vs_ideal", "decode_vs_ideal",
        "prune_seconds", "layers_kept", "heads_kept")


@dataclass(frozen=True)
class Settings:
    calib_texts: int = 16  # 4 batches of 4 x 128 tokens: scoring and the LS rescale
    test_texts: int = 48
    task_prompts: int = 24
    max_length: int = 128
    levels: tuple[float, ...] = (0.25, 0.5)
    latency_rounds: int = 3
    rescale: bool = True  # LS rescale after surgery (about L/2 forwards per sublayer on CPU)
    criterion: str = "fisher"  # activation scores strip early-layer FFNs on SmolLM2 (docs)


QUICK = Settings(calib_texts=8, test_texts=8, task_prompts=4, max_length=64, levels=(0.25,),
                 latency_rounds=1)


def _quality(tm, test: LMData, prompts: LMData) -> tuple[float, object, dict]:
    nll, count, top1, _ = perplexity_pass(tm, test.texts, 8)
    task = _task_metrics(generate(tm, list(prompts.prompts), max_new_tokens=6), prompts.answers)
    return float(torch.tensor(nll.sum() / count.sum()).exp()), top1, task


def _row(full, scores, batches, shape, test, prompts, base, structures, level, s: Settings) -> dict:
    tol = 0.02 if structures == ("layers",) else 0.01
    config = PruneConfig(criterion=s.criterion, batch_size=4, rescale=s.rescale, budget=Budget(
        kind="flops", target=level, seq_len=s.max_length, multiple=32, structures=structures,
        tolerance=tol))
    t0 = time.perf_counter()
    result = prune_with_scores(full, scores, batches, config, shape)
    seconds = time.perf_counter() - t0 + base["score_seconds"]
    ppl, top1, task = _quality(result.model, test, prompts)
    lat = latency_lm(full, result.model, batch=4, seq_len=s.max_length, rounds=s.latency_rounds)
    ideal = whole_flops(shape, None, s.max_length) / whole_flops(shape, result.structure,
                                                                  s.max_length)
    plan = result.report["plan"]
    pre, dec = 1 / lat["prefill"]["ratio"], 1 / lat["decode"]["ratio"]
    return {"structures": "+".join(structures), "flops_removed": level,
            "achieved": plan["encoder"]["flops_removed_fraction"], "ppl_full": base["ppl"],
            "ppl_pruned": ppl, "ppl_kept": base["ppl"] / ppl,
            "next_token_agreement": float((top1 == base["top1"]).mean()),
            "task_acc_full": base["task"]["accuracy"], "task_acc_pruned": task["accuracy"],
            "prefill_speedup": pre, "decode_speedup": dec, "ideal_speedup": ideal,
            "prefill_vs_ideal": pre / ideal, "decode_vs_ideal": dec / ideal,
            "prune_seconds": seconds, "layers_kept": len(plan["layers_kept"]),
            "heads_kept": plan["heads_kept"], "latency": lat, "_result": result}


def _distill_row(full, result, calib: LMData, test, prompts, base, row: dict, steps: int) -> dict:
    """The distilled twin of one row: token-level KL on the calibration texts and the prompts
    followed by the full model's greedy continuations (the job's own distillation stage)."""
    from tierserve.pruning.recovery import DistillConfig, distill_stage
    from tierserve.pruning.recovery.distillation import greedy_continuations

    student = replace(result.model, model=copy.deepcopy(result.model.model))
    texts = distill_texts(calib, continuations=lambda p: greedy_continuations(full, p))
    sec, _ = distill_stage(student, full, texts, DistillConfig(steps=steps, batch_size=4, lr=1e-4),
                           kept_layers=result.structure.kept_layers)
    ppl, _, task = _quality(student, test, prompts)
    acc_full = base["task"]["accuracy"] or float("nan")

    def fields(p: float, acc: float, n: int) -> dict:
        return {"structures": row["structures"], "per_token_flops_removed": row["achieved"],
                "distill_steps": n, "perplexity_ratio": p / base["ppl"],
                "task_accuracy_ratio": acc / acc_full}
    return {**fields(ppl, task["accuracy"], sec["steps"]), "distill_seconds": sec["seconds"],
            "baseline": fields(row["ppl_pruned"], row["task_acc_pruned"], 0)}


def run(s: Settings, distill_steps: int = 0) -> dict:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    full = load_task_model(smollm2_dir(), "text-generation", max_length=s.max_length)
    calib = load_lm_data(DATA, split="calibration", limit=s.calib_texts)
    test = load_lm_data(DATA, split="test", limit=s.test_texts)
    prompts = replace(test, texts=(), prompts=test.prompts[:s.task_prompts],
                      answers=test.answers[:s.task_prompts])
    batches = full.batches(list(calib.texts), 4)
    t0 = time.perf_counter()
    scores = score_units(full, batches, PruneConfig(criterion=s.criterion, budget=Budget(
        structures=("heads", "neurons", "layers"))))
    base = {"score_seconds": time.perf_counter() - t0}
    base["ppl"], base["top1"], base["task"] = _quality(full, test, prompts)
    shape = ModelShape.from_adapter(adapter_for(full.model))
    rows, distilled = [], []
    for level in s.levels:
        for structures in (("heads", "neurons"), ("layers",)):
            rows.append(_row(full, scores, batches, shape, test, prompts, base, structures,
                             level, s))
            print(json.dumps({k: rows[-1][k] for k in KEYS}), flush=True)
            if distill_steps:
                distilled.append(_distill_row(full, rows[-1].pop("_result"), calib, test,
                                              prompts, base, rows[-1], distill_steps))
                print(json.dumps(distilled[-1]), flush=True)
            rows[-1].pop("_result", None)
    doc = {"rows": rows, "settings": s.__dict__, "score_seconds": base["score_seconds"]}
    if distilled:
        doc["distill_rows"] = distilled
    return doc


def _markdown(doc: dict) -> str:
    head = ("| structures | FLOPs removed | ppl full | ppl pruned | ppl kept | next-token agr. "
            "| task acc full / pruned | prefill speedup | decode speedup | ideal | prefill/ideal "
            "| decode/ideal | prune s |")
    s = doc["settings"]
    setup = (f"Calibration {s['calib_texts']} texts, test {s['test_texts']} texts + "
             f"{s['task_prompts']} task prompts, {s['max_length']} tokens, criterion "
             f"{s['criterion']} (heads, neurons) / Block Influence (layers), LS rescale "
             f"{'on' if s['rescale'] else 'off'}.")
    lines = [f"# Decoder pruning: SmolLM2-135M-Instruct\n\n{doc['header']}\n\n{setup}\n", head,
             "|" + "---|" * 13]
    for r in doc["rows"]:
        lines.append(
            f"| {r['structures']} | {r['achieved']:.3f} | {r['ppl_full']:.2f} | "
            f"{r['ppl_pruned']:.2f} | {r['ppl_kept']:.3f} | {r['next_token_agreement']:.3f} | "
            f"{r['task_acc_full']:.3f} / {r['task_acc_pruned']:.3f} | {r['prefill_speedup']:.2f}x | "
            f"{r['decode_speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['prefill_vs_ideal']:.2f} "
            f"| {r['decode_vs_ideal']:.2f} | {r['prune_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, one level")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder.json"))
    parser.add_argument("--no-rescale", action="store_true", help="skip the LS rescale")
    parser.add_argument("--criterion", default="fisher", help="importance for heads and neurons")
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="also a distilled twin of every row (`distill_rows`)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    settings = QUICK if args.quick else Settings()
    doc = run(replace(settings, rescale=settings.rescale and not args.no_rescale,
                      criterion=args.criterion), args.distill_steps)
    doc["header"] = (f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
                     f"`{shlex.join(['python', 'benchmarks/decoder.py', *(argv or sys.argv[1:])])}`,"
                     f" {platform.machine()}, torch {torch.__version__}, {THREADS} threads, load "
                     f"average at start {load:.1f}, wall time {time.perf_counter() - t0:.0f} s.")
    if load > 0.5:
        doc["header"] += (" WARNING: the machine was busy (other jobs share its 2 cores), so "
                          "latencies and speedups are noisy.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(_markdown(doc))
    print(_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
