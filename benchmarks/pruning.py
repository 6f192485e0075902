"""Structured-pruning benchmark: the real all-MiniLM-L6-v2 on the frozen Debian retrieval data.

    python benchmarks/pruning.py [--quick] [--decoder] [--out benchmarks/results/pruning.json]

One run measures, side by side (see benchmarks/README.md for every definition):
1. quality kept (NDCG@10 on held-out test queries, agreement with the full model) per criterion,
   FLOPs level and LS rescale on/off; scores are computed once per criterion and reused;
2. realized CPU speedup vs the ideal FLOPs speedup at batch 1/32 x seq 16/128 (interleaved);
3. wall time of the pruning step (tokenise + score + plan + surgery + LS rescale) per criterion;
4. size and latency of fp32 / INT8-dynamic, full / pruned (INT8 and pruning effects apart);
5. unstructured 50% magnitude sparsity: quality, and its (absent) dense CPU speedup.
Writes the JSON to --out and the same tables as markdown next to it (`.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from harness import ROOT, THREADS, Report, metadata, minilm_dir
from pruning_sections import (
    FULL,
    QUICK,
    ROW_KEYS,
    SPEED_CRITERION,
    Settings,
    build_rows,
    debian,
    load_calibration,
    load_test,
    prune_times,
    run_quality,
    run_quant,
    run_speed,
    run_unstructured,
)
from pruning_tables import (
    show_distill,
    show_header,
    show_prune_times,
    show_quality,
    show_quant,
    show_speed,
    show_unstructured,
)
from rich.console import Console

from tierserve.pruning.evaluate import evaluate
from tierserve.pruning.tasks import load_task_model

__all__ = ["FULL", "QUICK", "ROW_KEYS", "Settings", "main"]


def run(s: Settings, rep: Report) -> dict:
    meta = metadata(asdict(s))
    t_start = time.perf_counter()
    full = load_task_model(minilm_dir(), "embedding")
    data, calib = load_test(full, s), load_calibration(s)
    show_header(rep, meta, s, data, len(calib))
    t0 = time.perf_counter()
    batches = full.batches(calib, 32)
    tokenise_s = time.perf_counter() - t0
    ref = evaluate(full, data)
    full_ndcg = ref.metrics["ndcg@10"]
    pruned = run_quality(full, ref, data, batches, tokenise_s, s, rep.console)
    show_quality(rep, pruned, full_ndcg, (len(data.query_ids), len(data.doc_ids)))
    timed = {p.level: p for p in pruned if p.criterion == SPEED_CRITERION and p.rescale}
    speed = run_speed(full, timed, s, rep.console)
    show_speed(rep, speed)
    times = prune_times(pruned)
    show_prune_times(rep, times, len(calib))
    mid = timed[0.5] if 0.5 in timed else next(iter(timed.values()))
    quant = run_quant(full, mid.model, ref, mid, data, s)
    show_quant(rep, quant)
    unstructured = run_unstructured(full, ref, data, s)
    show_unstructured(rep, unstructured, full_ndcg)
    meta.update(wall_seconds=time.perf_counter() - t_start, loadavg_end=list(os.getloadavg()))
    rep.text(f"Wall time of this run: {meta['wall_seconds']:.0f} s.")
    return {"metadata": meta, "rows": build_rows(pruned, speed, full_ndcg, unstructured, timed),
            "full_model": {"metrics": ref.metrics, "test_queries": len(data.query_ids),
                           "test_docs": len(data.doc_ids)},
            "quality": [{"criterion": p.criterion, "level": p.level, "rescale": p.rescale,
                         "flops_removed": p.flops_removed, "metrics": p.metrics,
                         "agreement": p.agree, "structure": p.structure.to_dict()}
                        for p in pruned],
            "latency": speed, "prune_time": times, "quantization": quant,
            "unstructured": unstructured}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (see benchmarks/README.md)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruning.json",
                    help="JSON output; the markdown tables go next to it with suffix .md")
    ap.add_argument("--test-docs", type=int, default=None,
                    help="use the judged docs of the test queries plus other test docs up to N "
                         "instead of the default corpus (whole test corpus; 256 with --quick)")
    ap.add_argument("--decoder", action="store_true",
                    help="also the SmolLM2-135M decoder rows (width vs depth at 25%% and 50%% of "
                         "per-token FLOPs: benchmarks/decoder.py), written to "
                         "results/decoder.{json,md} next to --out")
    ap.add_argument("--distill", action="store_true",
                    help="only the distillation rows (MiniLM 50%% and 70%% FLOPs, distilled vs "
                         "undistilled twin): merged into --out's `rows`, other rows kept")
    ap.add_argument("--distill-seconds", type=float, default=None,
                    help="wall-time budget of each distillation loop (default 540, so with the "
                         "teacher's cached targets the stage stays <= 600 s; 20 with --quick)")
    ap.add_argument("--distill-levels", type=float, nargs="+", default=None,
                    help="FLOPs levels of the distillation rows (default 0.5 0.7)")
    ap.add_argument("--test-queries", type=int, default=None,
                    help="--distill: the first N test queries (default 1000; 64 with --quick)")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    if args.distill:
        return main_distill(args)
    settings = QUICK if args.quick else FULL
    if args.test_docs is not None:
        settings = replace(settings, test_docs=args.test_docs)
    rep = Report(Console(width=None if sys.stdout.isatty() else 200))
    result = run(settings, rep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(rep.md))
    rep.console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if args.decoder:  # the decoder rows live in their own module; same run, same machine
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import decoder

        decoder.main([*(["--quick"] if args.quick else []), "--no-rescale",
                      "--out", str(args.out.with_name("decoder.json"))])
    return 0


def main_distill(args) -> int:
    """`--distill`: the distillation rows, merged into an existing result file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from distill_rows import DistillSettings, run_distill

    s = QUICK if args.quick else FULL
    if args.test_docs is not None:
        s = replace(s, test_docs=args.test_docs)
    if args.test_queries is not None:
        s = replace(s, test_queries=args.test_queries)
    ds = DistillSettings(levels=tuple(args.distill_levels or ((0.5,) if args.quick else (0.5, 0.7))),
                         max_seconds=args.distill_seconds or (20.0 if args.quick else 540.0))
    console = Console(width=None if sys.stdout.isatty() else 200)
    meta = metadata(asdict(s))
    full = load_task_model(minilm_dir(), "embedding")
    test, calib = load_test(full, s), load_calibration(s)
    cal = debian("calibration")
    rows = run_distill(full, test, full.batches(calib, 32), cal, ds, console.log)
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    doc["rows"] = [r for r in doc.get("rows", []) if "distill_steps" not in r] + rows
    meta.update(loadavg_end=list(os.getloadavg()), distill_settings=asdict(ds),
                test_queries=len(test.query_ids), test_docs=len(test.doc_ids))
    doc["distillation"] = {"metadata": meta}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    md = args.out.with_suffix(".md")
    rep = Report(console)
    show_distill(rep, rows, meta)
    old = md.read_text().split("\n### 6. Distillation")[0] if md.is_file() else ""
    md.write_text(old.rstrip("\n") + "\n\n" + "\n".join(rep.md))
    console.print(f"wrote {args.out} (rows) and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
