"""The distillation stage in the job, in-process (`tierserve prune`'s path), on real MiniLM and a
small real Debian retrieval set: the distilled model is closer to the full one than its
undistilled twin, and the report/progress carry the stage."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from distill_common import small_debian, small_spec

from tierserve.pruning.artifact import load_pruned
from tierserve.pruning.data import load_retrieval
from tierserve.pruning.engine import prune
from tierserve.pruning.evaluate import encode
from tierserve.pruning.job import run_job
from tierserve.pruning.pipeline import calibration_examples, prune_config
from tierserve.pruning.spec import parse_spec
from tierserve.pruning.tasks import load_task_model

pytestmark = pytest.mark.slow

STEPS = 20


@pytest.fixture(scope="module")
def small_data(debian_dir, tmp_path_factory):
    return small_debian(debian_dir, tmp_path_factory.mktemp("debian"),
                        {"calibration": 100, "test": 60})


def _run(doc: dict, out, monkeypatch) -> dict:
    monkeypatch.setenv("TIERSERVE_RAY_TASKS", "off")  # the embedded, in-process path
    stages: list[str] = []
    report, code = run_job(parse_spec(doc), out, progress=lambda s, f: stages.append(s))
    assert code in (0, 2), report
    report["_stages"] = stages
    return report


def _cosine(pruned, full, texts) -> float:
    return float((encode(pruned, texts) * encode(full, texts)).sum(-1).mean())


def test_in_process_distillation_brings_the_pruned_model_closer_to_full(
        small_data, minilm_path, tmp_path, monkeypatch):
    doc = small_spec(small_data, {"distillSteps": STEPS, "learningRate": 2e-4, "batchSize": 8})
    distilled = _run(doc, tmp_path / "d", monkeypatch)

    d = distilled["distillation"]
    assert set(d) == {"steps", "seconds", "device", "workers", "backend", "best_step",
                      "resumed_from", "curve"}
    assert (d["backend"], d["workers"], d["device"], d["resumed_from"]) == (
        "in-process", 1, "cpu", 0)
    assert d["steps"] == STEPS and 0 <= d["best_step"] <= STEPS
    assert [p["step"] for p in d["curve"]][:2] == [0, STEPS // 10]
    assert all(0.0 <= p["val_agreement"] <= 1.0 for p in d["curve"])
    assert any(s.startswith(f"distill {STEPS // 10}/{STEPS} loss ") for s in distilled["_stages"])
    assert distilled["latency"]["device"] == "cpu"
    written = json.loads((tmp_path / "d" / "report.json").read_text())
    assert written["distillation"] == d and written["spec"]["recovery"]["distillSteps"] == STEPS

    # the undistilled twin: the same spec without distillation prunes to the same structure
    spec = parse_spec(doc)
    full = load_task_model(minilm_path, "embedding", max_length=64)
    cal = load_retrieval(*(small_data / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")),
                         split="calibration")
    examples, _ = calibration_examples(cal, spec.pruning.calibration_samples)
    twin = prune(full, examples, replace(prune_config(spec), distill=None))
    assert twin.structure.to_dict() == load_manifest_structure(distilled)
    ev = load_retrieval(*(small_data / f"{n}.jsonl.gz" for n in ("queries", "corpus", "qrels")),
                        split="test")
    texts = list(ev.queries) + list(ev.corpus)
    pruned = load_pruned(distilled["artifact"]["path"] + "/model", "embedding", max_length=64)
    cos_d, cos_u = _cosine(pruned, full, texts), _cosine(twin.model, full, texts)
    print(f"held-out cosine to full: undistilled {cos_u:.4f} -> distilled {cos_d:.4f}")
    assert cos_d > cos_u + 0.01


def load_manifest_structure(report: dict) -> dict:
    from tierserve.pruning.artifact import read_manifest

    return read_manifest(report["artifact"]["path"] + "/model")["structure"]
