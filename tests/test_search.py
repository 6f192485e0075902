"""Gate-driven search on real weights and data: the chosen budget passes, the next step up fails."""

import pytest
import yaml

from tierserve.pruning.job import run_job
from tierserve.pruning.spec import parse_spec

pytestmark = pytest.mark.slow


def test_max_sparsity_search_brackets_the_gates(repo_root, tmp_path):
    doc = yaml.safe_load((repo_root / "examples/minilm-pass.yaml").read_text())["spec"]
    data = doc["data"]
    for src in (data["calibration"], data["evaluation"]):
        for field in ("queries", "corpus", "qrels"):
            src[field] = str(repo_root / "examples" / src[field])
    data["validation"] = {**data["evaluation"], "split": "validation", "limit": 150}
    data["evaluation"]["limit"] = 150
    doc["pruning"].update(calibrationSamples=64,
                          search={"mode": "maxSparsity", "low": 0.1, "high": 0.8, "steps": 3})
    # the loosest latency gate (omitted it is 1.0): the bracket is about quality, not noise
    doc["gates"] = {"quality": [{"metric": "ndcg@10", "relative": 0.95}], "maxLatencyRatio": 2.0}
    doc["serving"] = {"calibrationDelta": None}  # 150 validation rows cannot guarantee 0.99
    report, code = run_job(parse_spec(doc), tmp_path, name="search")
    trace = report["search"]
    bisect = [p for p in trace if "quantization" not in p]
    assert [p["target"] for p in bisect[:2]] == [0.1, 0.8] and len(bisect) == 5
    passed = [p["target"] for p in bisect if p["passed"]]
    failed = [p["target"] for p in bisect if not p["passed"]]
    assert passed and failed, trace
    sparsest = max(passed)
    # the bracket is tight: the smallest failing budget is the next step up from the sparsest pass
    next_up = min(t for t in failed if t > sparsest)
    assert next_up - sparsest <= (0.8 - 0.1) / 2 ** 3 + 1e-9
    # pruning + INT8 is one candidate tier: the sparsest passing budget's INT8 twin is judged first
    int8 = [p for p in trace if p.get("quantization") == "int8-dynamic"]
    assert int8 and int8[0]["target"] == sparsest
    # the CHEAPEST passing candidate by measured latency ratio is served, not merely the sparsest
    choice = report["prune"]["search_choice"]
    costs = {(p["target"], p.get("quantization")): p["latency_ratio"] for p in trace if p["passed"]}
    chosen = report["budget"]["achieved_target"]
    assert choice["target"] == chosen and chosen in passed
    assert costs[(chosen, choice["quantization"])] == min(costs.values())
    if choice["quantization"]:  # the job quantized, judged and saved what it serves
        assert report["quantization"]["mode"] == "int8-dynamic"
    assert abs(report["budget"]["encoder_flops_removed"] - chosen) <= 0.01
    # the chosen model is then judged on held-out evaluation rows, not the validation rows
    assert report["gates"] and code in (0, 2)
