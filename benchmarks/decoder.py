"""Decoder-LM pruning benchmark: SmolLM2-135M-Instruct, width (KV-group heads + FFN) vs depth
(whole layers, Block Influence), at 25% and 50% of per-token FLOPs removed.

    python benchmarks/decoder.py [--quick] [--out benchmarks/results/decoder.json]
    python benchmarks/decoder.py --no-rescale --levels 0.25 --structures layers \
        --distill-steps 300 --distill-seconds 720 --save-models     # the decoder distillation rows

Per row, side by side on the same held-out text (examples/data/lm, split test):
- perplexity full / pruned and `ppl_kept` = full / pruned (1.0 = nothing lost);
- next-token top-1 agreement with the full model;
- generation task accuracy (Debian games vs science, one-word answer) full / pruned;
- prefill and decode speedup (full / pruned latency, lm.latency_lm) against the ideal speedup
  (whole-model FLOPs per token, LM head included, full / pruned);
- wall time of the pruning step (score + plan + surgery + LS rescale).
Importance: Fisher (default; --criterion) for heads / neurons and Block Influence for layers,
from one scoring pass shared by all rows. Writes the JSON to --out and the same table as markdown next to it (`.md`).

`--distill-steps N` (and a wall-time budget `--distill-seconds`) adds a distilled twin of every row
to `distill_rows`: the job's distillation stage (token-level KL to the full model) on the
calibration texts and every calibration prompt in the chat template followed by the full model's
greedy answer. Each carries `per_token_flops_removed`, `distill_steps`, `perplexity_ratio`
(pruned / full, goal <= 1.3) and `task_accuracy_ratio` (pruned / full, goal >= 0.9), and the
same fields of the undistilled row under `baseline`. `--save-models` keeps the distilled models
(runs/decoder/<structures>-<level>-distilled) for benchmarks/frontier_generation.py. The output
file is merged into, not replaced (`--replace` to overwrite): existing rows are kept.
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
    generate,
    latency_lm,
    load_lm_data,
    perplexity_pass,
    task_metrics,
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
    structures: tuple[str, ...] = ("heads+neurons", "layers")
    distill_prompts: int = 76  # calibration prompts (+ full's answers) for distillation: all
    distill_seconds: float | None = None  # wall-time budget of each distillation (CPU)


QUICK = Settings(calib_texts=8, test_texts=8, task_prompts=4, max_length=64, levels=(0.25,),
                 distill_prompts=4,
                 latency_rounds=1)


def _quality(tm, test: LMData, prompts: LMData) -> tuple[float, object, dict]:
    nll, count, top1, _ = perplexity_pass(tm, test.texts, 8)
    task = task_metrics(generate(tm, list(prompts.prompts), max_new_tokens=6), prompts.answers)
    return float(torch.tensor(nll.sum() / count.sum()).exp()), top1, task


def _config(s: Settings, structures: tuple[str, ...], level: float) -> PruneConfig:
    tol = 0.02 if structures == ("layers",) else 0.01
    return PruneConfig(criterion=s.criterion, batch_size=4, rescale=s.rescale, budget=Budget(
        kind="flops", target=level, seq_len=s.max_length, multiple=32, structures=structures,
        tolerance=tol))


def _row(full, scores, batches, shape, test, prompts, base, structures, level, s: Settings) -> dict:
    config = _config(s, structures, level)
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


def chat_continuations(full, prompts: list[str], tokens: int = 32) -> list[str]:
    """Each prompt as the served tier sees it (chat template) followed by the full model's
    greedy answer and its end-of-turn token: the decoder distillation texts."""
    from tierserve.pruning.lm import encode_prompts, generate_batch

    tok = full.processor
    answers = generate_batch(full, prompts, max_new_tokens=tokens)
    chat = [tok.decode(encode_prompts(full, [p], chat=True)["input_ids"][0]) for p in prompts]
    return [c + g.text + (tok.eos_token or "") for c, g in zip(chat, answers, strict=True)]


def distill_student(full, result, calib: LMData, steps: int,
                    seconds: float | None = None) -> tuple:
    """(student, section): token-level KL on the calibration texts and the calibration prompts
    followed by the full model's greedy answers (the job's own distillation stage)."""
    from tierserve.pruning.recovery import DistillConfig, distill_stage

    student = replace(result.model, model=copy.deepcopy(result.model.model))
    texts = distill_texts(calib, continuations=lambda p: chat_continuations(full, p))
    sec, details = distill_stage(student, full, texts, DistillConfig(
        steps=steps, max_seconds=seconds, batch_size=4, lr=1e-4),
        kept_layers=result.structure.kept_layers)
    return student, {**sec, "texts": details["texts"], "val_texts": details["val_texts"],
                     "best_val_agreement": details["best_val_agreement"]}


def _distill_row(full, result, calib: LMData, test, prompts, base, row: dict, steps: int,
                 save: Path | None = None, seconds: float | None = None) -> dict:
    """The distilled twin of one row, with the undistilled row's same fields under `baseline`."""
    student, sec = distill_student(full, result, calib, steps, seconds)
    ppl, top1, task = _quality(student, test, prompts)
    acc_full = base["task"]["accuracy"] or float("nan")

    def fields(p: float, acc: float, n: int, agree: float) -> dict:
        return {"structures": row["structures"], "per_token_flops_removed": row["achieved"],
                "distill_steps": n, "perplexity_ratio": p / base["ppl"],
                "task_accuracy_ratio": acc / acc_full, "ppl_pruned": p, "task_acc_pruned": acc,
                "next_token_agreement": agree}
    out = {**fields(ppl, task["accuracy"], sec["steps"], float((top1 == base["top1"]).mean())),
           "distill_seconds": sec["seconds"], "device": sec["device"],
           "distill_texts": sec["texts"], "best_step": sec["best_step"],
           "ppl_full": base["ppl"], "task_acc_full": base["task"]["accuracy"],
           "baseline": fields(row["ppl_pruned"], row["task_acc_pruned"], 0,
                              row["next_token_agreement"])}
    out["goals"] = {"perplexity_ratio<=1.3": out["perplexity_ratio"] <= 1.3,
                    "task_accuracy_ratio>=0.9": out["task_accuracy_ratio"] >= 0.9}
    if save is not None:
        _save(student, result, save / f"{row['structures']}-{row['flops_removed']}-distilled", out)
    return out


def _save(student, result, where: Path, info: dict) -> None:
    """The distilled student as a pruned artifact (benchmarks/frontier_generation.py serves it)."""
    from tierserve.pruning.artifact import save_pruned

    save_pruned(student, where, structure=result.structure, source=str(smollm2_dir()),
                criterion="block-influence", budget=result.config.budget,
                extra={"extra_benchmark": {k: v for k, v in info.items() if k != "baseline"}})


def prune_one(full, s: Settings, structures: tuple[str, ...], level: float,
              distill_steps: int) -> dict:
    """One pruned (and optionally distilled) SmolLM2 as `run` builds it: {"model", "info"}."""
    calib = load_lm_data(DATA, split="calibration", limit=s.calib_texts)
    batches = full.batches(list(calib.texts), 4)
    # depth only: Block Influence alone decides, so skip the (backward) head/neuron criterion
    criterion = "magnitude" if structures == ("layers",) else s.criterion
    scores = score_units(full, batches, PruneConfig(criterion=criterion, budget=Budget(
        structures=("heads", "neurons", "layers"))))
    result = prune_with_scores(full, scores, batches, _config(s, structures, level),
                               ModelShape.from_adapter(adapter_for(full.model)))
    info = {"structures": "+".join(structures),
            "per_token_flops_removed": result.report["plan"]["encoder"]["flops_removed_fraction"],
            "distill_steps": 0}
    if not distill_steps:
        return {"model": result.model, "info": info}
    more = _prompts(s)  # distillation: every calibration prompt
    student, sec = distill_student(full, result, replace(calib, prompts=more.prompts,
                                                         answers=more.answers), distill_steps,
                                   s.distill_seconds)
    return {"model": student, "info": {**info, "distill_steps": sec["steps"],
                                       "distill_seconds": sec["seconds"]}}


def _prompts(s: Settings) -> LMData:
    return load_lm_data(DATA, split="calibration", limit=s.distill_prompts)


def run(s: Settings, distill_steps: int = 0, save: Path | None = None) -> dict:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    full = load_task_model(smollm2_dir(), "text-generation", max_length=s.max_length)
    calib = load_lm_data(DATA, split="calibration", limit=s.calib_texts)
    calib_d = replace(calib, prompts=_prompts(s).prompts, answers=_prompts(s).answers)
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
        for structures in (tuple(x.split("+")) for x in s.structures):
            rows.append(_row(full, scores, batches, shape, test, prompts, base, structures,
                             level, s))
            print(json.dumps({k: rows[-1][k] for k in KEYS}), flush=True)
            if distill_steps:
                distilled.append(_distill_row(full, rows[-1].pop("_result"), calib_d, test,
                                              prompts, base, rows[-1], distill_steps, save,
                                              s.distill_seconds))
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
    earlier = "".join(f"\n\nEarlier run (its rows are kept): {h}"
                      for h in doc.get("previous_headers", []) if h)
    lines = [f"# Decoder pruning: SmolLM2-135M-Instruct\n\n{doc['header']}{earlier}\n\n{setup}\n",
             head,
             "|" + "---|" * 13]
    for r in doc["rows"]:
        lines.append(
            f"| {r['structures']} | {r['achieved']:.3f} | {r['ppl_full']:.2f} | "
            f"{r['ppl_pruned']:.2f} | {r['ppl_kept']:.3f} | {r['next_token_agreement']:.3f} | "
            f"{r['task_acc_full']:.3f} / {r['task_acc_pruned']:.3f} | {r['prefill_speedup']:.2f}x | "
            f"{r['decode_speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['prefill_vs_ideal']:.2f} "
            f"| {r['decode_vs_ideal']:.2f} | {r['prune_seconds']:.0f} |")
    return "\n".join(lines + _distill_markdown(doc.get("distill_rows", []))) + "\n"


def _distill_markdown(rows: list[dict]) -> list[str]:
    """Distilled vs undistilled, side by side (goals: ppl ratio <= 1.3, task >= 0.9)."""
    if not rows:
        return []
    lines = ["", "## Distillation: distilled vs undistilled, same test data", "",
             "Token-level KL to the full model on the calibration texts and the calibration "
             "prompts followed by the full model's greedy answers (chat template); judged on the "
             "test split. Goals: perplexity ratio (pruned/full) <= 1.3, task accuracy ratio "
             ">= 0.9.", "",
             "| structures | per-token FLOPs removed | distill steps | distill s | device "
             "| ppl ratio (undistilled -> distilled) | task acc ratio | next-token agr. "
             "| goals met |", "|" + "---|" * 9]
    for r in rows:
        b = r["baseline"]
        met = ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in r.get("goals", {}).items())
        lines.append(
            f"| {r['structures']} | {r['per_token_flops_removed']:.3f} | {r['distill_steps']} "
            f"| {r['distill_seconds']:.0f} | {r.get('device', 'cpu')} "
            f"| {b['perplexity_ratio']:.2f} -> {r['perplexity_ratio']:.2f} "
            f"| {b['task_accuracy_ratio']:.2f} -> {r['task_accuracy_ratio']:.2f} "
            f"| {b.get('next_token_agreement', float('nan')):.3f} -> "
            f"{r.get('next_token_agreement', float('nan')):.3f} | {met} |")
    return lines


def _key(r: dict) -> tuple:
    return r["structures"], r.get("flops_removed", r.get("per_token_flops_removed"))


def merge_previous(doc: dict, out: Path) -> dict:
    """Merge into `out`: its rows and keys are kept (a pruned row is deterministic but for its
    timings, which an earlier quiet run measured better); this run adds rows it lacks and its
    distilled rows replace those of the same structures. `--replace` overwrites instead."""
    if not out.is_file():
        return doc
    old = json.loads(out.read_text())
    have = {_key(r) for r in old.get("rows", [])}  # kept: measured on a quieter machine
    merged = {**old, **doc}
    merged["rows"] = old.get("rows", []) + [r for r in doc["rows"] if _key(r) not in have]
    if "distill_rows" in doc or "distill_rows" in old:
        again = {r["structures"] for r in doc.get("distill_rows", [])}
        merged["distill_rows"] = [r for r in old.get("distill_rows", [])
                                  if r["structures"] not in again] + doc.get("distill_rows", [])
    merged["previous_headers"] = old.get("previous_headers", []) + [old.get("header")]
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, one level")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder.json"))
    parser.add_argument("--no-rescale", action="store_true", help="skip the LS rescale")
    parser.add_argument("--criterion", default="fisher", help="importance for heads and neurons")
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="also a distilled twin of every row (`distill_rows`)")
    parser.add_argument("--levels", type=float, nargs="+", help="FLOPs fractions removed")
    parser.add_argument("--distill-seconds", type=float, default=None,
                        help="wall-time budget of each distillation (steps: the cap)")
    parser.add_argument("--latency-rounds", type=int, default=None)
    parser.add_argument("--structures", nargs="+", choices=("heads+neurons", "layers"))
    parser.add_argument("--save-models", nargs="?", const=str(ROOT / "runs" / "decoder"),
                        help="save distilled students in this folder (default runs/decoder/, "
                             "which benchmarks/frontier_generation.py serves)")
    parser.add_argument("--replace", action="store_true",
                        help="overwrite --out instead of merging this run's rows into it")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    settings = QUICK if args.quick else Settings()
    settings = replace(settings, rescale=settings.rescale and not args.no_rescale,
                       criterion=args.criterion, levels=tuple(args.levels or settings.levels),
                       structures=tuple(args.structures or settings.structures),
                       distill_seconds=args.distill_seconds,
                       latency_rounds=args.latency_rounds or settings.latency_rounds)
    doc = run(settings, args.distill_steps,
              Path(args.save_models) if args.save_models else None)
    doc["header"] = (f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
                     f"`{shlex.join(['python', 'benchmarks/decoder.py', *(argv or sys.argv[1:])])}`,"
                     f" {platform.machine()}, torch {torch.__version__}, {THREADS} threads, load "
                     f"average at start {load:.1f}, wall time {time.perf_counter() - t0:.0f} s.")
    if load > 0.5:
        doc["header"] += (" WARNING: the machine was busy (other jobs share its 2 cores), so "
                          "latencies and speedups are noisy.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = doc if args.replace else merge_previous(doc, out)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(_markdown(doc))
    print(_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
