"""Per-slice gates on real data: a content type that regresses is caught while the overall metric
passes. The slices are the Debian section groups of the package-search queries; the pruned model is
MiniLM at half its encoder FLOPs without recovery, which hurts some sections more than others."""

from __future__ import annotations

import pytest

from tierserve.pruning.job import EXIT_GATES_FAILED, run_job
from tierserve.pruning.spec import parse_spec

pytestmark = pytest.mark.slow

MIN_QUERIES = 40  # a slice smaller than this is too noisy to gate on


def _spec(debian_dir, minilm_path, gates: list[dict]) -> dict:
    files = {k: str(debian_dir / f"{k}.jsonl.gz") for k in ("queries", "corpus", "qrels")}
    return {"model": {"uri": str(minilm_path), "task": "embedding"},
            "data": {"calibration": {**files, "split": "calibration", "limit": 128},
                     "evaluation": {**files, "split": "test", "limit": 800},
                     "sliceField": "slice"},
            "pruning": {"criterion": "magnitude", "structures": ["heads", "neurons"],
                        "budget": {"kind": "flops", "target": 0.5}, "calibrationSamples": 64},
            "recovery": {"rescale": False},
            "gates": {"quality": gates, "maxLatencyRatio": 2.0}}  # the loosest: noise here


def test_slice_gate_catches_regressing_section_while_overall_passes(tmp_path, debian_dir,
                                                                    minilm_path):
    probe, _ = run_job(parse_spec(_spec(debian_dir, minilm_path, [
        {"metric": "ndcg@10", "relative": 0.5}])), tmp_path / "probe")
    full, pruned = probe["slices"]["full"], probe["slices"]["pruned"]
    overall = probe["metrics"]["pruned"]["ndcg@10"] / probe["metrics"]["full"]["ndcg@10"]
    counts = _queries_per_slice(debian_dir, 800)
    kept = {s: pruned[s]["ndcg@10"] / full[s]["ndcg@10"] for s in full if counts[s] >= MIN_QUERIES}
    worst = min(kept, key=kept.get)
    assert kept[worst] < overall - 0.01, (kept, overall, probe["slices"])  # slices really differ

    floor = (overall + kept[worst]) / 2  # above the worst section, below the whole set
    report, code = run_job(parse_spec(_spec(debian_dir, minilm_path, [
        {"metric": "ndcg@10", "relative": floor},
        {"metric": "ndcg@10", "relative": floor, "slice": worst}])), tmp_path / "gated")
    # then the latency and size gates (defaulted), and parity: the runtime's own gate
    overall_gate, slice_gate, *_, parity = report["gates"]
    assert parity["metric"] == "runtime_parity" and parity["passed"]
    assert overall_gate["passed"] and overall_gate.get("slice") is None
    assert not slice_gate["passed"] and slice_gate["slice"] == worst
    assert slice_gate["value"] == pytest.approx(pruned[worst]["ndcg@10"], rel=1e-6)
    assert code == EXIT_GATES_FAILED and report["deployable"] is False


def _queries_per_slice(debian_dir, limit: int) -> dict[str, int]:
    from collections import Counter

    from tierserve.pruning.data import load_retrieval

    data = load_retrieval(*(debian_dir / f"{k}.jsonl.gz" for k in ("queries", "corpus", "qrels")),
                          split="test")
    return Counter(data.query_slices[:limit])
