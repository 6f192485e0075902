"""The sections of the pruning benchmark (benchmarks/pruning.py): its settings, the frozen Debian
test and calibration data, and what each section measures (1 quality, 2 speed, 3 pruning time,
4 INT8, 5 unstructured sparsity), as the result file's rows."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
from harness import ROOT, interleaved
from rich.console import Console

from tierserve.pruning import importance
from tierserve.pruning.adapters import adapter_for
from tierserve.pruning.cost import ModelShape, encoder_flops
from tierserve.pruning.data import RetrievalData, load_retrieval
from tierserve.pruning.engine import PruneConfig, prune_with_scores
from tierserve.pruning.evaluate import Evaluation, agreement, evaluate
from tierserve.pruning.quantize import quantize_dynamic_int8, state_size_bytes
from tierserve.pruning.sparse import dense_speedup_note, magnitude_prune_
from tierserve.pruning.structure import Budget, Structure
from tierserve.pruning.tasks import TaskModel

__all__ = ["FULL", "QUICK", "ROW_KEYS", "SPEED_CRITERION", "Pruned", "Settings", "build_rows",
           "debian", "load_calibration", "load_test", "prune_times", "run_quality", "run_quant",
           "run_speed", "run_unstructured"]

DEBIAN = ROOT / "examples" / "data" / "debian"
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
def debian(split: str) -> RetrievalData:
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
    test = debian("test")
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
    cal = debian("calibration")
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


# -- section 2: speed ----------------------------------------------------------------------------
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
