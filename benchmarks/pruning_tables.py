"""The pruning benchmark's tables (benchmarks/pruning.py), printed and kept as markdown: the header,
then one table per section (1 quality, 2 speed, 3 pruning time, 4 INT8, 5 unstructured, and 6
distillation with `--distill`)."""

from __future__ import annotations

from harness import THREADS, Report, fmt
from pruning_sections import SPEED_CRITERION, Pruned, Settings

from tierserve.pruning.data import RetrievalData

__all__ = ["show_distill", "show_header", "show_prune_times", "show_quality", "show_quant",
           "show_speed", "show_unstructured"]


def show_header(rep: Report, meta: dict, s: Settings, data: RetrievalData, n_calib: int) -> None:
    shapes = ", ".join(f"b{b}x{t}: {r}" for b, t, r in s.shapes)
    docs = "the whole test corpus" if s.test_docs is None else "a fixed subset of the test corpus"
    rep.text(f"# Pruning benchmark: all-MiniLM-L6-v2 (embedding), Debian retrieval"
             f"{' (QUICK smoke run: not for reporting)' if s.quick else ''}")
    rep.text(f"{meta['date']} | {meta['cpu_model']} | torch {meta['torch']}, "
             f"{meta['torch_threads']} threads | commit {meta['git_commit']}"
             f"{' (dirty)' if meta['git_dirty'] else ''} | `{meta['command']}`")
    rep.text(f"Test: first {len(data.query_ids)} test-split queries (file order) x "
             f"{len(data.doc_ids)} docs ({docs}). Calibration: first {s.calib_queries} queries + "
             f"first {s.calib_docs} corpus texts of the calibration split ({n_calib}). "
             f"Latency rounds per model (median of interleaved single forwards, {s.warmup} "
             f"warm-up): {shapes}; INT8: "
             + ", ".join(f"b{b}x{t}: {r}" for b, t, r in s.quant_shapes) + ".")
    if meta["loadavg_start"][0] > 0.5:
        rep.text(f"WARNING: load average {meta['loadavg_start'][0]:.2f} at start: the machine "
                 "was not idle, so timings are noisy.")


def show_quality(rep: Report, pruned: list[Pruned], full_ndcg: float, n: tuple[int, int]) -> None:
    rows = [[p.criterion, "yes" if p.rescale else "no", f"{p.level:.0%}", fmt(p.flops_removed),
             fmt(p.metrics["ndcg@10"], 4), fmt(p.metrics["ndcg@10"] / full_ndcg),
             fmt(p.agree["agreement"]), fmt(p.agree.get("agreement_ndcg@10")),
             str(sum(len(x.heads) for x in p.structure.layers if x)),
             str(sum(len(x.neurons) for x in p.structure.layers if x)), fmt(p.prune_seconds, 1)]
            for p in pruned]
    rep.table(f"1. Quality kept (NDCG@10, {n[0]} test queries x {n[1]} test docs; "
              f"full model NDCG@10 = {full_ndcg:.4f})",
              ["criterion", "LS rescale", "target", "FLOPs removed", "NDCG@10", "kept",
               "top-1 agr", "agr NDCG@10", "heads", "neurons", "prune s"], rows)


def show_speed(rep: Report, speed: list[dict]) -> None:
    rows = [[f"{r['level']:.0%}", str(r["batch"]), str(r["seq_len"]), str(r["rounds"]),
             fmt(r["full_p50_s"] * 1e3, 2), fmt(r["pruned_p50_s"] * 1e3, 2), fmt(r["speedup"], 2),
             fmt(r["ideal_speedup"], 2), fmt(r["speedup_vs_ideal"], 2)] for r in speed]
    rep.table(f"2. Realized vs ideal speedup ({SPEED_CRITERION} + LS rescale structures; "
              f"CPU, {THREADS} threads; median of interleaved single forwards)",
              ["target", "batch", "seq", "rounds", "full ms", "pruned ms", "speedup",
               "ideal (FLOPs)", "realized/ideal"], rows)


def show_prune_times(rep: Report, times: list[dict], n_calib: int) -> None:
    levels = list(times[0]["total_seconds"])
    rows = [[t["criterion"], fmt(t["score_seconds"], 1),
             *(fmt(t["plan_surgery_seconds"][lv], 1) for lv in levels),
             *(fmt(t["plan_surgery_rescale_seconds"][lv], 1) for lv in levels),
             *(fmt(t["total_seconds"][lv], 1) for lv in levels)] for t in times]
    rep.table(f"3. Pruning wall time, seconds ({n_calib} calibration examples, {THREADS} threads)",
              ["criterion", "tokenise+score", *(f"plan+surgery {lv:.0%}" for lv in levels),
               *(f"plan+surgery+rescale {lv:.0%}" for lv in levels),
               *(f"total {lv:.0%}" for lv in levels)], rows)


def show_quant(rep: Report, q: dict) -> None:
    full_bytes = q["variants"][0]["state_bytes"]
    rows = []
    for v in q["variants"]:
        row = [v["variant"], f"{v['state_bytes'] / 2**20:.1f}",
               fmt(v["state_bytes"] / full_bytes, 2),
               fmt(v["ndcg@10"], 4), fmt(v["agreement"])]
        for s in q["shapes"]:
            row += [fmt(v[f"p50_s@{s}"] * 1e3, 2), fmt(v[f"speedup_vs_fp32_full@{s}"], 2),
                    fmt(v[f"int8_effect@{s}"], 2), fmt(v[f"pruning_effect@{s}"], 2)]
        rows.append(row)
    heads = [h for s in q["shapes"] for h in (f"ms {s}", f"vs fp32 full {s}", f"INT8 effect {s}",
                                                f"pruning effect {s}")]
    rep.table(f"4. fp32 vs INT8 dynamic, full vs pruned {q['level']:.0%} (state MiB incl. fp32 "
              "embeddings; INT8 effect = fp32 twin / this, pruning effect = full twin / this)",
              ["variant", "state MiB", "size vs full", "NDCG@10", "top-1 agr", *heads], rows)


def show_unstructured(rep: Report, u: dict, full_ndcg: float) -> None:
    rep.table("5. Unstructured 50% magnitude sparsity (zeros inside dense matrices: NOT a speedup)",
              ["sparsity", "NDCG@10", "kept", "top-1 agr", "batch x seq", "full ms", "sparse ms",
               "speedup", "state MiB"],
              [[fmt(u["sparsity"]), fmt(u["metrics"]["ndcg@10"], 4),
                fmt(u["metrics"]["ndcg@10"] / full_ndcg), fmt(u["agreement"]["agreement"]),
                f"{u['batch']}x{u['seq_len']}", fmt(u["full_p50_s"] * 1e3, 2),
                fmt(u["sparse_p50_s"] * 1e3, 2), fmt(u["speedup"], 2),
                f"{u['state_bytes'] / 2**20:.1f}"]])
    rep.text(u["note"])


def show_distill(rep: Report, rows: list[dict], meta: dict) -> None:
    cols = ("quality_kept", "top1_agreement", "cross_tier_kept", "embedding_cosine")
    table = [[r["criterion"], f"{r['flops_removed']:.3f}", str(r["distill_steps"]),
              fmt(r["distill_seconds"], 0), r["device"],
              *(f"{fmt(r['baseline'][c])} -> {fmt(r[c])}" for c in cols)] for r in rows]
    rep.table(f"6. Distillation (MiniLM, undistilled -> distilled; calibration split only, judged "
              f"on {meta['test_queries']} test queries x {meta['test_docs']} docs; load average "
              f"{meta['loadavg_start'][0]:.1f} at start)",
              ["criterion", "FLOPs removed", "steps", "wall s", "device", "NDCG@10 kept",
               "top-1 agr", "cross-tier kept", "cosine"], table)
