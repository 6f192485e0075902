"""The pruning benchmark's quick mode runs end to end on the real MiniLM and Debian data and writes
rows with the documented keys and sane values (benchmarks/README.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"model", "task", "criterion", "rescale", "flops_removed", "quality_full",
            "quality_pruned", "quality_kept", "agreement", "batch", "seq_len", "speedup",
            "ideal_speedup", "speedup_vs_ideal", "prune_seconds"}


@pytest.mark.slow
def test_quick_benchmark_writes_sane_rows(tmp_path: Path) -> None:
    out = tmp_path / "bq.json"
    proc = subprocess.run([sys.executable, "benchmarks/pruning.py", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().count("| criterion |") >= 2
    meta = result["metadata"]
    assert meta["torch_threads"] == 2 and meta["machine"] and meta["cpu_model"]
    levels = meta["settings"]["levels"]
    rows = result["rows"]
    structured = [r for r in rows if r["criterion"] != "magnitude-unstructured"]
    # one criterion x one level x rescale on/off at b32x128, plus fisher at 3 other shapes
    assert len(structured) == 2 * len(levels) + 3 * len(levels)
    assert {(r["batch"], r["seq_len"]) for r in structured} == {(1, 16), (1, 128), (32, 16),
                                                                (32, 128)}
    for r in rows:
        assert set(r) == ROW_KEYS, r
        assert 0 < r["quality_kept"] <= 1.2, r
        assert math.isclose(r["quality_kept"], r["quality_pruned"] / r["quality_full"])
        assert 0 <= r["agreement"] <= 1 and r["speedup"] > 0 and r["prune_seconds"] > 0, r
        assert math.isclose(r["speedup_vs_ideal"], r["speedup"] / r["ideal_speedup"])
    for r in structured:
        assert min(abs(r["flops_removed"] - lv) for lv in levels) <= 0.02, r
        if (r["batch"], r["seq_len"]) == (32, 128):  # FLOPs are counted at seq 128
            assert math.isclose(r["ideal_speedup"], 1 / (1 - r["flops_removed"]), rel_tol=0.05)
    (unstructured,) = [r for r in rows if r["criterion"] == "magnitude-unstructured"]
    assert unstructured["flops_removed"] == 0.0 and unstructured["ideal_speedup"] == 1.0
    assert abs(result["unstructured"]["sparsity"] - 0.5) < 0.01
    variants = {v["variant"]: v for v in result["quantization"]["variants"]}
    assert variants["int8 full"]["state_bytes"] < variants["fp32 full"]["state_bytes"]
    assert variants["fp32 pruned"]["state_bytes"] < variants["fp32 full"]["state_bytes"]
